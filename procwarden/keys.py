"""Where the signing keys of a deployment live (transport/signing.py says what they sign).

The stream app holds the keyring (the master keys); each node's collector holds only its own
keys, derived from it. On one machine (the local stack, the tests) both read the keyring in
`var/keys/keyring.json` (or `PROCWARDEN_KEYS_DIR`), made on first use, 0600 in a 0700 folder.
For a fleet: `procwarden keys init` once, the keyring to the stream app (a Secret), and
`procwarden keys node NAME --out FILE` to each node; `procwarden keys rotate` adds a key
generation (the previous one stays valid), then the nodes' files are handed out again. Running
roles re-read their files (transport/keyfile.py): no restart (docs/keys.md).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transport.signing import Keyring, NodeKeys, write_secret

__all__ = ["KEYS_DIR_ENV", "keys_dir", "local_keyring", "local_keyring_path", "local_node_keys"]

KEYS_DIR_ENV = "PROCWARDEN_KEYS_DIR"
_ROOT = Path(__file__).resolve().parents[1]


def keys_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_ENV) or _ROOT / "var" / "keys")


def local_keyring_path() -> Path:
    return keys_dir() / "keyring.json"


def local_keyring(create: bool = True) -> Keyring:
    """The local keyring; made on first use (by whichever role starts first: the file is
    created once, exclusively, and every other reader gets that one)."""
    path = local_keyring_path()
    if not path.exists() and create:
        fresh = path.with_name(f"keyring.{os.getpid()}.new")
        write_secret(fresh, Keyring.generate().to_json())
        with contextlib.suppress(FileExistsError):  # another role made it first: use theirs
            os.link(fresh, path)
        fresh.unlink()
    return Keyring.load(path)


def local_node_keys(node: str) -> NodeKeys:
    """This node's keys, from the local keyring (one machine: the collector beside the
    stream app)."""
    return local_keyring().node_keys(node)
