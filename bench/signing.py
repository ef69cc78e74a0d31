"""Benchmark: what signatures cost per record, beside what the stream worker does per event.

N wire-format exec events (default 200,000, ~400 bytes each, as collectors publish them) go
through, on one core:

- sign: the collector's `Signer.headers` per event (its publish path);
- verify: the worker's `Provenance.node_of` per event, keys derived once per node (its input);
- verdict: the worker's `RecordSigner` per verdict (an expiry, a key per node), and the
  collector's `Verifier.verify` of it;

beside the baseline measured in the same run: decode + decide of the same events by the pure
engine (a 100-rule profile), which is the least a worker does per event. The figure is the
share of that baseline that signing adds on each side; the target (issue 22) is within 5%.

    python bench/signing.py [--events N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import Action as RuleAction
from schemas import (
    Baseline,
    Envelope,
    ExecEvent,
    GroupKind,
    GroupPolicy,
    Mode,
    Rule,
    RuleSource,
    Workload,
    WorkloadKind,
    decode_envelope,
    encode,
)
from schemas.topics import EXEC, VERDICTS
from streams.worker.provenance import Provenance, RecordSigner
from streams.worker.session import DecisionSession
from transport.signing import Keyring, Signer, Verifier

NODES = 20


def _events(n: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(n):
        node = f"node-{i % NODES}"
        wid = f"c-{i % (NODES * 10)}"
        ev = ExecEvent(workload_id=wid, pid=1000 + i, ppid=1, start_time=123456 + i,
                       path=f"/usr/bin/tool{i % 150}", name=f"tool{i % 150}",
                       argv=(f"tool{i % 150}", "--flag", "value", f"/data/file-{i}.txt"),
                       user="app")
        env = Envelope.wrap(ev, event_id=f"{node}:{i}", node=node, ts=1.8e9 + i / 1000)
        out.append((node, wid.encode(), encode(env)))
    return out


def _session() -> DecisionSession:
    session = DecisionSession()
    rules = tuple(Rule(name=f"tool{i}", path=f"/usr/bin/tool{i}", action=RuleAction.ALLOW,
                       cfg_type=RuleSource.LEARNED, uuid=f"u{i}", group="nv.app.bench")
                  for i in range(100))
    session.load_policies([GroupPolicy(name="nv.app.bench", kind=GroupKind.LEARNED,
                                       mode=Mode.PROTECT, baseline=Baseline.BASIC, rules=rules,
                                       version=1)])
    for c in range(NODES * 10):
        wl = Workload(id=f"c-{c}", kind=WorkloadKind.CONTAINER, node=f"node-{c % NODES}",
                      name="app", namespace="bench", service="app", image="busybox")
        session.handle(Envelope.wrap(wl, event_id=f"wl{c}", node=wl.node, ts=1.0))
    return session


def _timed(fn: object, items: list[object]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    ring = Keyring.generate()
    events = _events(args.events)
    signers = {f"node-{n}": Signer.for_node(ring.node_keys(f"node-{n}")) for n in range(NODES)}
    topic = EXEC.name

    t_sign = _timed(lambda e: signers[e[0]].headers(topic, e[1], e[2]), events)  # type: ignore[index]
    signed = [(node, key, value, signers[node].headers(topic, key, value))
              for node, key, value in events]
    provenance = Provenance(ring)
    t_verify = _timed(lambda e: provenance.node_of(topic, e[1], e[2], e[3]), signed)  # type: ignore[index]

    sign_verdict = RecordSigner(ring, VERDICTS.name, 60)
    verdicts = [(node.encode(), value) for node, _, value in events]  # (same sizes)
    t_vsign = _timed(lambda v: sign_verdict(VERDICTS.name, v[0], v[1]), verdicts)  # type: ignore[index]
    node_verifiers = {f"node-{n}": Verifier.for_node(ring.node_keys(f"node-{n}"))
                      for n in range(NODES)}
    now = time.time()
    vsigned = [(k, v, sign_verdict(VERDICTS.name, k, v)) for k, v in verdicts]
    t_vverify = _timed(lambda v: node_verifiers[v[0].decode()].verify(  # type: ignore[index]
        VERDICTS.name, v[0], v[1], v[2], now=now), vsigned)  # type: ignore[index]

    session = _session()
    t_base = _timed(lambda e: session.decide(decode_envelope(e[2])), events)  # type: ignore[index]

    n = len(events)

    def us(t: float) -> str:
        return f"{t / n * 1e6:6.2f} us"

    print(f"procwarden signing benchmark: {n:,} exec events "
          f"({sum(len(v) for _, _, v in events) / n:.0f} bytes each), {NODES} nodes, one core")
    print(f"baseline: decode + decide (100-rule Protect profile) {us(t_base)} per event")
    worker = t_verify + t_vsign
    print(f"worker side:    verify the event {us(t_verify)} + sign its verdict {us(t_vsign)} "
          f"= {worker / t_base:.1%} of the baseline")
    print(f"collector side: sign the event {us(t_sign)} + verify its verdict {us(t_vverify)} "
          f"(collector publish path; compare bench/collector.py's per-exec cost)")
    print(f"target: worker side within 5% of the baseline -> {worker / t_base:.1%} "
          f"({'met' if worker / t_base <= 0.05 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
