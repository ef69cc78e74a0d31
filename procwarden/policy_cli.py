"""`procwarden policy ...`: the policy API from the command line.

Where the API is: `PROCWARDEN_API_URL` (default `http://127.0.0.1:6066`; `https://` when the
workers serve TLS, with `PROCWARDEN_API_CA` naming the CA file when it is not a public one) and
its token `PROCWARDEN_API_TOKEN`. `procwarden token ...` manages the named tokens.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from schemas.env_settings import ConfigError, EnvSettings

__all__ = ["ApiClientSettings", "policy_app", "token_app"]

policy_app = typer.Typer(help="Read and change process profiles through the policy API.",
                         no_args_is_help=True)

token_app = typer.Typer(help="Named API tokens with roles (viewer, operator, admin), in the "
                        "file the stream workers read (STREAMS_API_TOKENS_FILE).",
                        no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer")]


class ApiCallError(Exception):
    pass


class ApiClientSettings(EnvSettings):
    """`PROCWARDEN_API_*`: where `procwarden policy` and `procwarden token` reach the API, read
    when a command runs."""

    model_config = SettingsConfigDict(env_prefix="PROCWARDEN_API_")

    url: str = Field("http://127.0.0.1:6066",
                     description="where the CLI reaches the policy API (https:// for TLS)")
    token: SecretStr | None = Field(None, description="the bearer token the CLI sends")
    ca: Path | None = Field(None, description="PEM CA the CLI trusts for an https:// API")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


def call(method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Any:
    try:
        api = ApiClientSettings.read()
    except ConfigError as exc:
        raise ApiCallError(str(exc)) from None
    base = api.url
    headers = {"Content-Type": "application/json"}
    if api.token is not None and api.token.get_secret_value():
        headers["Authorization"] = f"Bearer {api.token.get_secret_value()}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=api.ca) if api.ca else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise ApiCallError(f"{exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise ApiCallError(f"cannot reach the policy API at {base} ({exc.reason}); is "
                           "`procwarden streams` running? (PROCWARDEN_API_URL)") from None


def _run(method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Any:
    try:
        return call(method, path, body, raw=raw)
    except ApiCallError as exc:
        typer.echo(f"procwarden policy: {exc}", err=True)
        raise typer.Exit(1) from None


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in [headers, *rows])


def _print_profile(profile: dict[str, Any]) -> None:
    head = profile["group"]
    if "mode" in profile:
        head += (f"  mode={profile['mode']} baseline={profile['baseline']}"
                 f" alert_disabled={str(profile['alert_disabled']).lower()}"
                 f" hash_enabled={str(profile['hash_enabled']).lower()}"
                 f" fail_mode={profile.get('fail_mode', 'default')}")
    typer.echo(f"{head}  version={profile.get('version', '?')}")
    rows = [[str(i + 1), e["action"], e["name"], e["path"] or '""', e["cfg_type"],
             ",".join(e.get("users", [])), e["group"]]
            for i, e in enumerate(profile["process_list"])]
    if rows:
        typer.echo(_table(rows, ["#", "action", "name", "path", "source", "users", "group"]))
    else:
        typer.echo("  (no rules)")


@policy_app.command("get")
def get(group: Annotated[str | None, typer.Argument(help="A group; all when omitted")] = None,
        as_json: JsonOpt = False) -> None:
    """Show process profiles, rules in the order they are matched."""
    answer = _run("GET", f"/v1/process_profile/{group}" if group else "/v1/process_profile")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    profiles = [answer["process_profile"]] if group else answer["process_profiles"]
    for i, profile in enumerate(profiles):
        if i:
            typer.echo("")
        _print_profile(profile)


@policy_app.command("apply")
def apply(file: Annotated[Path, typer.Option("-f", "--file", help="NvSecurityRule YAML/JSON")],
          as_json: JsonOpt = False) -> None:
    """Apply NeuVector security-rule CRD documents (process rules, mode, baseline)."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        typer.echo(f"procwarden policy apply: {exc}", err=True)
        raise typer.Exit(2) from None
    answer = _run("POST", "/v1/policy/import", raw=raw)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(f"applied: {', '.join(answer['groups']) or 'nothing changed'}")


def _service(group: str) -> str:
    return group if group == "nodes" else group.removeprefix("nv.")


