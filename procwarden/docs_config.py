"""docs/configuration.md, generated from the settings classes of every role.

`python -m procwarden.docs_config > docs/configuration.md` rewrites it; tests/unit/test_docs.py
fails when the file and this output differ. It lives in procwarden/ because it imports every
stage's settings, which no stage may do.

Each variable is its class's prefix and the field's name upper-cased; the description is the
field's `description`, else the comment lines right above the field in the source. A secret
(`SecretStr`, or a field kept out of `repr`) shows no default.
"""

from __future__ import annotations

import enum
import inspect
import re
import socket
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from collectors.settings import CollectorSettings
from procwarden.keys import KEYS_DIR_ENV
from procwarden.policy_cli import ApiClientSettings
from procwarden.stack.layout import StackSettings
from schemas.connections import ClickHouseSettings, KafkaSettings
from schemas.env_settings import MessageLimitSettings
from sinks.settings import SiemSettings, SinkSettings
from streams.settings import StreamSettings
from transport.health import HEALTH_FILE_ENV

__all__ = ["Row", "render", "rows"]


class Row(NamedTuple):
    variable: str
    type: str
    default: str
    description: str
    secret: bool


# (title, what reads it, settings class): the pydantic-settings roles.
_ROLES: tuple[tuple[str, str, type[BaseSettings]], ...] = (
    ("Collector", "`procwarden collector`, one per node (collectors/settings.py)",
     CollectorSettings),
    ("Stream worker and API", "`procwarden streams` (streams/settings.py)", StreamSettings),
    ("ClickHouse sink", "`procwarden sink-clickhouse` (sinks/settings.py)", SinkSettings),
    ("SIEM forwarder", "`procwarden siem` (sinks/settings.py)", SiemSettings),
    ("Policy CLI", "`procwarden policy`, `procwarden token`, when a command runs "
     "(procwarden/policy_cli.py)", ApiClientSettings),
    ("Local stack", "`procwarden stack`, `procwarden up`, `procwarden demo` "
     "(procwarden/stack/layout.py)", StackSettings),
)

# schemas/connections.py: read by every role, beside its own.
_CONNECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("Kafka", KafkaSettings),
    ("ClickHouse", ClickHouseSettings),
)

# Read with os.environ by the role runner and the key tools rather than through a settings class.
_OTHERS: tuple[tuple[str, str, str, str], ...] = (
    (KEYS_DIR_ENV, "path", "<source>/var/keys",
     "the local keyring's folder (`procwarden keys`)"),
    (HEALTH_FILE_ENV, "path", "",
     "where a role started by `procwarden up` writes its health (set by the runner)"),
)


def _secret_annotation(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_secret_annotation(a) for a in typing.get_args(annotation))


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        optional = len(named) < len(args)
        return " or ".join(named) + (", optional" if optional else "")
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(str(m.value) for m in annotation)
    if annotation is SecretStr:
        return "str"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{sign} {getattr(item, attr)}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value == "":
        return '`""`'
    return f"`{value}`"


def _factory(factory: Callable[..., Any]) -> str:
    if factory is socket.gethostname:
        return "this host's name"
    return f"computed: `{factory.__qualname__}()`"


def _comments_above(cls: type) -> dict[str, str]:
    """Each field's comment block, from the lines right above its definition."""
    found: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            block.append(text.lstrip("#").strip())
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field and block:
            found[field.group(1)] = " ".join(block)
        block = []
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _settings_rows(cls: type[BaseSettings]) -> Iterator[Row]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    comments = _comments_above(cls)
    for name, info in cls.model_fields.items():
        secret = _secret_annotation(info.annotation) or info.repr is False
        kind = _type_name(info.annotation)
        bounds = _bounds(info)
        if bounds:
            kind += f" ({bounds})"
        if secret:
            default = ""
            kind += " (secret)"
        elif info.default_factory is not None:
            default = _factory(info.default_factory)
        else:
            default = _show(info.default)
        description = info.description or comments.get(name, "")
        yield Row(f"{prefix}{name.upper()}", _cell(kind), default, _cell(description), secret)


def rows() -> list[Row]:
    """Every documented variable, in the order the page lists them."""
    out: list[Row] = []
    for _, _, cls in _ROLES:
        out += _settings_rows(cls)
    for _, conn in _CONNECTIONS:
        out += _settings_rows(conn)
    out += _settings_rows(MessageLimitSettings)
    out += [Row(v, t, _show(d) if d else "", w, "secret" in t) for v, t, d, w in _OTHERS]
    return out


def _table(table: list[Row]) -> list[str]:
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{r.variable}` | {r.type} | {r.default} | {r.description} |" for r in table]
    return lines


def render() -> str:
    out = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m procwarden.docs_config > docs/configuration.md` from the "
        "settings classes; do not edit by hand (tests/unit/test_docs.py checks it). -->",
        "",
        "Every role reads its settings from environment variables with its own prefix, checks",
        "them as it starts, and exits naming the variable when one is wrong. Where Kafka and",
        "ClickHouse are comes from the `PROCWARDEN_KAFKA_*` and `PROCWARDEN_CLICKHOUSE_*`",
        "variables, the same for every role. `procwarden up` sets what the local stack needs",
        "(each role's Kafka identity, the API token file, the state folders); the variables",
        "below change what it sets. Secrets show no default and never appear in logs.",
        "",
        "examples/config/procwarden.env is a commented example for running the roles against",
        "an existing Kafka and ClickHouse (tests/unit/test_example_config.py loads it).",
        "",
    ]
    for title, reader, cls in _ROLES:
        out += [f"## {title}", "", f"Read by {reader}.", ""]
        out += _table(list(_settings_rows(cls)))
        out.append("")
    out += ["## Connections", "",
            "Read by every role (schemas/connections.py: `KafkaSettings`, "
            "`ClickHouseSettings`). The local stack's defaults are "
            "loopback; docs/kafka-security.md describes the identities `procwarden up` gives "
            "each role.", ""]
    for title, conn in _CONNECTIONS:
        out += [f"### {title}", ""]
        out += _table(list(_settings_rows(conn)))
        out.append("")
    out += ["## Message limits", "", "Read by every role as it starts (schemas/env_settings.py; "
            "the codec applies them).", ""]
    out += _table(list(_settings_rows(MessageLimitSettings)))
    out += ["", "## Command-line tools and the role runner", ""]
    out += _table([Row(v, t, _show(d) if d else "", w, "secret" in t) for v, t, d, w in _OTHERS])
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
