"""A key rotation on the running pipeline, with no role restarted and no record refused
(issue 22): the real `procwarden streams` with its own keyring file, the real
`procwarden collector` with its own node key file, host execs flowing from it all along.

While the collector publishes, `procwarden keys rotate`, the node's file handed out again,
`procwarden keys activate k2`, and the node's file once more; each role picks each step up from
its file (`*_KEYS_CHECK_INTERVAL_S`, seen on its `procwarden_<role>_keys` gauge). Every exec
the collector published is decided, nothing is refused (either side's counters stay 0, the DLQ
stays empty), the node signs with k1 and then k2, the worker's verdicts go from k1 to k2 once
it took the activation, and every verdict checks with the node's keys.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from schemas import Decision, ExecEvent, decode_envelope
from schemas.connections import KafkaConnection
from schemas.topics import DLQ, EXEC, VERDICTS, verdict_partition
from tests.integration.streamkit import ROOT, Pipeline, free_port, running_collector
from transport.signing import Keyring, NodeKeys, Verifier, claimed

NODE = "node-rotation"


def _samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def _keys_held(port: int, role: str) -> dict[str, str]:
    return {labels["kid"]: labels["use"] for name, labels, value in _samples(port)
            if name == f"procwarden_{role}_keys" and value == 1}


def _total(port: int, name: str) -> float:
    return sum(value for n, _, value in _samples(port) if n == name)


def _wait_keys(port: int, role: str, want: dict[str, str], logs: str | Path) -> None:
    deadline = time.monotonic() + 30
    while (got := _keys_held(port, role)) != want:
        assert time.monotonic() < deadline, (role, got, want, Path(logs).read_text()[-3000:]
                                             if isinstance(logs, Path) else logs)
        time.sleep(0.2)


def _keys(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "procwarden.cli", "keys", *args], cwd=ROOT,
                   check=True, capture_output=True, timeout=60)


def _kids(msgs: list[tuple[bytes, list[tuple[str, bytes]]]]) -> list[str]:
    return [_kid(headers) for _, headers in msgs]


def _kid(headers: list[tuple[str, bytes]]) -> str:
    said = claimed(headers)
    assert said is not None, headers
    return said.kid


def _changes_once(kids: list[str]) -> bool:
    """k1 ... k1 k2 ... k2: once a role signs with the new key it never goes back."""
    return kids == sorted(kids) and kids[0] == "k1" and kids[-1] == "k2"


def test_a_rotation_refuses_no_legitimate_record_and_restarts_nothing(
        kafka: KafkaConnection, tmp_path: Path) -> None:
    ring_file, node_file = tmp_path / "keyring.json", tmp_path / "node.json"
    Keyring.generate("k1").save(ring_file)
    _keys("node", NODE, "--out", str(node_file), "--keyring", str(ring_file))
    pipe = Pipeline(kafka, tmp_path)
    metrics = free_port()
    worker = pipe.start_worker(STREAMS_SIGNING_KEYRING_FILE=str(ring_file),
                               STREAMS_KEYS_CHECK_INTERVAL_S="0.5",
                               STREAMS_ACCEPT_UNSIGNED="false")
    try:
        with running_collector(pipe, NODE, tmp_path, COLLECTOR_SIGNING_KEYS_FILE=str(node_file),
                               COLLECTOR_KEYS_CHECK_INTERVAL_S="0.5",
                               COLLECTOR_METRICS_PORT=str(metrics)) as collector_log:
            stop = threading.Event()
            spawned: list[int] = []

            def flow() -> None:  # host execs the collector sees and signs, all along
                while not stop.is_set():
                    proc = subprocess.Popen(["/usr/bin/sleep", "0.3"])
                    spawned.append(proc.pid)
                    proc.wait()
                    time.sleep(0.05)
            flowing = threading.Thread(target=flow, daemon=True)
            flowing.start()
            try:
                time.sleep(3)
                web = pipe.web_port
                _wait_keys(web, "streams", {"k1": "signs"}, pipe.logs())
                _wait_keys(metrics, "collector", {"k1": "signs"}, collector_log)
                _keys("rotate", "--keyring", str(ring_file))
                _wait_keys(web, "streams", {"k1": "signs", "k2": "verifies"}, pipe.logs())
                _keys("node", NODE, "--out", str(node_file), "--keyring", str(ring_file))
                _wait_keys(metrics, "collector", {"k1": "signs", "k2": "verifies"},
                           collector_log)
                time.sleep(2)
                _keys("activate", "k2", "--keyring", str(ring_file))
                _wait_keys(web, "streams", {"k1": "verifies", "k2": "signs"}, pipe.logs())
                activated_at = len(spawned)
                time.sleep(2)  # verdicts signed k2 for events the node still signs with k1
                _keys("node", NODE, "--out", str(node_file), "--keyring", str(ring_file))
                _wait_keys(metrics, "collector", {"k1": "verifies", "k2": "signs"},
                           collector_log)
                time.sleep(3)
            finally:
                stop.set()
                flowing.join(10)
            ours = set(spawned)
            # Every exec of ours the node published, decided; the events from both keys.
            events: dict[str, tuple[int, list[tuple[str, bytes]]]] = {}
            deadline = time.monotonic() + 60
            want = ours
            for msg in pipe.consumer(EXEC.name):
                if msg is not None and msg.value() is not None:
                    env = decode_envelope(msg.value())
                    if isinstance(env.payload, ExecEvent) and env.payload.pid in want:
                        events[env.event_id] = (env.payload.pid, msg.headers())
                if {pid for pid, _ in events.values()} >= want or time.monotonic() > deadline:
                    break
            assert {pid for pid, _ in events.values()} == ours, (
                sorted(ours - {pid for pid, _ in events.values()}))
            spawn_order = {pid: i for i, pid in enumerate(spawned)}
            assert _changes_once(_kids([(b"", h) for _, h in sorted(
                events.values(), key=lambda ev: spawn_order[ev[0]])]))
            verdicts: dict[str, tuple[bytes, bytes, list[tuple[str, bytes]], float]] = {}
            order: list[str] = []
            deadline = time.monotonic() + 60
            for msg in pipe.consumer(VERDICTS.name,
                                     [verdict_partition(NODE, VERDICTS.partitions)]):
                if msg is not None and msg.value() is not None:
                    env = decode_envelope(msg.value())
                    if isinstance(env.payload, Decision) and env.event_id in events:
                        verdicts[env.event_id] = (msg.key(), msg.value(), msg.headers(),
                                                  msg.timestamp()[1] / 1000)
                        order.append(env.event_id)
                if verdicts.keys() >= events.keys() or time.monotonic() > deadline:
                    break
            assert verdicts.keys() == events.keys(), len(events.keys() - verdicts.keys())
            # The worker's verdicts: k1 until it took the activation, k2 from then on, and
            # every one checks with the node's keys.
            kids = [_kid(verdicts[e][2]) for e in order]
            assert _changes_once(kids), kids
            late = {e for e, (pid, _) in events.items() if pid in spawned[activated_at:]}
            assert late and all(_kid(verdicts[e][2]) == "k2" for e in late)
            node_keys = NodeKeys.load(node_file)
            assert sorted(node_keys.keys) == ["k1", "k2"]
            verifier = Verifier.for_node(node_keys)
            topic = pipe.topic(VERDICTS.name)
            for key, value, headers, written in verdicts.values():
                verifier.verify(topic, key, value, headers, now=written)
            # Nothing refused on either side, nothing dead-lettered, neither role restarted.
            assert _total(web, "procwarden_streams_refused_senders_total") == 0
            assert _total(web, "procwarden_streams_key_file_refused_total") == 0
            assert _total(metrics, "procwarden_collector_verdicts_refused_total") == 0
            assert _total(metrics, "procwarden_collector_key_file_refused_total") == 0
            assert pipe.read_all(DLQ.name, settle=1.0) == []
            assert worker.poll() is None and pipe.workers == [worker]
            # Each role said each step once, with the key ids it then held.
            for log in (tmp_path / "worker-0.log", Path(collector_log)):
                text = log.read_text(errors="replace")
                for held in ("keys k1, k2 verify, k1 signs", "keys k1, k2 verify, k2 signs"):
                    assert text.count(f"reloaded: {held}") == 1, (log.name, held, text[-3000:])
    finally:
        pipe.stop_workers()
