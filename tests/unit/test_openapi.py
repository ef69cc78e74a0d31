"""The OpenAPI document (streams/web/openapi.py, served at /v1/openapi.json), the routes streams/web/routes.py
installs and docs/api.md hold together: the same operations in all three, each with the role the
server enforces, and every answer of real calls through the web layer is what the document says
it is (issue 23)."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

import faust
import pytest
from aiohttp import ClientResponse
from faust.web import Request, Response, View
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from schemas import Envelope, Workload, WorkloadKind, decode_envelope
from streams.web.api_tokens import ROLES, add_token, role_allows
from streams.web.openapi import CONSOLE_ASSETS, document
from streams.web.routes import _ASSETS, SECURITY_HEADERS, _served
from streams.web.security_events import COLUMNS, SecurityEvents
from tests.unit.test_api_web import (
    _API,
    GROUP,
    MODE,
    RULE,
    Client,
    _app,
    _bearer,
    _serve,
    _settings,
)
from tests.unit.test_policy_import import CRD

ROOT = Path(__file__).resolve().parents[2]
API_MD = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
# `### `GET /v1/group/{name}` (viewer)`: one heading per operation, with its least role.
_HEADING = re.compile(r"^### `([A-Z]+) (/\S*)` \((\w+)\)$", re.MULTILINE)


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in document()["paths"].items()
            for method, op in item.items() if method in METHODS}


def _routes(app: faust.App) -> set[tuple[str, str]]:
    """What the web app answers: the served paths' methods, less the HEAD Faust adds to every
    view (a GET without its body; the document says so once)."""
    return {(r.method, r.resource.canonical)  # type: ignore[union-attr]
            for r in app.web.web_app.router.routes()  # type: ignore[attr-defined]
            if r.method != "HEAD" and _served(r.resource.canonical)}  # type: ignore[union-attr]


def _route_mismatch(app: faust.App) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served but not documented, documented but not served)."""
    served, documented = _routes(app), set(_operations())
    return served - documented, documented - served


def _docs_mismatch(text: str) -> tuple[set[Any], set[Any]]:
    """(operations in the document that api.md lacks or gives another role, and the reverse)."""
    in_doc = {(m, p, op["x-procwarden-role"]) for (m, p), op in _operations().items()}
    in_md = set(_HEADING.findall(text))
    return in_doc - in_md, in_md - in_doc


def test_every_route_is_documented_and_every_operation_is_routed(tmp_path: Path) -> None:
    app, _ = _app(_settings(tmp_path))
    assert len(_routes(app)) >= 20  # guards against introspecting nothing
    assert _route_mismatch(app) == (set(), set())


def test_a_route_added_without_its_operation_is_caught(tmp_path: Path) -> None:
    app, _ = _app(_settings(tmp_path))

    @app.page("/v1/extra")
    class Extra(View):
        async def post(self, request: Request) -> Response:
            return self.json({})
    assert _route_mismatch(app) == ({("POST", "/v1/extra")}, set())


def test_api_md_has_every_operation_with_its_role_and_no_other() -> None:
    text = API_MD.read_text()
    assert len(_HEADING.findall(text)) >= 20
    assert _docs_mismatch(text) == (set(), set())
    # and would say so if one went missing
    first = _HEADING.search(text)
    assert first is not None
    assert _docs_mismatch(text.replace(first.group(0), ""))[0] == {first.groups()}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on an invalid document
    for (method, path), op in _operations().items():
        assert op["x-procwarden-role"] in (*ROLES, "none"), (method, path)
        assert f"`{op['x-procwarden-role']}`" in op["description"] or op[
            "x-procwarden-role"] == "none", (method, path)
        assert (op["security"] == []) is (op["x-procwarden-role"] == "none"), (method, path)
        for answer in op["responses"].values():
            for media in answer.get("content", {}).values():
                _validator(media["schema"])  # every schema is itself valid


def test_the_console_files_are_the_documented_ones() -> None:
    assert set(_ASSETS) == set(CONSOLE_ASSETS)


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    root = schema | {"components": document()["components"]}  # refs are #/components/...
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


