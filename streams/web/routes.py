"""HTTP for the policy API: thin Faust web views over `streams.web.api.PolicyApi`.

Every call needs `Authorization: Bearer <token>` of a role that allows it (`api_tokens.py`:
viewer reads, operator changes modes, baselines, rules and service config, admin changes custom
groups and imports CRDs); reads need none when `STREAMS_OPEN_READS=true`, and then only the
Host names of `StreamSettings.allowed_hosts` are answered (a DNS-rebinding page cannot read
them). Each change records the token's name as its actor. Errors are
`{"code", "error", "message"}`; an unexpected one answers a generic message with an error id,
its detail goes to the log under that id.

Every response carries the security headers below. Faust's own views (`/router/`, `/table/`,
statistics) are not served: only the paths this module routes are. The server listens on
`STREAMS_WEB_HOST` (127.0.0.1) and serves HTTPS when `STREAMS_WEB_TLS_CERT`/`_KEY` are set.

`GET /ready` (no token: a probe's) answers 200 while the worker decides and 503 with the reason
when it does not (`{"role", "ready", "reason"}`); `GET /metrics` is Prometheus'. Neither checks
Host: probes and scrapers name the pod's address.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from schemas.connections import ClickHouseConnection, ConfigError
from streams.settings import StreamSettings
from streams.web.api import Answer, ApiError, PolicyApi, error_body
from streams.web.api_tokens import Token, TokenStore, role_allows
from streams.web.openapi import document as openapi_document
from streams.web.security_events import SecurityEvents, SecurityEventsError

__all__ = ["SECURITY_HEADERS", "install_routes", "web_options"]

log = logging.getLogger("procwarden.streams.api")

CONSOLE = Path(__file__).parent / "console"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# The console is one page, one script and one style sheet from here, talking to this API:
# nothing inline, nothing from elsewhere, never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}
_UNCHECKED_HOST = frozenset({"/ready", "/metrics"})

REFUSED = Counter("procwarden_streams_api_refused_total",
                  "API requests refused before they reached the API", ["why"])
ERRORS = Counter("procwarden_streams_api_errors_total",
                 "API requests that failed unexpectedly (logged with their error id)")


def web_options(settings: StreamSettings) -> dict[str, Any]:
    """The Faust app's web settings: where it listens, TLS, and none of Faust's own views."""
    context = None
    if settings.web_tls_cert is not None and settings.web_tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.web_tls_cert, settings.web_tls_key)
    return {"web_host": settings.web_host, "web_bind": settings.web_host,
            "web_port": settings.web_port, "web_ssl_context": context,
            "web_application_options": {"client_max_size": body_limit(settings)},
            "web_router_enabled": False, "web_tables_enabled": False,
            "web_graph_enabled": False, "web_stats_enabled": False,
            "web_metrics_enabled": False}


def body_limit(settings: StreamSettings) -> int:
    """The largest request body read at all: a CRD import of `max_crd_bytes` characters in
    UTF-8 (up to 4 bytes each) and some room. Under it the API's own checks answer (a JSON 413
    for a CRD text over its limit); over it the body is refused unread, also a JSON 413."""
    return 4 * settings.max_crd_bytes + 65536


def _served(path: str) -> bool:
    return (path.startswith("/v1/") or path == "/console" or path.startswith("/console/")
            or path in _UNCHECKED_HOST)


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:6066
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _json(status: int, body: Any) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(body), status=status,
                           content_type="application/json")


def error_id() -> str:
    return uuid.uuid4().hex[:16]


def _guard(settings: StreamSettings) -> Any:
    hosts = settings.allowed_hosts()

    @aioweb.middleware
    async def guard(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        path = request.path
        if not _served(path):  # Faust's views and anything else mounted on its server
            REFUSED.labels("not served").inc()
            return _json(404, error_body(404, "no such path"))
        if (settings.open_reads and path not in _UNCHECKED_HOST
                and _host_name(request.headers.get("Host", "")) not in hosts):
            REFUSED.labels("host").inc()
            return _json(403, error_body(403, "this Host is not served (STREAMS_API_ALLOWED_"
                                              "HOSTS)"))
        try:
            response: aioweb.StreamResponse = await handler(request)
            return response
        except aioweb.HTTPException:
            raise
        except Exception as exc:
            ERRORS.inc()
            eid = error_id()
            log.error("API error %s on %s %s", eid, request.method, path, exc_info=exc)
            return _json(500, error_body(500, f"internal error (error id {eid}: the worker's "
                                              "log has the detail)") | {"error_id": eid})

    return guard


async def _headers(request: aioweb.Request, response: aioweb.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def install_routes(app: faust.App, api: PolicyApi, settings: StreamSettings, *,
                   readiness: Callable[[], tuple[bool, str]] | None = None) -> None:
    store = TokenStore(settings.tokens_path(),
                       settings.api_token.get_secret_value() if settings.api_token else None)
    web_app: aioweb.Application = app.web.web_app  # type: ignore[attr-defined]
    web_app.middlewares.append(_guard(settings))
    web_app.on_response_prepare.append(_headers)

    def authorised(request: Request, needed: str) -> Token | None:
        if needed == "viewer" and settings.open_reads:
            return None
        if store.empty:
            raise ApiError(403, "the API has no tokens: `procwarden token add NAME --role "
                                "ROLE` (or STREAMS_API_TOKEN) to allow "
                                + ("reads (or STREAMS_OPEN_READS=true)" if needed == "viewer"
                                   else "writes"))
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = store.lookup(given.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            REFUSED.labels("token").inc()
            raise ApiError(401, "missing or wrong bearer token")
        if not role_allows(token.role, needed):
            REFUSED.labels("role").inc()
            raise ApiError(403, f"token {token.name!r} has the {token.role} role: this needs "
                                f"{needed}")
        return token

    def answer(view: View, status: int, body: Any) -> Response:
        headers = None
        if status == 200 and isinstance(body, dict):
            # A group's version is its entity tag: send it back in If-Match to write safely.
            one = body.get("process_profile") or body.get("group")
            if isinstance(one, dict) and isinstance(one.get("version"), int):
                headers = {"ETag": f'"{one["version"]}"'}
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status,
                          headers=headers)

    async def read_body(request: Request) -> bytes:
        try:
            return await request.read()
        except aioweb.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the body is over {body_limit(settings)} bytes") from None

    async def body_json(request: Request) -> Any:
        raw = await read_body(request)
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None

    async def run(view: View, request: Request, needed: str,
                  call: Callable[..., Answer | Awaitable[Answer]]) -> Response:
        try:
            token = authorised(request, needed)
            # A change is recorded under the name of the token that made it.
            result = call(token.name) if needed != "viewer" and token else call()
            status, body = await result if not isinstance(result, tuple) else result
        except ApiError as exc:
            return answer(view, exc.status, error_body(exc.status, exc.message, exc.field))
        return answer(view, status, body)

    @app.page("/v1/process_profile")
    class Profiles(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, "viewer", api.list_profiles)

    @app.page("/v1/process_profile/{group}")
    class Profile(View):
        async def get(self, request: Request, group: str) -> Response:
            return await run(self, request, "viewer", lambda: api.get_profile(group))

        async def patch(self, request: Request, group: str) -> Response:
            async def call(actor: str) -> Answer:
                api.check_version(group, request.headers.get("If-Match"))
                return await api.patch_profile(group, await body_json(request), actor)
            return await run(self, request, "operator", call)

    @app.page("/v1/process_rules/{uuid}")
    class Rules(View):
        async def get(self, request: Request, uuid: str) -> Response:
            return await run(self, request, "viewer", lambda: api.get_rule(uuid))

    @app.page("/v1/workload/{wid}/process_profile")
    class WorkloadProfile(View):
        async def get(self, request: Request, wid: str) -> Response:
            return await run(self, request, "viewer", lambda: api.workload_profile(wid, False))

    @app.page("/v1/host/{wid}/process_profile")
    class HostProfile(View):
        async def get(self, request: Request, wid: str) -> Response:
            return await run(self, request, "viewer", lambda: api.workload_profile(wid, True))

    @app.page("/v1/service/config")
    class ServiceConfigView(View):
        async def patch(self, request: Request) -> Response:
            async def call(actor: str) -> Answer:
                return await api.patch_service_config(await body_json(request), actor)
            return await run(self, request, "operator", call)

    @app.page("/v1/group")
    class Groups(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, "viewer", api.list_groups)

        async def post(self, request: Request) -> Response:
            async def call(actor: str) -> Answer:
                return await api.create_group(await body_json(request), actor)
            return await run(self, request, "admin", call)

    @app.page("/v1/group/{name}")
    class Group(View):
        async def get(self, request: Request, name: str) -> Response:
            return await run(self, request, "viewer", lambda: api.get_group(name))

        async def patch(self, request: Request, name: str) -> Response:
            async def call(actor: str) -> Answer:
                api.check_version(name, request.headers.get("If-Match"))
                return await api.patch_group(name, await body_json(request), actor)
            return await run(self, request, "admin", call)

        async def delete(self, request: Request, name: str) -> Response:
            async def call(actor: str) -> Answer:
                api.check_version(name, request.headers.get("If-Match"))
                return await api.delete_group(name, actor)
            return await run(self, request, "admin", call)

    @app.page("/v1/policy/import")
    class Import(View):
        async def post(self, request: Request) -> Response:
            async def call(actor: str) -> Answer:
                text = (await read_body(request)).decode(errors="replace")
                return await api.import_policy(text, actor)
            return await run(self, request, "admin", call)

    @app.page("/v1/dry-run")
    class DryRun(View):
        async def post(self, request: Request) -> Response:
            async def call() -> Answer:
                return api.dry_run(await body_json(request))
            return await run(self, request, "viewer", call)

    @app.page("/v1/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, "viewer", api.status)

    @app.page("/v1/workload")
    class Workloads(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, "viewer", api.list_workloads)

    # This API described (streams/web/openapi.py, docs/api.md): readable as the other reads are.
    @app.page("/v1/openapi.json")
    class OpenApi(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, "viewer", lambda: (200, openapi_document()))

    try:
        events: SecurityEvents | None = SecurityEvents(ClickHouseConnection.from_env())
    except ConfigError:
        events = None

    @app.page("/v1/security_events")
    class SecurityEventsView(View):
        async def get(self, request: Request) -> Response:
            async def call() -> Answer:
                if events is None:
                    raise ApiError(503, "ClickHouse is not configured (PROCWARDEN_CLICKHOUSE_*)")
                try:
                    found = await events.query(dict(request.query))
                except SecurityEventsError as exc:
                    if exc.status < 500:  # the request's fault, said in our own words
                        raise ApiError(exc.status, str(exc)) from None
                    # ClickHouse's text names its user, host and database: the log only.
                    eid = error_id()
                    log.error("API error %s: %s", eid, exc)
                    raise ApiError(exc.status, "the security events cannot be read now "
                                               f"(error id {eid})") from None
                return 200, {"security_events": found}
            return await run(self, request, "viewer", call)

    # The console: static files that talk only to the API above (streams/web/console/).
    @app.page("/console")
    class Console(View):
        async def get(self, request: Request) -> Response:
            return self.bytes((CONSOLE / "index.html").read_bytes(),
                              content_type="text/html")

    @app.page("/console/{asset}")
    class ConsoleAsset(View):
        async def get(self, request: Request, asset: str) -> Response:
            if asset not in _ASSETS:
                return answer(self, 404, error_body(404, f"no console file {asset!r}"))
            return self.bytes((CONSOLE / asset).read_bytes(), content_type=_ASSETS[asset])

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ready, reason = readiness() if readiness else (api.handlers.ready.is_set(), "")
            return answer(self, 200 if ready else 503,
                          {"role": "streams", "ready": ready, "reason": reason})

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
