"""`procwarden`: the command line. Each subcommand imports only the role it runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="procwarden",
    help="Process profile rules (NeuVector-style) as an event-streaming pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """procwarden learns which processes each group of containers runs, then alerts on or blocks
    anything else."""


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
    from streams.replay import dumps, load_policy_file, replay
    from streams.replay import explain as explain_line
    from streams.session import DecisionSession

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
        stream = sys.stdin if str(events) == "-" else events.open()
    except OSError as exc:
        typer.echo(f"procwarden decide: {exc}", err=True)
        raise typer.Exit(2) from None
    failures = 0
    with stream:
        for item in replay(session, stream):
            failures += not item.ok
            typer.echo(explain_line(session, item) if explain else dumps(item.output))
    if failures:
        typer.echo(f"procwarden decide: {failures} line(s) failed or were rejected", err=True)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
