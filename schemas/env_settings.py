"""The base of the settings every role shares (`PROCWARDEN_*`), and the codec's bounds.

The roles' own settings (*/settings.py) and these are all pydantic-settings classes: one
configuration system. `EnvSettings.read(env)` reads a given mapping in place of the process
environment (tests, tools) and turns a bad value into a `ConfigError` of one line naming each
variable, in plain words, with the value unless it is a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas.codec import CodecLimits

__all__ = ["LOG_LEVEL", "ConfigError", "EnvSettings", "LogLevel", "MessageLimitSettings"]

# Every role's `*_LOG_LEVEL`: a closed set, any case, so a typo stops the role at start with
# the variable named rather than in the logging module.
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"],
                     BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)]
LOG_LEVEL = "least severe log line written"


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable."""


# The variables `read(env=...)` was handed, in place of the process environment, for the
# duration of that one read (a settings class cannot take them as an argument).
_GIVEN: ContextVar[Mapping[str, str] | None] = ContextVar("_GIVEN", default=None)

# pydantic's words for the failures an environment variable meets, in the project's own.
_PLAIN = {"int_parsing": "expected an integer", "bool_parsing": "expected true or false",
          "float_parsing": "expected a number"}


class _GivenEnvironment(EnvSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], given: Mapping[str, str]) -> None:
        self._given = given
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k if self.case_sensitive else k.lower(): v for k, v in self._given.items()}


@contextmanager
def _reading(env: Mapping[str, str] | None) -> Iterator[None]:
    token = _GIVEN.set(env)
    try:
        yield
    finally:
        _GIVEN.reset(token)


class EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = _GIVEN.get()
        return (init_settings,
                env_settings if given is None else _GivenEnvironment(settings_cls, given))

    # Values pasted into an environment file often carry a stray space or newline.
    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings from `env` (default: the process environment), or a ConfigError of
        one line naming each bad variable."""
        with _reading(env):
            try:
                return cls()
            except ValidationError as exc:
                raise ConfigError(_one_line(cls, exc)) from None

    @classmethod
    def variable(cls, name: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{name.upper()}"


def _one_line(cls: type[EnvSettings], exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        info = cls.model_fields.get(name)
        secret = info is not None and info.annotation is SecretStr
        got = "" if secret or "input" not in error else f", got {error['input']!r}"
        said = _PLAIN.get(error["type"], error["msg"].removeprefix("Value error, "))
        problems.append(f"{cls.variable(name)}: {said}{got}")
    return "; ".join(problems)


_DEFAULT_LIMITS = CodecLimits()


class MessageLimitSettings(EnvSettings):
    """`PROCWARDEN_MAX_*`: the codec's bounds, the same for every role."""

    model_config = SettingsConfigDict(env_prefix="PROCWARDEN_")

    max_message_bytes: int = Field(_DEFAULT_LIMITS.max_message_bytes, description=(
        "largest message any role decodes (refused before parsing)"))
    max_nesting: int = Field(_DEFAULT_LIMITS.max_depth,
                             description="deepest nesting the codec parses")

    def limits(self) -> CodecLimits:
        try:
            return CodecLimits(self.max_message_bytes, self.max_nesting)
        except ValueError as exc:
            names = " / ".join(self.variable(n) for n in type(self).model_fields)
            raise ConfigError(f"{names}: {exc}") from None
