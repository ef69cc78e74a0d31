"""`procwarden up/down/status` read the stream worker's settings for its API port: a bad one is
one line naming the variable and exit 1, not a pydantic traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from collectors.settings import CollectorSettings
from sinks.settings import SiemSettings, SinkSettings
from streams.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["down", "status"])
def test_a_bad_stream_setting_is_one_line(command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "procwarden.cli", command], cwd=ROOT,
                          env={**os.environ, "STREAMS_WEB_PORT": "nope"}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"procwarden {command}: STREAMS_WEB_PORT: Input should be a valid integer, "
                     "unable to parse string as an integer"], done.stderr


@pytest.mark.parametrize("prefix", ["COLLECTOR", "STREAMS", "SINKS", "SIEM"])
def test_a_log_level_is_one_of_the_levels_in_any_case(
        prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    roles: dict[str, type[BaseSettings]] = {
        "COLLECTOR": CollectorSettings, "STREAMS": StreamSettings, "SINKS": SinkSettings,
        "SIEM": SiemSettings}
    settings = roles[prefix]
    monkeypatch.setenv(f"{prefix}_LOG_LEVEL", "WARNING")
    assert settings().model_dump()["log_level"] == "warning"
    monkeypatch.setenv(f"{prefix}_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="log_level"):
        settings()


def test_the_policy_cli_names_a_bad_api_variable_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "procwarden.cli", "policy", "get", "web"],
                          cwd=ROOT, env={**os.environ, "PROCWARDEN_API_URL": "ftp://api:6066"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "procwarden policy: PROCWARDEN_API_URL: must start with http:// or https://, "
        "got 'ftp://api:6066'"]
