"""Validation and normalisation of what users send: rules, baselines, modes, groups (§12)."""

from __future__ import annotations

import posixpath
import re
from functools import lru_cache
from typing import Any

import re2

from schemas import Action, Baseline, CriteriaKey, CriteriaOp, Criterion, FailMode, Mode

__all__ = [
    "PolicyError",
    "clean_path",
    "compile_regex",
    "parse_baseline",
    "parse_mode",
    "trim_space",
    "validate_criteria",
    "validate_custom_group_name",
    "validate_rule",
]


class PolicyError(ValueError):
    """An edit the engine refuses. `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, *, status: int = 400, field: str = "") -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the API's 400, not a line on stderr


@lru_cache(maxsize=4096)
def compile_regex(pattern: str) -> Any:
    """A criterion's pattern, compiled by RE2: matching takes time linear in the text, so a
    pattern such as `^(a+)+$` cannot hold the event loop (Python's `re` backtracks). RE2 has
    no backreferences and no lookaround; such a pattern is refused (`PolicyError`, 400)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PolicyError(f"invalid regular expression ({reason}); patterns are RE2 syntax: "
                          "no backreferences or lookaround") from None


# Go's unicode.IsSpace, what NeuVector's strings.TrimSpace removes (checked over every rune with
# Go 1.26). str.strip() would also remove U+001C..U+001F, so "\x1e/bin/ls" became absolute.
_GO_SPACE = ("\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def trim_space(text: str) -> str:
    """`text` without the leading and trailing white space Go's `strings.TrimSpace` removes:
    every rule name and path, and every group name, is trimmed by this and nothing else."""
    return text.strip(_GO_SPACE)


def clean_path(path: str) -> str:
    """Lexical cleaning like Go's path.Clean (`/bin/../sbin/ws` → `/sbin/ws`)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _validate_path(path: str, field: str) -> str:
    path = trim_space(path)
    if path in ("", "*"):
        return path
    if not path.startswith("/"):
        raise PolicyError("must be empty, *, or an absolute path starting with /", field=field)
    if path.endswith("/"):
        raise PolicyError("must not end with /", field=field)
    if "<" in path or ">" in path:
        raise PolicyError("must not contain < or >", field=field)
    if path.count("*") > 1:
        raise PolicyError("may contain at most one *", field=field)
    cleaned = clean_path(path)
    if cleaned in ("/", "."):
        raise PolicyError(f"{path!r} cleans to {cleaned!r}", field=field)
    return cleaned


def validate_rule(name: str, path: str, action: str, *,
                  crd: bool = False) -> tuple[str, str, Action]:
    """Validate and normalise one rule's `name`, `path` and `action`.

    `crd`: the CRD importer's rules — the action is trimmed (a REST action is taken as sent,
    as NeuVector's REST handler takes it: `"deny "` is refused), and an empty name with a
    concrete path becomes the path's basename.
    """
    try:
        act = Action(trim_space(action) if crd else action)
    except ValueError:
        raise PolicyError(f"unknown action {action!r} (allowed: allow, deny)",
                          field="action") from None
    name = trim_space(name)
    norm_path = _validate_path(path, "path")
    if not name:
        if crd and norm_path not in ("", "*", "/*"):
            name = norm_path.rsplit("/", 1)[-1]
        else:
            raise PolicyError("must not be empty", field="name")
    if name == "*" and norm_path == "":
        raise PolicyError("name * needs a path", field="path")
    if act is Action.DENY and name == "*" and norm_path in ("*", "/*"):
        raise PolicyError("a deny rule for every process (deny all) is not allowed", field="action")
    return name, norm_path, act


def parse_baseline(value: str) -> Baseline:
    text = value.strip().lower()
    if text in ("zero-drift", "default", "shield"):
        return Baseline.ZERO_DRIFT
    if text == "basic":
        return Baseline.BASIC
    raise PolicyError(f"unknown baseline {value!r} (allowed: basic, zero-drift)", field="baseline")


def parse_fail_mode(value: str) -> FailMode | None:
    """A group's fail mode; None for `default` (the collector's own setting)."""
    text = value.strip().lower()
    if text == "default":
        return None
    for mode in FailMode:
        if mode.value == text:
            return mode
    raise PolicyError(f"unknown fail mode {value!r} (allowed: open, closed, default)",
                      field="fail_mode")


def parse_mode(value: str) -> Mode:
    text = value.strip().lower()
    for mode in Mode:
        if mode.value.lower() == text:
            return mode
    raise PolicyError(f"unknown mode {value!r} (allowed: Discover, Monitor, Protect)",
                      field="mode")


_CUSTOM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_custom_group_name(name: str) -> str:
    if not _CUSTOM_NAME.fullmatch(name):
        raise PolicyError("must be 1 to 64 characters of A-Z a-z 0-9 . _ -", field="name")
    if name.startswith(("nv.", "fed.")):
        raise PolicyError("nv. and fed. names are reserved", field="name")
    if name == "nodes":
        raise PolicyError("nodes is reserved", field="name")
    return name


def validate_criteria(criteria: tuple[Criterion, ...]) -> tuple[Criterion, ...]:
    if not criteria:
        raise PolicyError("a custom group needs at least one criterion", field="criteria")
    out = []
    for i, c in enumerate(criteria):
        value = c.value.strip()
        where = f"criteria[{i}].value"
        if not value:
            raise PolicyError("must not be empty", field=where)
        if c.op in (CriteriaOp.REGEX, CriteriaOp.NOT_REGEX):
            label_value = c.key is CriteriaKey.LABEL and "=" in value
            pattern = value.split("=", 1)[1] if label_value else value
            try:
                compile_regex(pattern)
            except PolicyError as exc:
                raise PolicyError(exc.message, field=where) from None
        out.append(Criterion(c.key, c.op, value))
    return tuple(out)
