"""Key files a running role re-reads when they change: rotation without a restart (issue 22).

A role holds its keys in a `KeyFile`: the stream worker its keyring, a collector its node key
file (or, on one machine, the local keyring it derives its node's keys from). The file is
looked at every `interval_s` at most, by `poll()` (a watcher thread calls it; unit tests call
it with their own clock): one `stat`, and a read and parse only when its inode, size, mtime or
mode changed. Signing and verifying never touch the file: each holder of keys subscribes and
swaps in the signer or verifier built from a new version, so a record is signed or checked
with one version of the keys, whole.

A new version is refused, and the keys held stay as they were, when the file is gone or
unreadable, readable by others than its owner, larger than `MAX_BYTES`, not a key file, the keys
of another node, or when it drops the key id that signs now: records signed with that key are
still in flight and would all be refused (a keyring made afresh by mistake, a node file of the
wrong generation). To drop the signing key on purpose (after a compromise), restart the role.
Each refused version counts once in `procwarden_<role>_key_file_refused_total{reason}` and is
logged once per distinct problem; an accepted one is logged once with the key ids that verify
and the one that signs, which `procwarden_<role>_keys{kid,use}` says too. Never a moment
without valid keys: the first version must load (the role does not start without), and every
later one replaces a valid one with a valid one.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from transport.signing import Keyring, NodeKeys

__all__ = ["MAX_BYTES", "KeyFile", "keys_now"]

log = logging.getLogger("procwarden.transport.keys")

# A key file is a few hundred bytes per key generation; anything this large is not one, and is
# not read (the file is the operator's, but a wrong path can name a huge one).
MAX_BYTES = 1 << 20
_LOGGED_MAX = 64  # distinct problems logged between two accepted versions; the rest counted


class _Keys(Protocol):
    @property
    def keys(self) -> Mapping[str, Any]: ...
    @property
    def current(self) -> str: ...


K = TypeVar("K", bound=_Keys)
_Signature = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, mode

_METRICS: dict[str, tuple[Counter, Gauge]] = {}
_METRICS_LOCK = threading.Lock()


def _metrics(role: str) -> tuple[Counter, Gauge]:
    """The role's two metrics, registered once per process whatever the number of files."""
    with _METRICS_LOCK:
        got = _METRICS.get(role)
        if got is None:
            got = _METRICS[role] = (
                Counter(f"procwarden_{role}_key_file_refused_total",
                        "New versions of a key file refused (the keys held stay)", ["reason"]),
                Gauge(f"procwarden_{role}_keys",
                      "The key ids this role holds: use=signs (one) or verifies", ["kid", "use"]))
        return got


