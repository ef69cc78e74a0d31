"""HTTP for the policy API: thin Faust web views over `streams.api.PolicyApi`.

Every write needs `Authorization: Bearer <STREAMS_API_TOKEN>`; reads too, unless
`STREAMS_OPEN_READS=true`. Errors are `{"code", "error", "message"}`.

`GET /ready` (no token: a probe's) answers 200 while the worker decides and 503 with the reason
when it does not (`{"role", "ready", "reason"}`); `GET /metrics` is Prometheus'.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.connections import ClickHouseConnection, ConfigError
from streams.api import Answer, ApiError, PolicyApi, error_body
from streams.security_events import SecurityEvents, SecurityEventsError
from streams.settings import StreamSettings

__all__ = ["install_routes"]

CONSOLE = Path(__file__).parent / "console"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def install_routes(app: faust.App, api: PolicyApi, settings: StreamSettings, *,
                   readiness: Callable[[], tuple[bool, str]] | None = None) -> None:
    token = settings.api_token.get_secret_value() if settings.api_token else None

    def authorised(request: Request, write: bool) -> None:
        if not write and settings.open_reads:
            return
        if token is None:
            raise ApiError(403, "the API has no token: set STREAMS_API_TOKEN to allow "
                                + ("writes" if write else "reads (or STREAMS_OPEN_READS=true)"))
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "missing or wrong bearer token")

    def answer(view: View, status: int, body: Any) -> Response:
        headers = None
        if status == 200 and isinstance(body, dict):
            # A group's version is its entity tag: send it back in If-Match to write safely.
            one = body.get("process_profile") or body.get("group")
            if isinstance(one, dict) and isinstance(one.get("version"), int):
                headers = {"ETag": f'"{one["version"]}"'}
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status,
                          headers=headers)

    async def body_json(request: Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None

    def actor(request: Request) -> str:
        return f"api:{request.remote or 'local'}"  # type: ignore[attr-defined]

    async def run(view: View, request: Request, write: bool,
                  call: Callable[[], Answer | Awaitable[Answer]]) -> Response:
        try:
            authorised(request, write)
            result = call()
            status, body = await result if not isinstance(result, tuple) else result
        except ApiError as exc:
            return answer(view, exc.status, error_body(exc.status, exc.message, exc.field))
        return answer(view, status, body)

    @app.page("/v1/process_profile")
    class Profiles(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, False, api.list_profiles)

    @app.page("/v1/process_profile/{group}")
    class Profile(View):
        async def get(self, request: Request, group: str) -> Response:
            return await run(self, request, False, lambda: api.get_profile(group))

        async def patch(self, request: Request, group: str) -> Response:
            async def call() -> Answer:
                api.check_version(group, request.headers.get("If-Match"))
                return await api.patch_profile(group, await body_json(request), actor(request))
            return await run(self, request, True, call)

    @app.page("/v1/process_rules/{uuid}")
    class Rules(View):
        async def get(self, request: Request, uuid: str) -> Response:
            return await run(self, request, False, lambda: api.get_rule(uuid))

    @app.page("/v1/workload/{wid}/process_profile")
    class WorkloadProfile(View):
        async def get(self, request: Request, wid: str) -> Response:
            return await run(self, request, False, lambda: api.workload_profile(wid, False))

    @app.page("/v1/host/{wid}/process_profile")
    class HostProfile(View):
        async def get(self, request: Request, wid: str) -> Response:
            return await run(self, request, False, lambda: api.workload_profile(wid, True))

    @app.page("/v1/service/config")
    class ServiceConfigView(View):
        async def patch(self, request: Request) -> Response:
            async def call() -> Answer:
                return await api.patch_service_config(await body_json(request), actor(request))
            return await run(self, request, True, call)

    @app.page("/v1/group")
    class Groups(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, False, api.list_groups)

        async def post(self, request: Request) -> Response:
            async def call() -> Answer:
                return await api.create_group(await body_json(request), actor(request))
            return await run(self, request, True, call)

    @app.page("/v1/group/{name}")
    class Group(View):
        async def get(self, request: Request, name: str) -> Response:
            return await run(self, request, False, lambda: api.get_group(name))

        async def patch(self, request: Request, name: str) -> Response:
            async def call() -> Answer:
                api.check_version(name, request.headers.get("If-Match"))
                return await api.patch_group(name, await body_json(request), actor(request))
            return await run(self, request, True, call)

        async def delete(self, request: Request, name: str) -> Response:
            async def call() -> Answer:
                api.check_version(name, request.headers.get("If-Match"))
                return await api.delete_group(name, actor(request))
            return await run(self, request, True, call)

    @app.page("/v1/policy/import")
    class Import(View):
        async def post(self, request: Request) -> Response:
            async def call() -> Answer:
                text = (await request.read()).decode(errors="replace")
                return await api.import_policy(text, actor(request))
            return await run(self, request, True, call)

    @app.page("/v1/dry-run")
    class DryRun(View):
        async def post(self, request: Request) -> Response:
            async def call() -> Answer:
                return api.dry_run(await body_json(request))
            return await run(self, request, False, call)

    @app.page("/v1/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, False, api.status)

    @app.page("/v1/workload")
    class Workloads(View):
        async def get(self, request: Request) -> Response:
            return await run(self, request, False, api.list_workloads)

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
                    raise ApiError(exc.status, str(exc)) from None
                return 200, {"security_events": found}
            return await run(self, request, False, call)

    # The console: static files that talk only to the API above (streams/console/).
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
