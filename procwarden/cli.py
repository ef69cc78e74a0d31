"""`procwarden`: the command line. Each subcommand imports only the role it runs."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from procwarden.runtime import tune_gc

if TYPE_CHECKING:
    from procwarden.stack import Stack
    from schemas.connections import KafkaConnection
    from transport import Health

app = typer.Typer(
    name="procwarden",
    help="Process profile rules (NeuVector-style) as an event-streaming pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _bad_setting(command: str, prefix: str, exc: Exception) -> NoReturn:
    """A bad setting is one line naming the variable, exit status 2 (never a traceback)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        text = "; ".join(f"{prefix}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                         for e in errors())
    else:
        text = str(exc)
    typer.echo(f"procwarden {command}: bad setting: {text}", err=True)
    raise typer.Exit(2)


def _check_access(command: str, kafka: KafkaConnection, role: str,
                  groups: list[str]) -> None:
    """Exit 1 with one line per problem if the role's identity surely lacks an ACL it needs
    (transport/preflight.py): better than a role that waits forever, looking alive."""
    from procwarden.stack.acls import ROLE_TOPICS
    from transport.preflight import access_problems

    problems = access_problems(kafka, [kafka.topic(t.name) for t in ROLE_TOPICS[role]], groups)
    for problem in problems:
        typer.echo(f"procwarden {command}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


def _role_process(log_level: str, metrics_port: int) -> threading.Event:
    """Logging, /metrics on loopback (port 0: none), and an event that SIGTERM/SIGINT set,
    for the long-running roles that stop cleanly between batches."""
    import logging
    import signal

    tune_gc()

    from prometheus_client import start_http_server

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    return stopping


def _health(role: str) -> Health:
    """The role's health, written to the file `procwarden up` names for it (if any)."""
    import os

    from transport import HEALTH_FILE_ENV, Health

    path = os.environ.get(HEALTH_FILE_ENV)
    return Health(role, Path(path) if path else None)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """procwarden learns which processes each group of containers runs, then alerts on or blocks
    anything else."""
    from schemas import codec

    # Every command decodes with the same bounds, read as it starts rather than at import.
    try:
        codec.set_limits(codec.limits_from_env())
    except ValueError as exc:
        _bad_setting(ctx.invoked_subcommand or "", "PROCWARDEN_", exc)


@app.command()
def decide(
    events: Annotated[Path, typer.Argument(help="JSONL file of wire messages; - for stdin")],
    policy: Annotated[list[Path] | None, typer.Option(
        "--policy", "-p", help="Policy file: native JSON/YAML or NeuVector CRD YAML (repeatable)",
    )] = None,
    explain: Annotated[bool, typer.Option(help="Human-readable lines instead of JSON")] = False,
    new_group_mode: Annotated[str, typer.Option(help="Mode of newly seen learned groups")] =
        "Discover",
    new_group_baseline: Annotated[str, typer.Option(help="Baseline of newly seen learned groups")]
        = "zero-drift",
    full_cmdline: Annotated[bool, typer.Option(help="Do not mask secrets in proc_cmd")] = False,
) -> None:
    """Replay events and policy edits offline: one decision (or accept/reject) per input line.

    Exit status: 0 when every line was decided or accepted, 1 when some line failed or an edit
    was rejected, 2 for bad options or policy files.
    """
    from streams.engine import EngineSettings, PolicyError, parse_baseline, parse_mode
    from streams.offline.replay import dumps, load_policy_file, read_lines, replay
    from streams.offline.replay import explain as explain_line
    from streams.worker.session import DecisionSession

    try:
        settings = EngineSettings(full_cmdline=full_cmdline,
                                  new_group_mode=parse_mode(new_group_mode),
                                  new_group_baseline=parse_baseline(new_group_baseline))
        session = DecisionSession(settings=settings)
        for path in policy or []:
            load_policy_file(session, path)
    except (PolicyError, OSError) as exc:
        typer.echo(f"procwarden decide: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        # Bytes, read line by line within the codec's bound: a line that is not UTF-8 or is
        # huge is reported like any other bad line.
        stream = sys.stdin.buffer if str(events) == "-" else events.open("rb")
    except OSError as exc:
        typer.echo(f"procwarden decide: {exc}", err=True)
        raise typer.Exit(2) from None
    failures = 0
    with stream:
        for item in replay(session, read_lines(stream)):
            failures += not item.ok
            typer.echo(explain_line(session, item) if explain else dumps(item.output))
    if failures:
        typer.echo(f"procwarden decide: {failures} line(s) failed or were rejected", err=True)
        raise typer.Exit(1)


@app.command()
def streams() -> None:
    """Run a stream worker: decide events, learn, publish verdicts and incidents, write
    policies. Settings: STREAMS_* and PROCWARDEN_KAFKA_* variables."""
    from pydantic import ValidationError

    from procwarden.keys import local_keyring, local_keyring_path
    from schemas.connections import ConfigError, KafkaConnection
    from streams.app import run_worker
    from streams.settings import StreamSettings
    from transport.keyfile import KeyFile

    try:
        settings = StreamSettings()
        kafka = KafkaConnection.from_env()
        if settings.signing_keyring_file is None:
            local_keyring()  # made on first use
        # Re-read as it is rotated, without a restart (docs/keys.md).
        ring = KeyFile.keyring(settings.signing_keyring_file or local_keyring_path(),
                               interval_s=settings.keys_check_interval_s).start()
    except (ValidationError, ConfigError, ValueError, OSError) as exc:
        _bad_setting("streams", "STREAMS_", exc)
    typer.echo(f"procwarden streams: {kafka.describe()}, group {settings.app_id}, "
               f"api http://{settings.web_host}:{settings.web_port}, signing key "
               f"{ring.value.current}" + (" (INSECURE: unsigned records believed)"
                                          if settings.accept_unsigned else ""), err=True)
    _check_access("streams", kafka, "streams", [settings.app_id, f"{settings.app_id}-events"])
    tune_gc()
    run_worker(settings, kafka, ring)


keys_app = typer.Typer(help="The keys that sign what the collectors and the stream app write "
                            "(docs/operations.md).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("init")
def keys_init(out: Annotated[Path | None, typer.Option(help="The keyring file to write "
                                                        "(default: the local one)")] = None,
              ) -> None:
    """Make a keyring for the stream app, unless there is one."""
    from procwarden.keys import keys_dir, local_keyring
    from transport.signing import Keyring

    if out is None:
        ring = local_keyring()
        typer.echo(f"keyring {keys_dir() / 'keyring.json'} (current key {ring.current})")
    elif out.exists():
        typer.echo(f"procwarden keys init: {out} exists; `keys rotate` adds a key", err=True)
        raise typer.Exit(1)
    else:
        Keyring.generate().save(out)
        typer.echo(f"keyring {out}")


@keys_app.command("rotate")
def keys_rotate(ring_file: Annotated[Path | None, typer.Option(
        "--keyring", help="The keyring (default: the local one)")] = None) -> None:
    """Add a key that verifies but does not sign yet (the oldest non-current one is dropped).
    Hand the stream app and every node the new files, then `keys activate`."""
    from procwarden.keys import keys_dir
    from transport.signing import Keyring

    path = ring_file or keys_dir() / "keyring.json"
    try:
        ring = Keyring.load(path)
        kid = f"k{max(int(k[1:]) for k in ring.keys if k[1:].isdecimal()) + 1}" \
            if any(k[1:].isdecimal() for k in ring.keys) else "k2"
        ring.rotated(kid).save(path)
    except (OSError, ValueError) as exc:
        typer.echo(f"procwarden keys rotate: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"keyring {path}: key {kid} added (verifies), {ring.current} still signs; hand "
               f"each node its file (keys node NAME --out FILE), wait until every role holds "
               f"{kid} (procwarden_*_keys, docs/keys.md), then `keys activate {kid}`")


@keys_app.command("activate")
def keys_activate(kid: Annotated[str, typer.Argument(help="The key id that signs from now")],
                  ring_file: Annotated[Path | None, typer.Option(
                      "--keyring", help="The keyring (default: the local one)")] = None,
                  ) -> None:
    """Make a key sign (every holder must have it already). Hand out the files again."""
    from procwarden.keys import keys_dir
    from transport.signing import Keyring

    path = ring_file or keys_dir() / "keyring.json"
    try:
        Keyring.load(path).activated(kid).save(path)
    except (OSError, ValueError) as exc:
        typer.echo(f"procwarden keys activate: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"keyring {path}: {kid} signs (the stream app from its next look at the "
               "file); hand each node its file again")


@keys_app.command("node")
def keys_node(name: Annotated[str, typer.Argument(help="The node's name (its --node)")],
              out: Annotated[Path, typer.Option(help="Where to write its key file")],
              ring_file: Annotated[Path | None, typer.Option(
                  "--keyring", help="The keyring (default: the local one)")] = None) -> None:
    """Write one node's key file (COLLECTOR_SIGNING_KEYS_FILE): its keys only."""
    from procwarden.keys import keys_dir
    from transport.signing import Keyring

    try:
        Keyring.load(ring_file or keys_dir() / "keyring.json").node_keys(name).save(out)
    except (OSError, ValueError) as exc:
        typer.echo(f"procwarden keys node: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"keys of node {name}: {out}")


@app.command("sink-clickhouse")
def sink_clickhouse() -> None:
    """Store verdicts, security events, profile changes and workloads in ClickHouse.
    Settings: SINKS_*, PROCWARDEN_KAFKA_* and PROCWARDEN_CLICKHOUSE_* variables."""

    from pydantic import ValidationError

    from schemas.connections import ClickHouseConnection, ConfigError, KafkaConnection
    from sinks.clickhouse import compose
    from sinks.settings import SinkSettings

    try:
        settings = SinkSettings()
        kafka, clickhouse = KafkaConnection.from_env(), ClickHouseConnection.from_env()
    except (ValidationError, ConfigError) as exc:
        _bad_setting("sink-clickhouse", "SINKS_", exc)
    _check_access("sink-clickhouse", kafka, "sink-clickhouse", [settings.group_id])
    stopping = _role_process(settings.log_level, settings.metrics_port)
    writer = compose.writer(settings, kafka, clickhouse, _health("sink-clickhouse"))
    typer.echo(f"procwarden sink-clickhouse: {kafka.describe()} -> {clickhouse.describe()}",
               err=True)
    try:
        writer.run(stopping.is_set)
    finally:
        writer.close()


@app.command()
def siem() -> None:
    """Forward security events to a SIEM: syslog (RFC 5424, JSON or CEF; UDP, TCP, TLS) and/or
    a JSON webhook. Settings: SIEM_* and PROCWARDEN_KAFKA_* variables."""

    from pydantic import ValidationError

    from schemas.connections import ConfigError, KafkaConnection
    from sinks.settings import SiemSettings
    from sinks.siem import compose

    try:
        settings = SiemSettings()
        kafka = KafkaConnection.from_env()
        destinations = compose.destinations(settings)
    except (ValidationError, ConfigError, ValueError) as exc:
        _bad_setting("siem", "SIEM_", exc)
    _check_access("siem", kafka, "siem", [settings.group_id])
    stopping = _role_process(settings.log_level, settings.metrics_port)
    forwarder = compose.forwarder(settings, kafka, destinations, _health("siem"))
    typer.echo(f"procwarden siem: {kafka.describe()} -> "
               f"{', '.join(d.name for d in destinations)} (min level {settings.min_level})",
               err=True)
    try:
        forwarder.run(stopping.is_set)
    finally:
        forwarder.close()


@app.command()
def collector(
    node: Annotated[str | None, typer.Option(help="This node's name (default: hostname)")] = None,
    with_hash: Annotated[bool | None, typer.Option(help="Send the sha256 of every executable")
                         ] = None,
    dry_run: Annotated[bool | None, typer.Option(help="Sense and report; never kill or deny")
                       ] = None,
) -> None:
    """Watch this node's execs (process connector + /proc), tag them with their workload,
    publish them and enforce this node's verdicts: kill blocked processes, hold the execs of
    Protect containers until they are judged. Needs root. Settings: COLLECTOR_* and
    PROCWARDEN_KAFKA_* variables (options override them)."""
    from pydantic import ValidationError

    from collectors.agent import CannotGoOn, Collector
    from collectors.settings import CollectorSettings
    from schemas.connections import ConfigError, KafkaConnection

    overrides: dict[str, Any] = {k: v for k, v in {
        "node": node, "with_hash": with_hash, "dry_run": dry_run}.items() if v is not None}
    from procwarden.keys import local_keyring, local_keyring_path
    from transport.keyfile import KeyFile

    try:
        settings = CollectorSettings.model_validate(overrides)
        kafka = KafkaConnection.from_env()
        # Re-read as it is rotated, without a restart (docs/keys.md). One machine: the node's
        # keys from the keyring beside the stream app's.
        every = settings.keys_check_interval_s
        if settings.signing_keys_file is not None:
            keys = KeyFile.node_file(settings.signing_keys_file, settings.node,
                                     interval_s=every).start()
        else:
            local_keyring()  # made on first use
            keys = KeyFile.node_from_keyring(local_keyring_path(), settings.node,
                                             interval_s=every).start()
    except (ValidationError, ConfigError, ValueError, OSError) as exc:
        _bad_setting("collector", "COLLECTOR_", exc)
    stopping = _role_process(settings.log_level, settings.metrics_port)
    agent = Collector(kafka, settings, health=_health("collector"), keys=keys)
    typer.echo(f"procwarden collector: node {agent.node}, {kafka.describe()}"
               f"{' (dry run)' if settings.dry_run else ''}, fail mode "
               f"{settings.fail_mode.value}", err=True)
    try:
        agent.run(stopping.is_set)
    except CannotGoOn as exc:
        typer.echo(f"procwarden collector: cannot go on: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def demo(
    down: Annotated[bool, typer.Option(
        "--down", help="Only stop what earlier demos started (the demo is not run)")] = False,
    pace: Annotated[float, typer.Option(help="Seconds to pause between steps")] = 1.0,
) -> None:
    """The main job: bring up the local stack and every role, start a runc "web" container
    and walk Discover -> Monitor -> Protect, then show what ClickHouse and the SIEM got."""
    from procwarden.demo import DemoError, run_demo, tear_down

    try:
        if down:
            tear_down(typer.echo)
        else:
            run_demo(typer.echo, pace=pace)
    except DemoError as exc:
        typer.echo(f"\nprocwarden demo failed: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def up() -> None:
    """Run the local stack and the long-lived roles (stream worker, ClickHouse sink, SIEM
    forwarder, collector watching this host) in the background."""
    from procwarden.roles import Roles
    from procwarden.stack import StackError

    _run_stack("up")
    try:
        Roles().up(lambda m: typer.echo(f"[roles] {m}", err=True))
    except StackError as exc:
        typer.echo(f"procwarden up: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def down(
    stack: Annotated[bool, typer.Option("--stack", help="Stop Kafka and ClickHouse too")] = False,
) -> None:
    """Stop the roles `procwarden up` started (and with --stack, Kafka and ClickHouse)."""
    from procwarden.roles import Roles

    with _stack_errors("down"):
        Roles().down(lambda m: typer.echo(f"[roles] {m}", err=True))
    if stack:
        _run_stack("down")


@app.command()
def status() -> None:
    """The stack, the roles, consumer lag and the latest decisions."""
    from procwarden.status import report

    with _stack_errors("status"):
        typer.echo(report())


from procwarden.policy_cli import policy_app, token_app  # noqa: E402 - light: stdlib, typer

app.add_typer(policy_app, name="policy")
app.add_typer(token_app, name="token")

stack_app = typer.Typer(help="The local single-node stack: Kafka (KRaft) and ClickHouse.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _stack(action: str) -> Stack:
    """The stack from its settings; a bad setting is a one-line error, not a traceback."""
    from pydantic import ValidationError

    from procwarden.stack import Stack

    try:
        return Stack()
    except ValidationError as exc:
        _bad_setting(f"stack {action}", "PROCWARDEN_STACK_", exc)


@contextlib.contextmanager
def _stack_errors(command: str) -> Iterator[None]:
    """A StackError inside is one line on stderr and exit status 1, not a traceback."""
    from procwarden.stack import StackError

    try:
        yield
    except StackError as exc:
        typer.echo(f"procwarden {command}: {exc}", err=True)
        raise typer.Exit(1) from None


def _say(message: str) -> None:
    typer.echo(f"[stack] {message}", err=True)


def _run_stack(action: str) -> None:
    from procwarden.stack import StackError

    stack = _stack(action)
    try:
        getattr(stack, action)(_say)
    except StackError as exc:
        typer.echo(f"procwarden stack {action}: {exc}", err=True)
        typer.echo("  look at: `procwarden stack status`, `procwarden stack logs`", err=True)
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and ClickHouse (installing what is missing), create topics, apply the schema.
    Running it again is harmless."""
    _run_stack("up")
    _print_status("up")


@stack_app.command("down")
def stack_down() -> None:
    """Stop Kafka (controlled shutdown) and ClickHouse. Data stays for the next `up`."""
    _run_stack("down")


@stack_app.command("reset")
def stack_reset(yes: Annotated[bool, typer.Option("--yes", help="Do not ask")] = False) -> None:
    """Stop the stack and delete all its data."""
    if not yes and not typer.confirm("Delete all Kafka and ClickHouse data of the local stack?"):
        raise typer.Exit(1)
    _run_stack("reset")


def _print_status(action: str) -> bool:
    stack = _stack(action)
    status = stack.status()
    for line in status.lines(stack):
        typer.echo(line)
    return status.up


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka and ClickHouse are running and serving. Exit 1 unless both are."""
    if not _print_status("status"):
        raise typer.Exit(1)


@stack_app.command("add-node")
def stack_add_node(
    name: Annotated[str, typer.Argument(help="The collector node's name (its --node)")],
) -> None:
    """Give a collector node its Kafka identity on the running stack: a SCRAM user node-NAME
    (password kept in the stack's state folder) and its ACLs. Prints the settings it runs with."""
    stack = _stack("add-node")
    with _stack_errors("stack add-node"):
        stack.add_node(name, _say)
    from procwarden.stack.credentials import node_principal

    for key, value in stack.kafka.environment(node_principal(name)).items():
        typer.echo(f"{key}={value}")


@stack_app.command("remove-node")
def stack_remove_node(
    name: Annotated[str, typer.Argument(help="The collector node's name (its --node)")],
) -> None:
    """Revoke a collector node's Kafka identity on the running stack: its ACLs are deleted and
    its SCRAM password replaced by one nobody is told, so it can no longer log in."""
    stack = _stack("remove-node")
    with _stack_errors("stack remove-node"):
        stack.remove_node(name, _say)


kafka_app = typer.Typer(help="Kafka identities and ACLs, for the local stack or an existing "
                             "cluster (docs/kafka-security.md).", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")


@kafka_app.command("acls")
def kafka_acls(
    apply: Annotated[bool, typer.Option("--apply", help="Create the missing ACLs (as the "
                                        "PROCWARDEN_KAFKA_* identity, a super user)")] = False,
    node: Annotated[list[str] | None, typer.Option(
        "--node", help="A collector node (repeat; default: the local stack's nodes)")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Against the local stack, as its admin (default: PROCWARDEN_KAFKA_*)")
    ] = False,
) -> None:
    """Print procwarden's ACL set (topic prefix from PROCWARDEN_KAFKA_TOPIC_PREFIX, groups from
    the roles' settings); with --apply, create what the cluster lacks. Removes nothing."""
    from procwarden.stack import StackError
    from procwarden.stack.acls import acl_set, apply_acls, describe_binding
    from schemas.connections import ConfigError, KafkaConnection

    stack = _stack("kafka acls")
    try:
        conn = stack.kafka_connection if local else KafkaConnection.from_env()
    except ConfigError as exc:
        typer.echo(f"procwarden kafka acls: {exc}", err=True)
        raise typer.Exit(2) from None
    nodes = node or stack.nodes()
    acls = acl_set(conn.topic_prefix, nodes, stack.groups())
    for binding in acls:
        typer.echo(describe_binding(binding))
    if not apply:
        return
    try:
        plan = apply_acls(conn, acls)
    except StackError as exc:
        typer.echo(f"procwarden kafka acls: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{conn.describe()}: {len(plan.created)} created, {len(plan.present)} there, "
               f"{len(plan.extra)} others on the cluster left alone", err=True)
    for binding in plan.extra:
        typer.echo(f"  not procwarden's: {describe_binding(binding)}", err=True)


@stack_app.command("logs")
def stack_logs() -> None:
    """Where the servers write their logs."""
    for name, path in _stack("logs").logs().items():
        typer.echo(f"{name:18} {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
