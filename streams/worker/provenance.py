"""Who may tell the stream app what (issue 22): each input record's signature, checked before
it is believed, and the stream app's own signatures on what it writes.

- Events, workload announcements and their tombstones come from a node's collector, signed
  with that node's key; a node speaks only for itself (the envelope's `node`) and for its own
  workloads, and a workload never moves to another node while it runs.
- Policy, process state and policy updates (edits, learns, announcements passed on) come only
  from the stream app itself: whatever else writes them is refused.
- Verdicts are signed for the node they are addressed to, with an expiry; everything else the
  stream app writes is signed as the stream app.

Each refusal is a `BadSignature` (a `Refused`: the guard dead-letters it and the loop goes on),
counted in `procwarden_streams_refused_senders_total{reason}` and logged once per reason and
signer (bounded). `accept_unsigned` (an insecure setting for mixed-version rollouts) lets
unsigned records through; a record that is signed is checked all the same.

Given a `KeyFile` (transport/keyfile.py), both follow the keyring file as it is rotated: each
new version swaps in a whole new verifier or signer, so a record is checked or signed with one
version of the keys, and never waits on the file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import Counter

from schemas import Envelope, Workload, WorkloadState
from transport.keyfile import KeyFile, keys_now
from transport.signing import AUTH, BadSignature, Header, Keyring, Signer, Verifier, claimed

__all__ = ["Provenance", "RecordSigner"]

log = logging.getLogger("procwarden.streams.provenance")

REFUSED = Counter("procwarden_streams_refused_senders_total",
                  "Input records refused for who sent them (signature, node, workload)",
                  ["reason"])
_LOGGED_MAX = 1024

# As each client gives them: confluent-kafka, aiokafka and Faust.
RawHeaders = (Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]
              | None)


def _pairs(headers: RawHeaders) -> Sequence[tuple[str, str | bytes | None]]:
    if type(headers) is list:  # what confluent-kafka gives: no ABC check on the hot path
        return headers
    if isinstance(headers, Mapping):
        return list(headers.items())
    return headers or ()


class Provenance:
    """Checks who sent each input record."""

    def __init__(self, ring: Keyring | KeyFile[Keyring] | None, *,
                 accept_unsigned: bool = False, clock: Callable[[], float] = time.time) -> None:
        if ring is None and not accept_unsigned:
            raise ValueError("a keyring is needed unless unsigned records are accepted")
        self._verifier: Verifier | None = None
        if ring is not None:  # a reloaded keyring swaps in a whole new verifier
            self._verifier = Verifier.for_streams(keys_now(ring, self._new_keys))
        self.accept_unsigned = accept_unsigned
        self._clock = clock
        self._logged: set[tuple[str, str]] = set()

    def _new_keys(self, ring: Keyring) -> None:
        self._verifier = Verifier.for_streams(ring)

    def node_of(self, topic: str, key: bytes | None, value: bytes | None,
                headers: RawHeaders) -> str | None:
        """The node that signed a record ("None": unsigned, and that is accepted)."""
        return self._verify(topic, key, value, headers, from_streams=False)

    def from_streams(self, topic: str, key: bytes | None, value: bytes | None,
                     headers: RawHeaders) -> None:
        """BadSignature unless the stream app itself wrote this record."""
        self._verify(topic, key, value, headers, from_streams=True)

    def _verify(self, topic: str, key: bytes | None, value: bytes | None,
                headers: RawHeaders, *, from_streams: bool) -> str | None:
        pairs = _pairs(headers)
        verifier = self._verifier
        try:
            if verifier is None or (self.accept_unsigned and
                                    not any(n == AUTH for n, _ in pairs)):
                return None
            return verifier.verify(topic, key, value, pairs, now=self._clock(),
                                   from_streams=from_streams).node
        except BadSignature as exc:
            said = claimed(pairs)
            signer = said.signer[:80] if said is not None else "-"
            raise self.refuse(exc.reason, signer, exc.detail) from None

    def check_speaker(self, node: str | None, env: Envelope) -> None:
        """A node signs only its own envelopes."""
        if node is not None and env.node != node:
            raise self.refuse("node", node, f"a record of node {node!r} says it is from "
                              f"{env.node[:80]!r}")

    def check_workload(self, node: str | None, workload: Workload,
                       known: Workload | None) -> None:
        """A node announces only its own workloads, and never one running on another node."""
        if node is None:
            return
        if workload.node != node:
            raise self.refuse("workload", node, f"node {node!r} announced workload "
                              f"{workload.id[:80]!r} of node {workload.node[:80]!r}")
        if known is not None and known.node != node and known.state is WorkloadState.RUNNING:
            raise self.refuse("moved", node, f"workload {workload.id[:80]!r} runs on node "
                              f"{known.node[:80]!r}: node {node!r} cannot take it over")

    def check_event(self, node: str, workload: Workload) -> None:
        """An event is believed only from the node its workload runs on (`node`: its
        envelope's, which `check_speaker` bound to its signer)."""
        if workload.node != node:
            raise self.refuse("workload", node, f"node {node!r} sent an event of workload "
                              f"{workload.id[:80]!r} of node {workload.node[:80]!r}")

    def refuse(self, reason: str, signer: str, detail: str) -> BadSignature:
        REFUSED.labels(reason).inc()
        if (reason, signer) not in self._logged and len(self._logged) < _LOGGED_MAX:
            self._logged.add((reason, signer))
            log.warning("refused a record from %s (%s): %s; further ones of this kind from it "
                        "are counted only", signer, reason, detail)
        return BadSignature(reason, detail)


class RecordSigner:
    """The headers that sign what the stream app writes: a verdict for its node, with an
    expiry; anything else as the stream app."""

    def __init__(self, ring: Keyring | KeyFile[Keyring], verdicts_topic: str,
                 verdict_ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._signer = Signer.for_streams(keys_now(ring, self._new_keys))
        self._verdicts = verdicts_topic
        self._ttl = verdict_ttl_s
        self._clock = clock

    def _new_keys(self, ring: Keyring) -> None:
        self._signer = Signer.for_streams(ring)

    def __call__(self, topic: str, key: bytes | None, value: bytes | None) -> list[Header]:
        signer = self._signer  # one version of the keys for the whole record
        if topic == self._verdicts:
            node = (key or b"").decode("utf-8", "replace")
            return signer.headers(topic, key, value, to_node=node,
                                  expires=int(self._clock() + self._ttl) + 1)
        return signer.headers(topic, key, value)

