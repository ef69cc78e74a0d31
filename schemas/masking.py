"""Masking secrets in command lines (docs/behaviour.md §11): what the collector publishes and what
incidents say.

One left-to-right pass over the arguments, and over the words of an argument that holds
whitespace (a `sh -c` script, a `-H "Authorization: Bearer …"` header): no backtracking regex,
so the time is linear in the command line's length whatever a process puts there. Masking is
idempotent (a masked command line masks to itself), so a consumer may mask again what the
collector masked, and compare masked with masked.

What is masked (the value becomes `******`):
- `NAME=value` and `--name=value` whose name contains password, passwd, pass, pwd, secret, token,
  key, credential, bearer or authorization, or has a part (between `_`, `-`, `.`) `pat`, `pw` or
  `auth` (`GITHUB_PAT=`, but not `PATH=`);
- the argument after such a `--name`, after an HTTP header `Authorization:` / `X-Api-Key:` (its
  scheme word, `Bearer`, `Basic`, …, is kept) and after a bare `Bearer` / `Basic`;
- the password of URL user-info (`scheme://user:******@host`), or a long user-info that has no
  password (`https://<token>@github.com`);
- per program, wherever it appears in the line (`sudo mysql …`, `sh -c "mysql …"`): the MySQL and
  MongoDB clients' and `sshpass`'s `-pSECRET` / `-p SECRET`, `redis-cli -a SECRET`, and the
  password of curl's `-u user:pw`, `--user`, `-U` and `--proxy-user`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MASK", "mask_argv", "mask_cmdline"]

MASK = "******"

_SECRET = re.compile(r"pass|pwd|secret|token|key|credential|bearer|authorization")
_PARTS = re.compile(r"[^a-z0-9]+")
_SECRET_PARTS = frozenset({"pat", "pw", "auth"})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "negotiate", "ntlm", "apikey"})
_BARE_SCHEMES = frozenset({"bearer", "basic"})
_WORDS = re.compile(r"(\s+)")
_SPACE = re.compile(r"\s")
_AUTHORITY = re.compile(r"[^/?#\s]*")  # one character class: linear from where it starts
_LEAD = "'\"(`"
_TRAIL = "'\";&|)`"
_SEPARATORS = frozenset({";", "&&", "||", "|", "&"})
# Whatever any rule below looks for: a command line with none of it (most) is returned as is.
_ANY = re.compile(r"pass|pwd|secret|token|key|credential|bearer|authorization|basic|://|pat|pw"
                  r"|auth|mysql|mariadb|mongo|sshpass|redis-cli|keydb-cli|curl")
_LONG_USERINFO = 16  # a user-info this long without a password is taken for a token


class _Program(NamedTuple):
    password_flags: frozenset[str]  # short flags whose value is a password: -pSECRET, -p SECRET
    user_flags: frozenset[str] = frozenset()  # flags whose value is user:password
    options_first: bool = False  # its options end at its first operand (a wrapper's command)


_MYSQL = _Program(frozenset({"-p"}))
_PROGRAMS: dict[str, _Program] = {
    **{name: _MYSQL for name in (
        "mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck",
        "mysqlpump", "mysqlbinlog", "mysqlslap", "mysqlsh", "mariadb", "mariadb-dump",
        "mariadb-admin", "mariadb-import", "mariadb-check", "mariadb-show", "mongo", "mongosh",
        "mongodump", "mongorestore", "mongoexport", "mongoimport")},
    "sshpass": _Program(frozenset({"-p"}), options_first=True),
    "redis-cli": _Program(frozenset({"-a"})),
    "keydb-cli": _Program(frozenset({"-a"})),
    "curl": _Program(frozenset(), frozenset({"-u", "--user", "-U", "--proxy-user"})),
}


def _secret_name(name: str) -> bool:
    lower = name.lower()
    if _SECRET.search(lower):
        return True
    return not _SECRET_PARTS.isdisjoint(_PARTS.split(lower))


def _user_masked(value: str) -> str:
    user, sep, _ = value.partition(":")
    return f"{user}:{MASK}" if sep else value


def _mask_urls(text: str) -> str:
    if "://" not in text:
        return text
    out: list[str] = []
    done = 0
    start = text.find("://")
    while start != -1:
        if start > 0 and text[start - 1].isalnum():
            begin = start + 3
            end = _AUTHORITY.match(text, begin).end()  # type: ignore[union-attr]
            at = text.rfind("@", begin, end)
            if at != -1:
                colon = text.find(":", begin, at)
                if colon != -1:
                    out.append(text[done:colon + 1])
                    out.append(MASK)
                    done = at
                elif at - begin >= _LONG_USERINFO:
                    out.append(text[done:begin])
                    out.append(MASK)
                    done = at
            start = text.find("://", max(end, start + 3))
        else:
            start = text.find("://", start + 3)
    out.append(text[done:])
    return "".join(out)


class _Scan:
    """Where a left-to-right pass stands: what the previous word asked of the next one."""

    __slots__ = ("keep_scheme", "mask_next", "program", "user_value")

    def __init__(self) -> None:
        self.mask_next = False
        self.user_value = False  # the next value is user:password (only the password goes)
        self.keep_scheme = False  # the next value may be an auth scheme word, kept
        self.program: _Program | None = None

    def want(self, *, user: bool = False, scheme: bool = False) -> None:
        self.mask_next, self.user_value, self.keep_scheme = True, user, scheme

    def word(self, word: str) -> str:
        """One word, masked as the words before it and the word itself say."""
        body = word.lstrip(_LEAD)
        lead = word[:len(word) - len(body)]
        core = body.rstrip(_TRAIL)
        trail = body[len(core):]
        masked = self._core(core)
        if core in _SEPARATORS or (trail and trail[-1] in ";&|"):
            self.program = None
            self.mask_next = False
        if masked is core:
            return _mask_urls(word)
        return lead + _mask_urls(masked) + trail

    def _core(self, core: str) -> str:
        if self.mask_next:
            if self.keep_scheme and core.lower() in _AUTH_SCHEMES:
                self.keep_scheme = False
                return core
            user, self.mask_next = self.user_value, False
            return _user_masked(core) if user else MASK
        if not core:
            return core
        program = _PROGRAMS.get(core.rsplit("/", 1)[-1])
        if program is not None:
            self.program = program
            return core
        program = self.program
        if program is not None and core.startswith("-") and not core.startswith("--"):
            flag = core[:2]
            if flag in program.password_flags:
                if len(core) == 2:
                    self.want()
                    return core
                return flag + MASK
            if flag in program.user_flags:
                if len(core) == 2:
                    self.want(user=True)
                    return core
                return flag + _user_masked(core[2:])
        name, sep, value = core.partition("=")
        if sep and name:
            if _secret_name(name):
                return f"{name}={MASK}"
            if program is not None and name in program.user_flags:
                return f"{name}={_user_masked(value)}"
            return core
        if program is not None and core in program.user_flags:
            self.want(user=True)
            return core
        if core.startswith("-") and _secret_name(core):
            self.want()
            return core
        if core.endswith(":") and _secret_name(core[:-1]):  # an HTTP header's name
            self.want(scheme=True)
            return core
        if core.lower() in _BARE_SCHEMES:
            self.want()
            return core
        if program is not None and program.options_first and not core.startswith("-"):
            self.program = None  # the wrapped command's own options are its own
        return core


def mask_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """The arguments with every secret value masked (see the module's docstring)."""
    if not _ANY.search("\0".join(argv).lower()):
        return tuple(argv)
    scan = _Scan()
    out: list[str] = []
    for arg in argv:
        if scan.mask_next and not scan.keep_scheme:
            out.append(scan.word(arg) if scan.user_value else MASK)  # the whole argument
            scan.mask_next = False
        elif _SPACE.search(arg):
            words = _Scan()  # a script or a header: its own words, its own programs
            out.append("".join(part if i % 2 else words.word(part)
                               for i, part in enumerate(_WORDS.split(arg))))
        else:
            out.append(scan.word(arg))
    return tuple(out)


def mask_cmdline(argv: Sequence[str]) -> str:
    """The command line, masked, as one string (an incident's `proc_cmd`)."""
    return " ".join(mask_argv(argv))
