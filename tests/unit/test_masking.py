"""Masking secrets in command lines (schemas/masking.py): case by case, and properties."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.masking import MASK, mask_argv, mask_cmdline

M = MASK
CASES: dict[str, tuple[tuple[str, ...], str]] = {
    # What it masked before the broader patterns, unchanged.
    "flag=value": (("app", "--password=hunter2"), f"app --password={M}"),
    "flag value": (("app", "--api-token", "abc", "--port", "80"),
                   f"app --api-token {M} --port 80"),
    "env style": (("env", "AWS_SECRET_ACCESS_KEY=x", "run"), f"env AWS_SECRET_ACCESS_KEY={M} run"),
    "case insensitive": (("app", "-PWD", "x"), f"app -PWD {M}"),
    "harmless": (("ls", "-la", "/tmp"), "ls -la /tmp"),
    "passwd": (("app", "--passwd", "x"), f"app --passwd {M}"),
    "secret=": (("app", "client_secret=x"), f"app client_secret={M}"),
    # The broader patterns (issue 21).
    "mysql -pSECRET": (("mysql", "-uroot", "-pS3cret", "db"), f"mysql -uroot -p{M} db"),
    "mysql -p SECRET": (("mysql", "-u", "root", "-p", "S3cret"), f"mysql -u root -p {M}"),
    "mysql by path": (("/usr/bin/mysqldump", "-pS3cret"), f"/usr/bin/mysqldump -p{M}"),
    "mysql after sudo": (("sudo", "mysql", "-pS3cret"), f"sudo mysql -p{M}"),
    "mariadb": (("mariadb", "-pS3cret"), f"mariadb -p{M}"),
    "mongo -p": (("mongo", "-u", "admin", "-p", "S3cret"), f"mongo -u admin -p {M}"),
    "sshpass -p": (("sshpass", "-p", "S3cret", "ssh", "-p", "22", "host"),
                   f"sshpass -p {M} ssh -p 22 host"),
    "sshpass -pSECRET": (("sshpass", "-pS3cret", "ssh", "host"), f"sshpass -p{M} ssh host"),
    "curl -u": (("curl", "-u", "user:pw", "https://x/"), f"curl -u user:{M} https://x/"),
    "curl -uuser:pw": (("curl", "-uuser:pw", "https://x/"), f"curl -uuser:{M} https://x/"),
    "curl --user=": (("curl", "--user=user:pw", "x"), f"curl --user=user:{M} x"),
    "curl --proxy-user": (("curl", "--proxy-user", "u:pw", "x"), f"curl --proxy-user u:{M} x"),
    "curl -u user only": (("curl", "-u", "user", "x"), "curl -u user x"),
    "bearer header": (("curl", "-H", "Authorization: Bearer abc.def", "x"),
                      f"curl -H Authorization: Bearer {M} x"),
    "basic header": (("curl", "-H", "authorization: Basic dXNlcjpwdw==", "x"),
                     f"curl -H authorization: Basic {M} x"),
    "api key header": (("curl", "-H", "X-Api-Key: abc", "x"), f"curl -H X-Api-Key: {M} x"),
    "bare bearer": (("tool", "Bearer", "abc"), f"tool Bearer {M}"),
    "url user-info": (("psql", "postgres://app:S3cret@db:5432/app"),
                      f"psql postgres://app:{M}@db:5432/app"),
    "url in a value": (("tool", "--url=https://u:pw@h/x"), f"tool --url=https://u:{M}@h/x"),
    "url token user-info": (("git", "clone", "https://ghp_0123456789abcdefghij@github.com/a/b"),
                            f"git clone https://{M}@github.com/a/b"),
    "url short user kept": (("git", "clone", "ssh://git@github.com/a/b"),
                            "git clone ssh://git@github.com/a/b"),
    "url without user-info": (("curl", "https://host:8443/a@b"), "curl https://host:8443/a@b"),
    "--db-pass=": (("app", "--db-pass=S3cret"), f"app --db-pass={M}"),
    "--db-pass value": (("app", "--db-pass", "S3cret"), f"app --db-pass {M}"),
    "redis-cli -a": (("redis-cli", "-h", "r", "-a", "S3cret", "ping"),
                     f"redis-cli -h r -a {M} ping"),
    "TOKEN=": (("env", "TOKEN=abc", "run"), f"env TOKEN={M} run"),
    "PAT=": (("env", "PAT=abc", "GITHUB_PAT=def", "run"), f"env PAT={M} GITHUB_PAT={M} run"),
    "PATH= kept": (("env", "PATH=/bin", "run"), "env PATH=/bin run"),
    "a value with spaces": (("app", "--password", "two words"), f"app --password {M}"),
    "port flags elsewhere kept": (("ssh", "-p", "22", "host"), "ssh -p 22 host"),
    "mkdir -p kept": (("mkdir", "-p", "/tmp/x"), "mkdir -p /tmp/x"),
    # Inside a shell script: the same rules, word by word.
    "sh -c mysql": (("sh", "-c", "cd /x && mysql -uroot -pS3cret -e 'select 1'"),
                    f"sh -c cd /x && mysql -uroot -p{M} -e 'select 1'"),
    "sh -c separator ends the program": (("sh", "-c", "mysql -pX; ssh -p 22 h"),
                                         f"sh -c mysql -p{M}; ssh -p 22 h"),
    "sh -c quoted value": (("sh", "-c", "export TOKEN='abc'; run"),
                           f"sh -c export TOKEN={M}'; run"),
    "sh -c curl header": (("sh", "-c", "curl -H 'Authorization: Bearer abc' x"),
                          f"sh -c curl -H 'Authorization: Bearer {M}' x"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_mask(case: tuple[tuple[str, ...], str]) -> None:
    argv, expected = case
    assert mask_cmdline(argv) == expected
    assert mask_cmdline(mask_argv(argv)) == expected  # idempotent


def test_mask_argv_keeps_the_arguments_apart() -> None:
    assert mask_argv(("mysql", "-p", "a b", "x")) == ("mysql", "-p", M, "x")
    assert mask_argv(()) == ()
    assert mask_argv(("curl", "-H", "Authorization: Bearer t")) == (
        "curl", "-H", f"Authorization: Bearer {M}")


@pytest.mark.parametrize("size", [128 * 1024])
@pytest.mark.parametrize("shape", ["a", "a:", "a://", "-p", "x=", " ", "://@:"])
def test_linear_time_on_hostile_arguments(size: int, shape: str) -> None:
    """Arguments of the kernel's largest size, made of what the patterns look for: well under a
    second each (a backtracking pattern takes minutes on some of them)."""
    arg = shape * (size // len(shape))
    start = time.perf_counter()
    mask_argv(("mysql", arg, arg, "curl", "-u", arg))
    assert time.perf_counter() - start < 2.0


_PIECES = [*"ab:/@=-pPuaT_ \t'\";&|\x00é", "://", "mysql", "curl", "redis-cli", "sshpass",
           "Bearer", "Authorization:", "TOKEN", "-p", "-u", "-a", "--password", "=", "https"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=16).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.text(max_size=20)), max_size=8))
def test_masking_never_raises_is_idempotent_and_bounded(argv: list[str]) -> None:
    masked = mask_argv(argv)
    assert len(masked) == len(argv)
    for before, after in zip(argv, masked, strict=True):
        assert len(after) <= 7 * len(before) + len(M)
    assert mask_argv(masked) == masked


def test_a_probe_with_a_secret_still_matches_its_masked_exec() -> None:
    """The collector publishes a probe's exec masked; the engine knows it in both forms."""
    from streams.engine.probes import probe_commands

    probe = ("mysqladmin", "ping", "-pS3cret")
    known = probe_commands([probe])
    assert probe in known and mask_argv(probe) in known