async def _checked(resp: ClientResponse, method: str, path: str) -> int:
    """The answer is one the document lists for this operation, with its body's schema."""
    op = _operations()[(method, path)]
    status = str(resp.status)
    assert status in op["responses"], (method, path, status, await resp.text())
    content = op["responses"][status].get("content", {})
    assert resp.content_type in content, (method, path, status, resp.content_type)
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, (method, path, name)
    for header in op["responses"][status].get("headers", {}):
        assert header in resp.headers, (method, path, status, header)
    if resp.content_type == "application/json":
        body = await resp.json()
        errors = sorted(_validator(content["application/json"]["schema"]).iter_errors(body),
                        key=str)
        assert not errors, (method, path, status, [e.message for e in errors[:3]], body)
    return resp.status


WORKLOAD = Workload(id="c0ffee01", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
                    image="busybox:1.36", namespace="demo", service="web")
HOST = Workload(id="host-node-1", kind=WorkloadKind.HOST, node="node-1", name="node-1")
EXEC = {"schema_version": 1, "event_id": "e1", "node": "node-1", "cluster": "demo",
        "ts": 1700000001.0, "kind": "exec",
        "payload": {"workload_id": "c0ffee01", "pid": 101, "ppid": 1, "pgid": 1,
                    "path": "/bin/busybox", "name": "httpd", "argv": ["httpd", "-f"],
                    "user": "www-data", "euid": 33, "ruid": 33}}
ROW = tuple(dt.datetime(2026, 12, 7, 12, 0) if c == "ts" else
            7 if c in ("proc_real_uid", "proc_effective_uid", "count") else
            1 if c == "conn_ingress" else f"{c}-x" for c in COLUMNS)

# One call of each operation (path template, real path, request); the writes of a group come
# before its deletion. Each is made with no token, then a token of each role, lowest first.
CALLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/v1/process_profile", "/v1/process_profile", {}),
    ("GET", "/v1/process_profile/{group}", "/v1/process_profile/nv.web.demo", {}),
    ("PATCH", "/v1/process_profile/{group}", "/v1/process_profile/nodes", {"json": RULE}),
    ("GET", "/v1/process_rules/{uuid}", "/v1/process_rules/{uuid}", {}),
    ("GET", "/v1/workload/{wid}/process_profile", "/v1/workload/c0ffee01/process_profile", {}),
    ("GET", "/v1/host/{wid}/process_profile", "/v1/host/host-node-1/process_profile", {}),
    ("PATCH", "/v1/service/config", "/v1/service/config", {"json": MODE}),
    ("POST", "/v1/group", "/v1/group", {"json": GROUP}),
    ("GET", "/v1/group", "/v1/group", {}),
    ("GET", "/v1/group/{name}", "/v1/group/tools", {}),
    ("PATCH", "/v1/group/{name}", "/v1/group/tools", {"json": GROUP}),
    ("DELETE", "/v1/group/{name}", "/v1/group/tools", {}),
    ("POST", "/v1/policy/import", "/v1/policy/import", {"data": CRD}),
    ("POST", "/v1/dry-run", "/v1/dry-run", {"json": {"event": EXEC}}),
    ("GET", "/v1/status", "/v1/status", {}),
    ("GET", "/v1/workload", "/v1/workload", {}),
    ("GET", "/v1/security_events", "/v1/security_events", {"params": {"limit": "5"}}),
    ("GET", "/v1/openapi.json", "/v1/openapi.json", {}),
    ("GET", "/console", "/console", {}),
    ("GET", "/console/{asset}", "/console/app.js", {}),
    ("GET", "/ready", "/ready", {}),
    ("GET", "/metrics", "/metrics", {}),
]
# Answers other than 200 that the document must describe too.
FAILING: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("GET", "/v1/group/{name}", "/v1/group/nope", {}, 404),
    ("GET", "/v1/process_rules/{uuid}", "/v1/process_rules/nope", {}, 404),
    ("GET", "/v1/workload/{wid}/process_profile", "/v1/workload/host-node-1/process_profile",
     {}, 404),
    ("PATCH", "/v1/process_profile/{group}", "/v1/process_profile/nodes",
     {"json": RULE, "headers": {"If-Match": '"999"'}}, 412),
    ("PATCH", "/v1/process_profile/{group}", "/v1/process_profile/nodes",
     {"json": {"process_profile_config": {"process_change_list": [{"name": "ls"}]}}}, 400),
    ("PATCH", "/v1/process_profile/{group}", "/v1/process_profile/nodes", {"data": b"{"}, 400),
    ("POST", "/v1/group", "/v1/group", {"json": {"config": {"name": "nodes",
                                                            "criteria": []}}}, 409),
    ("POST", "/v1/policy/import", "/v1/policy/import", {"data": io.BytesIO(b"x" * (2 << 20))}, 413),
    ("POST", "/v1/policy/import", "/v1/policy/import", {"data": "kind: Nope\n"}, 400),
    ("POST", "/v1/dry-run", "/v1/dry-run", {"json": {"event": {**EXEC, "kind": "nope"}}}, 400),
    ("GET", "/v1/security_events", "/v1/security_events", {"params": {"since": "-1"}}, 400),
    ("GET", "/v1/security_events", "/v1/security_events", {"params": {"nope": "1"}}, 400),
    ("GET", "/console/{asset}", "/console/nope.js", {}, 404),
]


