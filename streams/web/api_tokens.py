"""The policy API's named tokens: who may call what, and the name every change is recorded under.

A token has a name and a role: `viewer` reads, `operator` also changes modes, baselines, rules
and service config, `admin` also creates, changes and deletes custom groups and imports CRDs.
Tokens live in a JSON file (`STREAMS_API_TOKENS_FILE`, written by `procwarden token add`),
stored as the SHA-256 of a 32-byte random secret: the file lets no one call the API. It is
written 0600 from its creation and a file others can read is not loaded (as ssh refuses a
readable key). The worker reads it again when it changes, so a revoked token stops at once.

`STREAMS_API_TOKEN`, the single shared token of earlier versions, is still honoured: an admin
token named `env`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ENV_TOKEN_NAME", "ROLES", "Token", "TokenError", "TokenStore", "add_token",
           "list_tokens", "revoke_token", "role_allows", "write_private"]

log = logging.getLogger("procwarden.streams.api")

ROLES = ("viewer", "operator", "admin")  # each can do what the ones before it can
ENV_TOKEN_NAME = "env"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_MAX_FILE_BYTES = 1 << 20  # thousands of tokens; a bigger file is a mistake, not a token list
_PREFIX = "pwt_"


class TokenError(Exception):
    pass


@dataclass(frozen=True)
class Token:
    name: str
    role: str


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner only at every moment: the temporary
    file is created 0600 (and set so again, whatever the umask) before a byte goes in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fd).st_mode & 0o077:
            raise TokenError(f"{path} can be read by others (chmod 600 it): not loaded")
        raw = fh.read(_MAX_FILE_BYTES + 1)
    if len(raw) > _MAX_FILE_BYTES:
        raise TokenError(f"{path} is over {_MAX_FILE_BYTES} bytes: not loaded")
    try:
        doc = orjson.loads(raw) if raw.strip() else {"tokens": []}
        entries = doc["tokens"]
        for e in entries:
            if (not isinstance(e.get("name"), str) or e.get("role") not in ROLES
                    or not isinstance(e.get("sha256"), str)):
                raise ValueError(f"bad entry {e.get('name')!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TokenError(f"{path} is not a token file: {exc}") from None
    return list(entries)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One `token add/revoke` at a time: two at once must not lose each other's change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    write_private(path, orjson.dumps({"tokens": entries}, option=orjson.OPT_INDENT_2) + b"\n")


def add_token(path: Path, name: str, role: str) -> str:
    """A new token NAME with ROLE; returns its secret (shown once: only its digest is kept)."""
    if not _NAME.fullmatch(name):
        raise TokenError(f"{name!r}: a token name is 1-64 letters, digits, '.', '_', '@', '-'")
    if name == ENV_TOKEN_NAME:
        raise TokenError(f"{ENV_TOKEN_NAME!r} is the name of STREAMS_API_TOKEN")
    if role not in ROLES:
        raise TokenError(f"{role!r}: the role is one of {', '.join(ROLES)}")
    with _locked(path):
        entries = _read(path)
        if any(e["name"] == name for e in entries):
            raise TokenError(f"a token named {name!r} exists: revoke it first")
        secret = _PREFIX + secrets.token_urlsafe(32)
        entries.append({"name": name, "role": role, "sha256": _digest(secret),
                        "created": int(time.time())})
        _write(path, entries)
    return secret


def revoke_token(path: Path, name: str) -> bool:
    with _locked(path):
        entries = _read(path)
        kept = [e for e in entries if e["name"] != name]
        if len(kept) == len(entries):
            return False
        _write(path, kept)
    return True


def list_tokens(path: Path) -> list[Token]:
    return [Token(e["name"], e["role"]) for e in _read(path)]


class TokenStore:
    """What the worker checks a bearer token against: the token file, re-read when it changes,
    and STREAMS_API_TOKEN. A file that cannot be loaded lets no file token in (it is logged)."""

    def __init__(self, path: Path | None, env_token: str | None = None) -> None:
        self.path = path
        self.env_token = env_token
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[str, Token]] = []

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        except OSError:
            stamp = (-1, 0, 0)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = _read(self.path)
        except TokenError as exc:
            log.error("API tokens: %s", exc)
            entries = []
        self._entries = [(e["sha256"], Token(e["name"], e["role"])) for e in entries]

    @property
    def empty(self) -> bool:
        self._refresh()
        return not self._entries and not self.env_token

    def lookup(self, presented: str) -> Token | None:
        self._refresh()
        digest = _digest(presented).encode()
        found = None
        # Every entry is compared, in constant time: the answer's timing tells nothing of
        # which digest came close.
        for known, token in self._entries:
            if hmac.compare_digest(digest, known.encode()):
                found = token
        if self.env_token is not None and hmac.compare_digest(
                digest, _digest(self.env_token).encode()):
            found = Token(ENV_TOKEN_NAME, "admin")
        return found