class _Problem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class KeyFile(Generic[K]):
    """The keys of one file, as of its last valid version."""

    def __init__(self, path: Path, parse: Callable[[str], K], *, role: str, what: str,
                 node: str = "", interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._parse = parse
        self._role = role
        self._what = what  # "keyring", "node key file" or "keyring (node keys of ...)"
        self._node = node  # node keys: whose they must be
        self._interval = interval_s
        self._clock = clock
        self._refused, self._gauge = _metrics(role)
        self._lock = threading.Lock()  # one poll at a time; a second caller skips
        self._listeners: list[Callable[[K], None]] = []
        self._logged: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The first version must be valid: raised (OSError, ValueError) to the role's start.
        try:
            sig, value = self._read()
        except _Problem as exc:
            raise ValueError(f"{path}: {exc.detail}") from None
        self.value: K = value
        self._sig: _Signature | None = sig
        self._due = clock() + interval_s
        self._show()

    # -- the ways a role gets its keys ----------------------------------------------------------

    @classmethod
    def keyring(cls, path: Path, *, role: str = "streams", interval_s: float = 5.0,
                clock: Callable[[], float] = time.monotonic) -> KeyFile[Keyring]:
        return KeyFile(path, Keyring.from_json, role=role, what="keyring",
                       interval_s=interval_s, clock=clock)

    @classmethod
    def node_file(cls, path: Path, node: str, *, role: str = "collector",
                  interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic
                  ) -> KeyFile[NodeKeys]:
        return KeyFile(path, NodeKeys.from_json, role=role, what="node key file", node=node,
                       interval_s=interval_s, clock=clock)

    @classmethod
    def node_from_keyring(cls, path: Path, node: str, *, role: str = "collector",
                          interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic
                          ) -> KeyFile[NodeKeys]:
        """One machine: a node's keys derived from the keyring beside the stream app's."""
        return KeyFile(path, lambda text: Keyring.from_json(text).node_keys(node), role=role,
                       what="keyring", node=node, interval_s=interval_s, clock=clock)

    # -- following it ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[K], None]) -> None:
        """`listener` gets every version accepted from now on (from the polling thread)."""
        self._listeners.append(listener)

    def start(self) -> KeyFile[K]:
        """Poll in a daemon thread, every `interval_s`, until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"keys {self.path.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll(due=True)  # (a wait may end a hair early: it is due all the same)
            except Exception:  # a bug here must not end the watching (the keys held stay)
                log.exception("%s %s: checking it failed", self._what, self.path)

    def poll(self, due: bool = False) -> bool:
        """Whether a new version was taken (at most one look per `interval_s`)."""
        now = self._clock()
        if (now < self._due and not due) or not self._lock.acquire(blocking=False):
            return False
        try:
            self._due = now + self._interval
            try:
                st = os.stat(self.path)
            except OSError as exc:
                return self._refuse(None, _Problem("unreadable", _os_error(exc)))
            if _signature(st) == self._sig:
                return False
            try:
                sig, value = self._read()
                self._check(value)
            except _Problem as problem:
                return self._refuse(_signature(st), problem)
            self._sig = sig
            return self._take(value)
        finally:
            self._lock.release()

    # -- reading and checking -------------------------------------------------------------------

    def _read(self) -> tuple[_Signature, K]:
        """The file's signature and keys, read from one open file (what was checked is what
        was read)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise _Problem("unreadable", _os_error(exc)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Problem("unreadable", "not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise _Problem("mode", f"readable by others (mode {mode:o}): a key file must "
                                       "be 0600")
            if st.st_size > MAX_BYTES:
                raise _Problem("size", f"{st.st_size} bytes, more than a key file's "
                                       f"{MAX_BYTES}")
            chunks, left = [], MAX_BYTES + 1
            while left > 0:
                chunk = os.read(fd, min(left, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise _Problem("unreadable", _os_error(exc)) from None
        finally:
            os.close(fd)
        if len(data) > MAX_BYTES:
            raise _Problem("size", f"more than a key file's {MAX_BYTES} bytes")
        try:
            value = self._parse(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Problem("malformed", str(exc)[:200]) from None
        if self._node and isinstance(value, NodeKeys) and value.node != self._node:
            raise _Problem("node", f"the keys of node {value.node[:80]!r}, not of "
                                   f"{self._node!r}")
        return _signature(st), value

    def _check(self, new: K) -> None:
        held = self.value
        if held.current not in new.keys:
            raise _Problem("dropped-signing-key",
                           f"it drops key {held.current!r}, which signs now (restart the role "
                           "to drop it on purpose)")
        # A key id names one key for good: records in flight signed with it would all be
        # refused (a keyring made afresh over the old one reuses "k1").
        changed = sorted(kid for kid in new.keys.keys() & held.keys.keys()
                         if new.keys[kid] != held.keys[kid])
        if changed:
            raise _Problem("changed-key", f"key id {changed[0]!r} names another key than the "
                                          "one held (restart the role to replace it on purpose)")

    def _refuse(self, sig: _Signature | None, problem: _Problem) -> bool:
        if sig == self._sig and sig is None:
            return False  # still gone: counted and logged when it went
        self._sig = sig  # this version is refused once, not at every look
        self._refused.labels(problem.reason).inc()
        key = (problem.reason, problem.detail)
        if key not in self._logged and len(self._logged) < _LOGGED_MAX:
            self._logged.add(key)
            log.warning("%s %s: new version refused (%s): %s; still using keys %s, %s signs",
                        self._what, self.path, problem.reason, problem.detail,
                        ", ".join(sorted(self.value.keys)), self.value.current)
        return False

    def _take(self, value: K) -> bool:
        self._logged.clear()  # a problem that comes back after this is news again
        if value == self.value:
            return False  # the same keys rewritten (a Secret resynced, a touch)
        self.value = value
        for listener in self._listeners:
            try:
                listener(value)
            except Exception:  # one holder's failure must not stop the others' swap
                log.exception("%s %s: a holder of the keys failed to take them",
                              self._what, self.path)
        self._show(reloaded=True)
        return True

    def _show(self, reloaded: bool = False) -> None:
        value = self.value
        self._gauge.clear()
        for kid in value.keys:
            self._gauge.labels(kid, "signs" if kid == value.current else "verifies").set(1)
        log.info("%s %s%s: keys %s verify, %s signs", self._what, self.path,
                 " reloaded" if reloaded else "", ", ".join(sorted(value.keys)), value.current)


def keys_now(keys: K | KeyFile[K], on_change: Callable[[K], None]) -> K:
    """The keys as they are now; `on_change` gets each later version when `keys` is a file
    (a fixed set of keys never changes)."""
    if isinstance(keys, KeyFile):
        keys.subscribe(on_change)
        return keys.value
    return keys


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


def _os_error(exc: OSError) -> str:
    return f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror or exc}"