def _rows(self: SecurityEvents, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [ROW]


def _learn_workloads() -> None:
    api = _API[0]
    for workload in (WORKLOAD, HOST):
        api.session.handle(Envelope.wrap(workload, event_id=f"w-{workload.id}",
                                         node="node-1", ts=1700000000.0))
    api.handlers.published.update(api.session.policies)


def _a_rule_uuid() -> str:
    return next(r.uuid for p in _API[0].session.policies.values() for r in p.rules)


def test_each_answer_is_what_the_document_says_and_each_role_is_enforced_as_documented(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SecurityEvents, "_run", _rows)  # the real filters and row shaping
    tokens = {role: add_token(tmp_path / "tokens.json", f"{role}-1", role) for role in ROLES}
    seen: set[tuple[str, str]] = set()

    async def test(c: Client, out: Any) -> None:
        _learn_workloads()
        for method, template, given, kw in CALLS:
            # (the rule's uuid: of the rule the PATCH before added)
            path = given.replace("{uuid}", _a_rule_uuid()) if "{uuid}" in given else given
            needed = _operations()[(method, template)]["x-procwarden-role"]
            status = await _checked(await c.request(method, path, **kw), method, template)
            assert (status == 401) is (needed != "none"), (method, path, status)
            for role, token in tokens.items():
                resp = await c.request(method, path, headers=_bearer(token), **kw)
                status = await _checked(resp, method, template)
                if needed != "none" and not role_allows(role, needed):
                    assert status == 403, (method, path, role)
                    assert needed in (await resp.json())["message"]
                else:
                    assert status == 200, (method, path, role, await resp.text())
            seen.add((method, template))
        for method, template, path, kw, expected in FAILING:
            headers = _bearer(tokens["admin"]) | kw.pop("headers", {})
            resp = await c.request(method, path, headers=headers, **kw)
            assert await _checked(resp, method, template) == expected, (method, path)

    monkeypatch.setenv("PROCWARDEN_CLICKHOUSE_HOST", "127.0.0.1")
    _serve(_settings(tmp_path), test)
    assert seen == set(_operations())  # every operation called, each role tried


def test_the_served_document_is_the_document_and_reads_as_the_other_reads(
        tmp_path: Path) -> None:
    async def open_reads(c: Client, out: Any) -> None:
        resp = await c.get("/v1/openapi.json")
        assert resp.status == 200 and await resp.json() == document()
        assert (await c.get("/v1/openapi.json", headers={"Host": "evil.example"})).status == 403

    async def closed(c: Client, out: Any) -> None:
        assert (await c.get("/v1/openapi.json")).status == 401
        resp = await c.get("/v1/openapi.json", headers=_bearer("t"))
        assert resp.status == 200 and await resp.json() == document()
    _serve(_settings(tmp_path, open_reads=True), open_reads)
    _serve(_settings(tmp_path, api_token="t"), closed)


def test_the_dry_run_event_schema_accepts_what_the_decoder_accepts() -> None:
    schema = document()["components"]["schemas"]["DryRunBody"]
    decode_envelope(EXEC)
    assert not list(_validator(schema).iter_errors({"event": EXEC}))
    assert list(_validator(schema).iter_errors({"event": {**EXEC, "kind": "workload"}}))