@policy_app.command("set-mode")
def set_mode(group: str, mode: Annotated[str, typer.Argument(help="Discover|Monitor|Protect")],
             as_json: JsonOpt = False) -> None:
    """Switch a learned group (or nodes) to Discover, Monitor or Protect."""
    answer = _run("PATCH", "/v1/service/config",
                  {"config": {"services": [_service(group)], "profile_mode": mode}})
    _echo(answer, as_json, lambda: _print_profile(answer["process_profiles"][0]))


@policy_app.command("set-baseline")
def set_baseline(group: str,
                 baseline: Annotated[str, typer.Argument(help="zero-drift|basic")],
                 as_json: JsonOpt = False) -> None:
    """Switch a learned group between the zero-drift and basic baselines."""
    answer = _run("PATCH", f"/v1/process_profile/{group}",
                  {"process_profile_config": {"baseline": baseline}})
    _echo(answer, as_json, lambda: _print_profile(answer["process_profile"]))


@policy_app.command("set-fail-mode")
def set_fail_mode(group: str,
                  fail_mode: Annotated[str, typer.Argument(help="open|closed|default")],
                  as_json: JsonOpt = False) -> None:
    """What the group's collectors do with a held exec when no verdict comes in time: allow it
    and alert (open), deny it (closed), or follow each collector's COLLECTOR_FAIL_MODE."""
    answer = _run("PATCH", f"/v1/process_profile/{group}",
                  {"process_profile_config": {"fail_mode": fail_mode}})
    _echo(answer, as_json, lambda: _print_profile(answer["process_profile"]))


@policy_app.command("add-rule")
def add_rule(group: str, name: str, path: str,
             action: Annotated[str, typer.Option(help="allow|deny")] = "allow",
             allow_update: Annotated[bool, typer.Option(help="Cover updated executables")]
             = False, as_json: JsonOpt = False) -> None:
    """Add (or change) a rule: NAME and PATH as in the console (`*`, `/dir/*`, ...)."""
    change = {"name": name, "path": path, "action": action, "allow_update": allow_update}
    answer = _run("PATCH", f"/v1/process_profile/{group}",
                  {"process_profile_config": {"process_change_list": [change]}})
    _echo(answer, as_json, lambda: _print_profile(answer["process_profile"]))


@policy_app.command("delete-rule")
def delete_rule(group: str, name: str, path: str, as_json: JsonOpt = False) -> None:
    """Delete a rule by NAME and PATH (CRD rules are changed by applying the CRD)."""
    answer = _run("PATCH", f"/v1/process_profile/{group}",
                  {"process_profile_config": {"process_delete_list": [
                      {"name": name, "path": path}]}})
    _echo(answer, as_json, lambda: _print_profile(answer["process_profile"]))


def _echo(answer: Any, as_json: bool, human: Any) -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        human()


# -- tokens ---------------------------------------------------------------------------------------

def _tokens_file() -> Path:
    from procwarden.roles import Roles  # the stack's modules: only for these commands
    return Roles().api_tokens_file


@token_app.command("add")
def token_add(name: str,
              role: Annotated[str, typer.Option(help="viewer | operator | admin")] = "viewer",
              ) -> None:
    """Make a token NAME with ROLE and print it: shown this once, only its digest is kept.
    Changes made with it are recorded under NAME."""
    from streams.web.api_tokens import TokenError, add_token
    path = _tokens_file()
    try:
        secret = add_token(path, name, role)
    except (TokenError, OSError) as exc:
        typer.echo(f"procwarden token add: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
    typer.echo(f"token {name!r} ({role}) added to {path}; give it as "
               "`Authorization: Bearer <token>` (PROCWARDEN_API_TOKEN for `procwarden policy`)",
               err=True)


@token_app.command("list")
def token_list() -> None:
    """The tokens' names and roles (never their secrets)."""
    from streams.web.api_tokens import TokenError, list_tokens
    try:
        tokens = list_tokens(_tokens_file())
    except TokenError as exc:
        typer.echo(f"procwarden token list: {exc}", err=True)
        raise typer.Exit(2) from None
    from streams.settings import StreamSettings
    env_token = StreamSettings().api_token
    if env_token is not None and env_token.get_secret_value():
        typer.echo("env  admin  (STREAMS_API_TOKEN)")
    for token in tokens:
        typer.echo(f"{token.name}  {token.role}")


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Remove token NAME: the workers refuse it from their next request."""
    from streams.web.api_tokens import TokenError, revoke_token
    try:
        found = revoke_token(_tokens_file(), name)
    except TokenError as exc:
        typer.echo(f"procwarden token revoke: {exc}", err=True)
        raise typer.Exit(2) from None
    if not found:
        typer.echo(f"procwarden token revoke: no token named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"token {name!r} revoked")
