"""The policy API's HTTP layer (streams/web/routes.py) on Faust's own aiohttp server, over a real
PolicyApi whose policy-updates loop back to its own group writer: each role gets what it may and
no more, changes are recorded under the token's name, every response carries the security
headers, Faust's views are closed, Host is checked when reads are open, internal errors tell
nothing of the inside, and the server listens where and how the settings say (issue 22)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from schemas import decode_envelope
from schemas.topics import POLICY_UPDATES
from streams.settings import StreamSettings
from streams.web.api_tokens import add_token, revoke_token
from streams.web.routes import SECURITY_HEADERS, install_routes, web_options
from streams.web.security_events import SecurityEvents, SecurityEventsError
from tests.unit.test_policy_import import CRD, _api

Client = TestClient[Any, Any]
GROUP = {"config": {"name": "tools", "criteria": [{"key": "namespace", "op": "=",
                                                     "value": "demo"}]}}
RULE = {"process_profile_config": {"process_change_list": [
    {"name": "ls", "path": "/bin/ls", "action": "allow"}]}}
MODE = {"config": {"services": ["nodes"], "profile_mode": "Monitor"}}


def _settings(tmp_path: Path, **given: Any) -> StreamSettings:
    return StreamSettings(data_dir=tmp_path, api_tokens_file=tmp_path / "tokens.json", **given)


_API: list[Any] = []  # the PolicyApi the last app serves


def _app(settings: StreamSettings) -> tuple[faust.App, Any]:
    api, out = _api()
    _API[:] = [api]
    app = faust.App("t-web", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, **web_options(settings))
    install_routes(app, api, settings)
    app.web.init_server()  # what the worker does before it serves: Faust's views mount here
    return app, out


def _serve(settings: StreamSettings,
           test: Callable[[Client, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        app, out = _app(settings)
        async with TestClient(TestServer(app.web.web_app)) as client:  # type: ignore[attr-defined]
            await test(client, out)
    asyncio.run(main())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _actors(out: Any) -> list[str | None]:
    return [getattr(decode_envelope(value).payload, "actor", None) for topic, _, value in out.sent
            if topic == POLICY_UPDATES.name and value is not None]


def _refused(why: str) -> float:
    return REGISTRY.get_sample_value("procwarden_streams_api_refused_total", {"why": why}) or 0


def test_each_role_gets_what_it_may_and_changes_carry_the_tokens_name(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    tokens = {role: add_token(tmp_path / "tokens.json", f"{role}-1", role)
              for role in ("viewer", "operator", "admin")}

    tokens_before, roles_before = _refused("token"), _refused("role")

    async def test(c: Client, out: Any) -> None:
        async def status(method: str, path: str, role: str, **kw: Any) -> int:
            resp = await c.request(method, path, headers=_bearer(tokens[role]), **kw)
            return resp.status

        for role in tokens:
            assert await status("GET", "/v1/process_profile", role) == 200
            assert await status("GET", "/v1/group", role) == 200
        # viewer: reads only
        assert await status("PATCH", "/v1/process_profile/nodes", "viewer", json=RULE) == 403
        assert await status("PATCH", "/v1/service/config", "viewer", json=MODE) == 403
        # operator: modes and rules, never groups, CRDs
        assert await status("PATCH", "/v1/process_profile/nodes", "operator", json=RULE) == 200
        assert await status("PATCH", "/v1/service/config", "operator", json=MODE) == 200
        assert _actors(out) == ["operator-1", "operator-1"]
        assert await status("POST", "/v1/group", "operator", json=GROUP) == 403
        assert await status("POST", "/v1/policy/import", "operator", data=CRD) == 403
        # admin: all of it
        assert await status("POST", "/v1/group", "admin", json=GROUP) == 200
        assert await status("PATCH", "/v1/group/tools", "operator", json=GROUP) == 403
        assert await status("DELETE", "/v1/group/tools", "operator") == 403
        assert await status("DELETE", "/v1/group/tools", "admin") == 200
        assert await status("POST", "/v1/policy/import", "admin", data=CRD) == 200
        assert set(_actors(out)[2:]) == {"admin-1"}
        resp = await c.post("/v1/group", json=GROUP, headers=_bearer(tokens["viewer"]))
        assert "viewer" in (await resp.json())["message"]
        # a wrong token, a token of another scheme, none: 401
        for headers in (_bearer(tokens["admin"] + "x"), {"Authorization": tokens["admin"]}, {}):
            assert (await c.get("/v1/process_profile", headers=headers)).status == 401
        assert (_refused("token"), _refused("role")) == (tokens_before + 3, roles_before + 7)
        # revoked: refused at the next call, no restart
        assert revoke_token(tmp_path / "tokens.json", "admin-1")
        assert (await c.get("/v1/group", headers=_bearer(tokens["admin"]))).status == 401
    _serve(settings, test)


def test_the_env_token_is_an_admin_named_env(tmp_path: Path) -> None:
    async def test(c: Client, out: Any) -> None:
        assert (await c.post("/v1/group", json=GROUP, headers=_bearer("legacy"))).status == 200
        assert _actors(out) == ["env"]
    _serve(_settings(tmp_path, api_token="legacy"), test)


def test_security_headers_on_every_response(tmp_path: Path) -> None:
    async def test(c: Client, out: Any) -> None:
        for path, token in (("/v1/process_profile", "t"), ("/v1/process_profile", None),
                            ("/v1/process_profile/nope", "t"), ("/console", None),
                            ("/console/app.js", None), ("/console/nope", None),
                            ("/ready", None), ("/metrics", None), ("/nope", None)):
            resp = await c.get(path, headers=_bearer(token) if token else {})
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers.get(name) == value, (path, name, resp.status)
    _serve(_settings(tmp_path, api_token="t"), test)


def test_the_csp_allows_what_the_console_loads() -> None:
    html = (Path(__file__).resolve().parents[2] / "streams/web/console/index.html").read_text()
    # The page loads only same-origin files and carries no inline script or style for the
    # policy to refuse.
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    assert "script-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/router/", "/table/", "/graph/", "/stats/", "/",
                                  "/performance/"])
def test_faust_views_are_not_served(tmp_path: Path, path: str) -> None:
    async def test(c: Client, out: Any) -> None:
        assert (await c.get(path)).status == 404
        assert (await c.get(path, headers=_bearer("t"))).status == 404
    _serve(_settings(tmp_path, api_token="t", open_reads=True), test)


@pytest.mark.parametrize(("host", "status"), [
    ("evil.example", 403), ("evil.example:6066", 403), ("127.0.0.1.evil.example", 403),
    ("", 403), ("127.0.0.1:6066", 200), ("localhost", 200), ("LOCALHOST:80", 200),
    ("[::1]:6066", 200), ("console.internal", 200)])
def test_host_is_checked_when_reads_are_open(tmp_path: Path, host: str, status: int) -> None:
    settings = _settings(tmp_path, open_reads=True, api_allowed_hosts="console.internal")

    async def test(c: Client, out: Any) -> None:
        assert (await c.get("/v1/process_profile", headers={"Host": host})).status == status
        assert (await c.get("/console", headers={"Host": host})).status == status
        assert (await c.get("/ready", headers={"Host": host})).status in (200, 503)
    _serve(settings, test)


def test_an_internal_error_answers_an_id_and_logs_the_detail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path, api_token="t")

    async def test(c: Client, out: Any) -> None:
        def boom() -> Any:
            raise RuntimeError("secret default@clickhouse:9000/procwarden")
        _API[0].status = boom
        resp = await c.get("/v1/status", headers=_bearer("t"))
        body = await resp.json()
        assert resp.status == 500 and "secret" not in await resp.text()
        assert body["error_id"] in body["message"]
        assert any(body["error_id"] in r.getMessage() and r.exc_info for r in caplog.records)
    with caplog.at_level(logging.ERROR, "procwarden.streams.api"):
        _serve(settings, test)


def test_clickhouse_errors_do_not_reach_the_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PROCWARDEN_CLICKHOUSE_HOST", "127.0.0.1")

    async def failing(self: SecurityEvents, params: Any) -> Any:
        raise SecurityEventsError(503, "ClickHouse at default@127.0.0.1:9000/procwarden cannot "
                                       "be read: Code: 69")
    monkeypatch.setattr(SecurityEvents, "query", failing)

    async def test(c: Client, out: Any) -> None:
        resp = await c.get("/v1/security_events", headers=_bearer("t"))
        text = await resp.text()
        assert resp.status == 503 and "@" not in text and "9000" not in text
        assert "error id" in text
        assert any("default@127.0.0.1" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.ERROR, "procwarden.streams.api"):
        _serve(_settings(tmp_path, api_token="t"), test)


@pytest.mark.parametrize("value", ["1e300", "-1e300", "inf", "-inf", "nan", "-1", "5e9", "x"])
def test_since_and_until_are_bounded_numbers(value: str) -> None:
    from schemas.connections import ClickHouseConnection
    events = SecurityEvents(ClickHouseConnection())
    for key in ("since", "until"):
        with pytest.raises(SecurityEventsError) as err:
            events.sql({key: value})
        assert err.value.status == 400 and key in str(err.value)
    assert events.sql({"since": "1700000000.5"})[1]["since"] == 1700000000


def test_the_server_listens_on_127_0_0_1_by_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert StreamSettings().web_host == "127.0.0.1"
    app, _ = _app(settings)
    assert app.conf.web_bind == "127.0.0.1"

    async def main() -> tuple[str, int]:
        web = app.web
        await web._runner.setup()  # type: ignore[attr-defined]
        site = web._new_transport_tcp()  # type: ignore[attr-defined] # Faust's own listener
        await site.start()
        try:
            return site._server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]
        finally:
            await web._runner.cleanup()  # type: ignore[attr-defined]
    assert asyncio.run(main())[0] == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tls_serves_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    settings = _settings(tmp_path, web_tls_cert=cert, web_tls_key=key, api_token="t",
                         web_port=_free_port())
    app, _ = _app(settings)

    async def main() -> None:
        web = app.web
        await web._runner.setup()  # type: ignore[attr-defined]
        site = web._new_transport_tcp()  # type: ignore[attr-defined]
        await site.start()
        try:
            context = ssl.create_default_context(cafile=str(cert))
            async with ClientSession() as session:
                url = f"https://127.0.0.1:{settings.web_port}/v1/status"
                async with session.get(url, ssl=context, headers=_bearer("t")) as resp:
                    assert resp.status == 200
                with pytest.raises(Exception):  # noqa: B017 - plain HTTP gets no answer
                    async with session.get(url.replace("https", "http")) as resp:
                        assert resp.status != 200
        finally:
            await web._runner.cleanup()  # type: ignore[attr-defined]
    asyncio.run(main())
    with pytest.raises(ValueError):
        StreamSettings(web_tls_cert=cert)


def test_a_body_over_the_limit_is_a_json_413_and_the_api_reads_past_aiohttps_cap(
        tmp_path: Path) -> None:
    """Before: aiohttp's own 1 MiB cap answered a text/plain 413 before the API's checks, so
    STREAMS_MAX_CRD_BYTES above 1 MiB had no effect and the answer was not the API's."""
    from streams.web.routes import body_limit

    settings = _settings(tmp_path, api_token="t")

    async def test(c: Client, out: Any) -> None:
        # 1.5 MiB: over aiohttp's default cap, under the body limit: read, and answered by the
        # API's own CRD check (the test's API has the default 1 MiB max_crd_bytes).
        text = b"#" * (3 * 512 * 1024)
        r = await c.post("/v1/policy/import", data=io.BytesIO(text), headers=_bearer("t"))
        assert r.status == 413 and r.content_type == "application/json", await r.text()
        assert "the documents are over the 1048576-byte limit" in (await r.json())["message"]
        huge = b"#" * (body_limit(settings) + 1)
        r = await c.post("/v1/policy/import", data=io.BytesIO(huge), headers=_bearer("t"))
        assert r.status == 413 and r.content_type == "application/json"
        body = await r.json()
        assert body["code"] == 413 and str(body_limit(settings)) in body["message"]
        r = await c.post("/v1/dry-run", data=io.BytesIO(huge), headers=_bearer("t"))
        assert r.status == 413 and (await r.json())["code"] == 413
    _serve(settings, test)
