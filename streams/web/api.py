"""The policy API (NeuVector-compatible shapes, docs/behaviour.md §12), free of any web framework.

Reads answer from the worker's copy of the policies. Writes are validated here against the
published policies (a refused edit answers 400/404/409 at once; an edit of a group the worker
created a moment ago waits for its writer to publish it), then sent to the group's single
writer on `procwarden.policy-updates`; the answer waits until the new version is published.
Every method returns `(status, body)`; `streams/web/routes.py` serves them over HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from prometheus_client import Counter

from schemas import (
    CrdImport,
    DecodeError,
    Envelope,
    GroupConfig,
    GroupDelete,
    GroupKind,
    GroupPolicy,
    Payload,
    ProfilePatch,
    Rule,
    ServiceConfig,
    Workload,
    WorkloadKind,
    decode_envelope,
    decode_record,
    to_plain,
)
from schemas.records import replace
from schemas.topics import POLICY_UPDATES
from streams.engine import (
    EditResult,
    PolicyError,
    ProcessState,
    apply_crd_documents,
    build_view,
    decide,
    ensure_workload_groups,
    learned_group_name,
    order_group_rules,
    parse_crd_documents,
    trim_space,
)
from streams.worker.handlers import Handlers
from streams.worker.session import edit_result

__all__ = ["ApiError", "PolicyApi", "entry_json", "profile_json"]

Answer = tuple[int, Any]

IMPORTS_REFUSED = Counter("procwarden_streams_imports_refused_total",
                          "CRD imports refused before they were applied", ["why"])


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field  # the request field at fault, when one is (forms show it there)


def error_body(status: int, message: str, field: str = "") -> dict[str, Any]:
    kind = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not found",
            409: "conflict", 412: "precondition failed", 413: "too large",
            503: "unavailable", 504: "timeout"}.get(status, "error")
    body: dict[str, Any] = {"code": status, "error": kind, "message": message}
    if field:
        body["field"] = field
    return body


def entry_json(rule: Rule, pins: Mapping[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rule.name, "path": rule.path, "action": rule.action.value,
        "cfg_type": rule.cfg_type.value, "uuid": rule.uuid, "group": rule.group,
        "allow_update": rule.allow_update,
        "created_timestamp": rule.created_timestamp,
        "last_modified_timestamp": rule.last_modified_timestamp,
    }
    if rule.users:
        entry["users"] = list(rule.users)
        entry["user"] = rule.users[0]
    if rule.probe_cmds:
        entry["probe_cmds"] = list(rule.probe_cmds)
    if rule.learned_from:
        entry["learned_from"] = rule.learned_from
    pin = pins.get(rule.path)
    if pin:
        entry["hash"] = pin
    return entry


def profile_json(policy: GroupPolicy) -> dict[str, Any]:
    body: dict[str, Any] = {"group": policy.name}
    if policy.kind is not GroupKind.CUSTOM:
        assert policy.mode is not None and policy.baseline is not None
        body |= {"mode": policy.mode.value, "baseline": policy.baseline.value,
                 "alert_disabled": policy.alert_disabled, "hash_enabled": policy.hash_enabled,
                 "fail_mode": policy.fail_mode.value if policy.fail_mode else "default"}
    body["version"] = policy.version
    body["process_list"] = [entry_json(r, policy.hash_pins)
                            for r in order_group_rules(policy.rules)]
    return body


def _group_json(policy: GroupPolicy, members: int) -> dict[str, Any]:
    return {"name": policy.name, "kind": policy.kind.value,
            "mode": policy.mode.value if policy.mode else None,
            "baseline": policy.baseline.value if policy.baseline else None,
            "criteria": to_plain(policy.criteria), "rules": len(policy.rules),
            "members": members, "version": policy.version,
            "crd_managed": policy.crd_managed}


def _decode(cls: type, body: Any, field: str) -> Any:
    if not isinstance(body, dict) or field not in body:
        raise ApiError(400, f"the body must be an object with {field!r}")
    try:
        return decode_record(cls, body[field], field)
    except DecodeError as exc:
        raise ApiError(400, str(exc)) from None


class PolicyApi:
    def __init__(self, handlers: Handlers, *, write_timeout: float = 10.0) -> None:
        self.handlers = handlers
        self.write_timeout = write_timeout

    @property
    def session(self) -> Any:
        return self.handlers.session

    def _policies(self) -> dict[str, GroupPolicy]:
        # The session's copy includes what this worker learned a moment ago.
        return dict(self.session.policies)

    # -- reads ----------------------------------------------------------------------------------

    def list_profiles(self) -> Answer:
        return 200, {"process_profiles": [profile_json(p) for _, p in
                                          sorted(self._policies().items())]}

    def get_profile(self, group: str) -> Answer:
        policy = self._policies().get(group)
        if policy is None:
            raise ApiError(404, f"group {group!r} does not exist")
        return 200, {"process_profile": profile_json(policy)}

    def get_rule(self, rule_uuid: str) -> Answer:
        found = []
        for policy in self._policies().values():
            for rule in policy.rules:
                if rule.uuid == rule_uuid:
                    found.append({"active": 1, "group": policy.name,
                                  "rule": entry_json(rule, policy.hash_pins)})
        if not found:
            raise ApiError(404, f"no rule has uuid {rule_uuid!r}")
        return 200, {"process_rules": found}

    def workload_profile(self, workload_id: str, host: bool) -> Answer:
        workload = self.session.workloads.get(workload_id)
        if workload is None or (workload.kind is WorkloadKind.HOST) is not host:
            raise ApiError(404, f"{'host' if host else 'workload'} {workload_id!r} is not known")
        view = self.session.view(workload_id)
        return 200, {"process_profile": {
            "group": view.learned.name, "mode": view.mode.value,
            "baseline": view.baseline.value, "custom_groups": list(view.custom_groups),
            "process_list": [entry_json(r, view.learned.hash_pins) for r in view.rules.rules]}}

    def list_workloads(self) -> Answer:
        """Every announced workload with the groups it belongs to."""
        out = []
        for wl in sorted(self.session.workloads.values(), key=lambda w: (w.namespace, w.name)):
            customs: tuple[str, ...] = ()
            if wl.kind is WorkloadKind.CONTAINER:
                try:
                    customs = self.session.view(wl.id).custom_groups
                except LookupError:
                    customs = ()
            out.append({"id": wl.id, "kind": wl.kind.value, "name": wl.name,
                        "namespace": wl.namespace, "image": wl.image, "node": wl.node,
                        "service": wl.service, "group": learned_group_name(wl),
                        "custom_groups": list(customs), "system": wl.system})
        return 200, {"workloads": out}

    def list_groups(self) -> Answer:
        members: dict[str, int] = {}
        for wl in self.session.workloads.values():
            members[learned_group_name(wl)] = members.get(learned_group_name(wl), 0) + 1
            if wl.kind is WorkloadKind.CONTAINER:
                for name in self.session.view(wl.id).custom_groups:
                    members[name] = members.get(name, 0) + 1
        return 200, {"groups": [_group_json(p, members.get(n, 0))
                                for n, p in sorted(self._policies().items())]}

    def get_group(self, name: str) -> Answer:
        policy = self._policies().get(name)
        if policy is None:
            raise ApiError(404, f"group {name!r} does not exist")
        return 200, {"group": _group_json(policy, 0) | {"criteria": to_plain(policy.criteria)}}

    def dry_run(self, body: Any) -> Answer:
        """What the engine would decide for one event, against the current policies; nothing is
        learned or remembered. Body: `{"workload": Workload, "event": envelope}`; a known
        workload may be named by the event alone."""
        if not isinstance(body, dict) or "event" not in body:
            raise ApiError(400, "the body must be an object with 'event' (an envelope)")
        try:
            env = decode_envelope(body["event"])
            workload = (decode_record(Workload, body["workload"], "workload")
                        if "workload" in body else None)
        except DecodeError as exc:
            raise ApiError(400, str(exc)) from None
        wid = getattr(env.payload, "workload_id", None)
        if workload is None:
            workload = self.session.workloads.get(wid)
            if workload is None:
                raise ApiError(404, f"workload {wid!r} is not known: send it along")
        policies = self._policies()
        group = learned_group_name(workload)
        if group not in policies:
            policies.update(ensure_workload_groups(policies, workload, self.session.settings,
                                                   env.ts).updated)
        view = build_view(policies, workload, self.session.settings)
        try:
            decision, _ = decide(view, ProcessState(), env)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return 200, {"decision": to_plain(decision)}

    def status(self) -> Answer:
        h = self.handlers
        return 200, {"ready": h.ready.is_set(), "groups": len(self.session.policies),
                     "workloads": len(self.session.workloads), "counts": dict(h.counts)}

    # -- writes ---------------------------------------------------------------------------------

    def check_version(self, group: str, if_match: str | None) -> None:
        """`If-Match` on a group's write: the version the client read (its `ETag`) must still be
        the current one, or the write is refused (412) instead of applied over a change the
        client has not seen. `*` matches any version of an existing group."""
        if if_match is None:
            return
        policy = self._policies().get(group)
        if policy is None:
            raise ApiError(404, f"group {group!r} does not exist")
        wanted = [tag.strip().removeprefix("W/").strip('"') for tag in if_match.split(",")]
        if "*" in wanted or str(policy.version) in wanted:
            return
        raise ApiError(412, f"group {group!r} is at version {policy.version}, not "
                            f"{', '.join(wanted)}: read it again and redo the change",
                       field="If-Match")

    async def patch_profile(self, group: str, body: Any, actor: str) -> Answer:
        if isinstance(body, dict) and isinstance(body.get("process_profile_config"), dict):
            body = {"process_profile_config": {"group": group, **body["process_profile_config"]}}
        patch = _decode(ProfilePatch, body, "process_profile_config")
        if patch.group != group:
            raise ApiError(400, f"process_profile_config.group {patch.group!r} differs from "
                                f"the path's {group!r}")
        patch = replace(patch, group=group, actor=actor)
        await self._submit(group, patch)
        return self.get_profile(group)

    async def patch_service_config(self, body: Any, actor: str) -> Answer:
        cfg = _decode(ServiceConfig, body, "config")
        cfg = replace(cfg, actor=actor)
        groups = ["nodes" if s == "nodes" else f"nv.{s}" for s in cfg.services]
        result = await self._validate(cfg)
        for name in groups:  # each group's writer applies the change to its group
            single = replace(cfg, services=(name.removeprefix("nv."),))
            await self._publish(name, single, result)
        return 200, {"process_profiles": [profile_json(self._policies()[g]) for g in groups]}

    async def create_group(self, body: Any, actor: str) -> Answer:
        cfg = _decode(GroupConfig, body, "config")
        if trim_space(cfg.name) in self._policies():
            raise ApiError(409, f"group {cfg.name!r} already exists")
        return await self.patch_group(cfg.name, body, actor)

    async def patch_group(self, name: str, body: Any, actor: str) -> Answer:
        cfg = _decode(GroupConfig, body, "config")
        cfg = GroupConfig(name=name, criteria=cfg.criteria, actor=actor)
        await self._submit(name, cfg)
        return self.get_group(name)

    async def delete_group(self, name: str, actor: str) -> Answer:
        req = GroupDelete(name=name, actor=actor)
        result = await self._validate(req)
        await self._publish(name, req, result)
        return 200, {"deleted": name}

    async def import_policy(self, text: str, actor: str) -> Answer:
        """CRD documents: validated together, then each applied by its group's writer.

        The text is capped (`max_crd_bytes`, 413) and parsed once, off the event loop, with
        libyaml; each group's writer is sent its document as JSON, which it parses in C."""
        settings = self.session.settings
        try:
            if len(text) > settings.max_crd_bytes:  # characters: at least as many bytes
                raise PolicyError(f"the documents are over the {settings.max_crd_bytes}-byte "
                                  "limit", status=413, field="document")
            docs = await asyncio.get_running_loop().run_in_executor(
                None, parse_crd_documents, text, settings.max_crd_bytes)
            if not docs:
                raise PolicyError("no CRD documents found", field="document")
        except PolicyError as exc:
            IMPORTS_REFUSED.labels("too large" if exc.status == 413 else "invalid").inc()
            raise ApiError(exc.status, str(exc), exc.field) from None
        except RecursionError:  # never a 500: whatever nests past Python's stack is invalid
            IMPORTS_REFUSED.labels("invalid").inc()
            raise ApiError(400, "the documents are nested too deeply", "document") from None
        ts = time.time()
        result = await self._checked(
            lambda policies: apply_crd_documents(policies, docs, settings, ts, actor))
        for doc in docs:
            # validated above, and trimmed as the engine trims it: the key names the group's writer
            group = trim_space(str(doc["spec"]["target"]["selector"]["name"]))
            await self._publish(group, CrdImport(text=orjson.dumps(doc).decode(), actor=actor),
                                result)
        return 200, {"groups": sorted(result.updated), "changes": to_plain(result.changes)}

    async def _validate(self, payload: Payload) -> EditResult:
        env = self._envelope(payload)
        settings = self.session.settings
        return await self._checked(lambda policies: edit_result(policies, env, settings))

    async def _checked(self, edit: Callable[[Mapping[str, GroupPolicy]], EditResult]
                       ) -> EditResult:
        """The edit checked against the published policies. A group this worker created a
        moment ago (on first sight of its workload) is in its own copy, and readable, before
        the group's writer has published it: an edit of it waits for that instead of
        answering 404."""
        deadline = time.monotonic() + self.write_timeout
        while True:
            try:
                return edit(self.handlers.published)
            except PolicyError as exc:
                pending = self.session.policies.keys() - self.handlers.published.keys()
                if exc.status != 404 or not pending or time.monotonic() >= deadline:
                    raise ApiError(exc.status, str(exc), exc.field) from None
            await asyncio.sleep(0.02)

    async def _submit(self, group: str, payload: Payload) -> None:
        await self._publish(group, payload, await self._validate(payload))

    async def _publish(self, group: str, payload: Payload, result: EditResult) -> None:
        if not result.changed:
            return
        await self.handlers.send_envelope(POLICY_UPDATES.name, group, self._envelope(payload))
        wanted = result.updated.get(group)
        deadline = time.monotonic() + self.write_timeout
        while time.monotonic() < deadline:
            have = self.handlers.published.get(group)
            if wanted is None and have is None:
                return
            if wanted is not None and have is not None and have.version >= wanted.version:
                return
            await asyncio.sleep(0.02)
        raise ApiError(504, f"the change to {group} was sent but is not published yet; "
                            "check the stream workers")

    def _envelope(self, payload: Payload) -> Envelope:
        return Envelope.wrap(payload, event_id=f"api-{uuid.uuid4()}", node=self.handlers.node,
                             ts=time.time())

