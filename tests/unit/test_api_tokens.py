"""The API's token file (streams/web/api_tokens.py) and `procwarden token`: secrets never at rest,
the file never readable by others for an instant whatever the umask, a readable file refused,
and the node's generated legacy token written the same way (issue 22)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from procwarden.cli import app as cli_app
from procwarden.roles import Roles
from streams.web.api_tokens import (
    TokenError,
    TokenStore,
    add_token,
    list_tokens,
    revoke_token,
)


@pytest.fixture
def modes_written(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Under umask 000: the permission bits of every file at the moment bytes went into it."""
    seen: list[int] = []
    real_write, real_write_text = os.write, Path.write_text

    def write(fd: int, data: bytes) -> int:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    def write_text(self: Path, *args: object, **kwargs: object) -> int:
        n = real_write_text(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(stat.S_IMODE(self.stat().st_mode))
        return n

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(Path, "write_text", write_text)
    old = os.umask(0)
    try:
        yield seen
    finally:
        os.umask(old)


def test_the_token_file_is_never_readable_by_others(tmp_path: Path,
                                                    modes_written: list[int]) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice", "operator")
    add_token(path, "bob", "viewer")
    revoke_token(path, "bob")
    assert modes_written and all(m == 0o600 for m in modes_written), modes_written
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_generated_legacy_token_is_never_readable_by_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modes_written: list[int]) -> None:
    monkeypatch.delenv("STREAMS_API_TOKEN", raising=False)
    token = Roles(tmp_path).api_token
    assert modes_written and all(m == 0o600 for m in modes_written), modes_written
    assert stat.S_IMODE((tmp_path / "api-token").stat().st_mode) == 0o600
    assert Roles(tmp_path).api_token == token  # made once


def test_secrets_are_stored_hashed_and_looked_up_by_name(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    secret = add_token(path, "alice", "operator")
    assert secret not in path.read_text() and len(secret) >= 40
    store = TokenStore(path)
    found = store.lookup(secret)
    assert found is not None and (found.name, found.role) == ("alice", "operator")
    assert store.lookup(secret[:-1]) is None and store.lookup("") is None
    assert [t.name for t in list_tokens(path)] == ["alice"]
    with pytest.raises(TokenError):
        add_token(path, "alice", "admin")  # a name is one token
    for name, role in (("env", "admin"), ("a b", "admin"), ("x" * 65, "admin"), ("c", "root")):
        with pytest.raises(TokenError):
            add_token(path, name, role)
    assert revoke_token(path, "alice") and not revoke_token(path, "alice")
    assert store.lookup(secret) is None


def test_a_file_others_can_read_is_not_loaded(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.json"
    secret = add_token(path, "alice", "admin")
    path.chmod(0o644)
    with caplog.at_level(logging.ERROR, "procwarden.streams.api"):
        assert TokenStore(path).lookup(secret) is None
    assert "chmod 600" in caplog.text
    path.write_text("not json")
    path.chmod(0o600)
    assert TokenStore(path, "env-secret").lookup("env-secret") is not None  # env still works


def test_the_token_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.json"
    monkeypatch.setenv("STREAMS_API_TOKENS_FILE", str(path))
    runner = CliRunner()
    added = runner.invoke(cli_app, ["token", "add", "ci-bot", "--role", "operator"])
    assert added.exit_code == 0, added.output
    secret = added.output.strip().splitlines()[0]
    assert TokenStore(path).lookup(secret) is not None
    listed = runner.invoke(cli_app, ["token", "list"])
    assert "ci-bot" in listed.output and "operator" in listed.output
    assert secret not in listed.output
    assert runner.invoke(cli_app, ["token", "add", "x", "--role", "root"]).exit_code != 0
    assert runner.invoke(cli_app, ["token", "revoke", "ci-bot"]).exit_code == 0
    assert runner.invoke(cli_app, ["token", "revoke", "ci-bot"]).exit_code != 0
    assert TokenStore(path).lookup(secret) is None
