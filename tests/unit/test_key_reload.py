"""Key files re-read by running roles (transport/keyfile.py): a rotation needs no restart, and
no new version of a file can leave a role without valid keys (issue 22)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from collectors.agent import Collector
from collectors.settings import CollectorSettings
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, VERDICTS
from streams.worker.provenance import Provenance, RecordSigner
from transport.keyfile import KeyFile
from transport.signing import BadSignature, Header, Keyring, NodeKeys, Signer, Verifier, claimed

NODE = "node-a"
EVENT = b'{"kind":"exec"}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(role: str, reason: str) -> float:
    got = REGISTRY.get_sample_value(f"procwarden_{role}_key_file_refused_total",
                                    {"reason": reason})
    return got or 0.0


def _ring_file(tmp_path: Path, ring: Keyring) -> Path:
    path = tmp_path / "keyring.json"
    ring.save(path)
    return path


def _rewrite(path: Path, text: str, mode: int = 0o600) -> None:
    """A new version of the file, in place (as `cp` over it would), with a new mtime."""
    st = path.stat()
    path.write_text(text)
    os.chmod(path, mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _event_from(keys: NodeKeys) -> list[Header]:
    return Signer.for_node(keys).headers(EXEC.name, b"w", EVENT)


def test_a_rotation_reaches_running_roles_without_refusing_a_record(tmp_path: Path) -> None:
    """rotate, hand out the node file, activate, hand it out again: at every step each side
    accepts what the other signs, and after it both sign with the new key."""
    clock = Clock()
    ring = Keyring.generate("k1")
    first = ring.node_keys(NODE)
    ring_path = _ring_file(tmp_path, ring)
    node_path = tmp_path / "node-a.json"
    ring.node_keys(NODE).save(node_path)
    worker_keys = KeyFile.keyring(ring_path, interval_s=0, clock=clock)
    node_keys = KeyFile.node_file(node_path, NODE, interval_s=0, clock=clock)
    provenance = Provenance(worker_keys, clock=lambda: 1.8e9)
    sign_verdict = RecordSigner(worker_keys, VERDICTS.name, 60, clock=lambda: 1.8e9)
    node_signer = [Signer.for_node(node_keys.value)]
    node_verifier = [Verifier.for_node(node_keys.value)]
    node_keys.subscribe(lambda k: node_signer.__setitem__(0, Signer.for_node(k)))
    node_keys.subscribe(lambda k: node_verifier.__setitem__(0, Verifier.for_node(k)))

    def both_ways() -> tuple[str, str]:
        """Each side's signature checked by the other; the key ids they signed with."""
        event = node_signer[0].headers(EXEC.name, b"w", EVENT)
        assert provenance.node_of(EXEC.name, b"w", EVENT, event) == NODE
        verdict = sign_verdict(VERDICTS.name, NODE.encode(), b"{}")
        got = node_verifier[0].verify(VERDICTS.name, NODE.encode(), b"{}", verdict, now=1.8e9)
        said = claimed(event)
        assert said is not None
        return said.kid, got.kid

    assert both_ways() == ("k1", "k1")
    ring = ring.rotated("k2")
    ring.save(ring_path)  # `procwarden keys rotate`
    assert worker_keys.poll() and not node_keys.poll()
    assert both_ways() == ("k1", "k1")  # the worker verifies k2 too, signs k1 still
    ring.node_keys(NODE).save(node_path)  # the node's file handed out again
    assert node_keys.poll() and sorted(node_keys.value.keys) == ["k1", "k2"]
    assert both_ways() == ("k1", "k1")
    ring = ring.activated("k2")
    ring.save(ring_path)  # `procwarden keys activate k2`
    assert worker_keys.poll()
    assert both_ways() == ("k1", "k2")  # the node reads k2 verdicts with the file it has
    ring.node_keys(NODE).save(node_path)
    assert node_keys.poll()
    assert both_ways() == ("k2", "k2")
    # the next rotation drops k1: a record still signed with it is refused from then on
    ring.rotated("k3").save(ring_path)
    assert worker_keys.poll()
    with pytest.raises(BadSignature, match="unknown key id 'k1'"):
        provenance.node_of(EXEC.name, b"w", EVENT, _event_from(first))
    assert both_ways() == ("k2", "k2")


def test_the_file_is_looked_at_once_per_interval_and_read_only_when_it_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    ring = Keyring.generate("k1")
    path = _ring_file(tmp_path, ring)
    keys = KeyFile.keyring(path, interval_s=5, clock=clock)
    reads: list[object] = []
    real_open = os.open

    def counted_open(*a: Any, **k: Any) -> int:
        reads.append(a)
        return real_open(*a, **k)
    ring.rotated("k2").save(path)
    monkeypatch.setattr(os, "open", counted_open)
    clock.now += 4.9
    assert not keys.poll() and keys.value.keys.keys() == {"k1"}  # not yet due
    clock.now += 0.2
    assert keys.poll() and keys.value.keys.keys() == {"k1", "k2"}
    assert len(reads) == 1
    for _ in range(3):  # unchanged: a stat, no read
        clock.now += 5
        assert not keys.poll()
    assert len(reads) == 1


def test_signing_and_verifying_never_look_at_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = Keyring.generate("k1")
    keys = KeyFile.keyring(_ring_file(tmp_path, ring), interval_s=0)
    provenance = Provenance(keys)
    sign = RecordSigner(keys, VERDICTS.name, 60)
    event = _event_from(ring.node_keys(NODE))

    def no_stat(*a: object, **k: object) -> None:
        raise AssertionError("a record's signature stat()ed the key file")
    monkeypatch.setattr(os, "stat", no_stat)
    monkeypatch.setattr(os, "open", no_stat)
    for _ in range(100):
        assert provenance.node_of(EXEC.name, b"w", EVENT, event) == NODE
        sign(VERDICTS.name, NODE.encode(), b"{}")


@pytest.mark.parametrize("case", ["gone", "others-can-read", "malformed", "half-written",
                                  "fresh-keyring", "fresh-keyring-k9", "too-large",
                                  "directory"])
def test_a_bad_new_keyring_is_refused_and_the_keys_held_stay(
        tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    ring = Keyring.generate("k1").rotated("k2")
    path = _ring_file(tmp_path, ring)
    keys = KeyFile.keyring(path, interval_s=0)
    provenance = Provenance(keys)
    event = _event_from(ring.node_keys(NODE))
    reason = {"gone": "unreadable", "others-can-read": "mode", "malformed": "malformed",
              "half-written": "malformed", "fresh-keyring": "changed-key",
              "fresh-keyring-k9": "dropped-signing-key",
              "too-large": "size", "directory": "unreadable"}[case]
    before = _refused("streams", reason)
    good = ring.activated("k2").to_json()
    if case == "gone":
        path.unlink()
    elif case == "others-can-read":
        _rewrite(path, good, mode=0o644)
    elif case == "malformed":
        _rewrite(path, '{"current": "k2", "keys": {"k2": "zz"}}')
    elif case == "half-written":
        _rewrite(path, good[:len(good) // 2])
    elif case == "fresh-keyring":  # `keys init` over the old one: every node's k1 refused
        _rewrite(path, Keyring.generate("k1").to_json())
    elif case == "fresh-keyring-k9":
        _rewrite(path, Keyring.generate("k9").to_json())
    elif case == "too-large":
        _rewrite(path, good + " " * (1 << 20))
    else:
        path.unlink()
        path.mkdir()
    caplog.set_level(logging.WARNING, "procwarden.transport.keys")
    for _ in range(3):  # refused once, not at every look
        assert not keys.poll()
    assert _refused("streams", reason) == before + 1
    assert [r for r in caplog.records if "refused" in r.getMessage()], caplog.text
    assert keys.value == ring  # the keys held stay, and still verify
    assert provenance.node_of(EXEC.name, b"w", EVENT, event) == NODE
    # a good version afterwards is taken
    if case == "directory":
        path.rmdir()
    path.unlink(missing_ok=True)
    ring.activated("k2").save(path)
    assert keys.poll() and keys.value.current == "k2"


def test_each_distinct_problem_is_logged_once(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = _ring_file(tmp_path, Keyring.generate("k1"))
    keys = KeyFile.keyring(path, interval_s=0)
    caplog.set_level(logging.WARNING, "procwarden.transport.keys")
    before = _refused("streams", "malformed")
    for _ in range(5):  # the same bad file written again and again
        _rewrite(path, "{")
        keys.poll()
    _rewrite(path, "[]")  # another problem
    keys.poll()
    assert _refused("streams", "malformed") == before + 6
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 2, lines


def test_a_node_file_of_another_node_or_dropping_the_signing_key_is_refused(
        tmp_path: Path) -> None:
    ring = Keyring.generate("k1")
    path = tmp_path / "node.json"
    ring.node_keys(NODE).save(path)
    keys = KeyFile.node_file(path, NODE, interval_s=0)
    before = _refused("collector", "node"), _refused("collector", "dropped-signing-key")
    _rewrite(path, ring.node_keys("node-b").to_json())  # node-b's file, handed to node-a
    assert not keys.poll()
    _rewrite(path, Keyring.generate("k2").node_keys(NODE).to_json())  # a foreign generation
    assert not keys.poll()
    assert (_refused("collector", "node"), _refused("collector", "dropped-signing-key")) == (
        before[0] + 1, before[1] + 1)
    assert keys.value == ring.node_keys(NODE)


def test_a_node_file_whose_signing_key_is_missing_does_not_load() -> None:
    """Before: it loaded, and the collector's first publish raised (nothing to sign with)."""
    good = json.loads(Keyring.generate("k1").node_keys(NODE).to_json())
    for bad in ({**good, "current": "k9"},
                {**good, "keys": {"k1": ["00" * 8, "00" * 8]}},  # short keys
                {**good, "keys": {"K 1": good["keys"]["k1"]}, "current": "K 1"}):
        with pytest.raises(ValueError):
            NodeKeys.from_json(json.dumps(bad))


def test_a_first_version_that_is_bad_stops_the_role_from_starting(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(Keyring.generate().to_json())
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="0600"):
        KeyFile.keyring(path)
    with pytest.raises(ValueError):
        KeyFile.keyring(tmp_path / "none.json")


def test_the_gauge_says_which_key_ids_a_role_holds(tmp_path: Path) -> None:
    ring = Keyring.generate("k1")
    path = _ring_file(tmp_path, ring)
    keys = KeyFile.keyring(path, interval_s=0)

    def held() -> dict[str, str]:
        return {s.labels["kid"]: s.labels["use"] for m in REGISTRY.collect()
                if m.name == "procwarden_streams_keys" for s in m.samples if s.value == 1}
    assert held() == {"k1": "signs"}
    ring.rotated("k2").activated("k2").save(path)
    assert keys.poll()
    assert held() == {"k1": "verifies", "k2": "signs"}


def test_a_collector_follows_its_node_file_when_it_derives_from_the_keyring(
        tmp_path: Path) -> None:
    """The one-machine case: the collector's keys derived from the local keyring."""
    ring = Keyring.generate("k1")
    path = _ring_file(tmp_path, ring)
    settings = CollectorSettings(node=NODE, state_dir=tmp_path / "state", dry_run=True)
    keys = KeyFile.node_from_keyring(path, NODE, interval_s=0)
    collector = Collector(KafkaConnection(bootstrap_servers="127.0.0.1:9"), settings,
                          keys=keys)
    try:
        assert collector.enforcer is not None
        assert collector.publisher.signer is not None
        assert collector.publisher.signer.kid == "k1"
        ring = ring.rotated("k2").activated("k2")
        ring.save(path)
        assert keys.poll()
        assert collector.publisher.signer.kid == "k2"
        verdict = Signer.for_streams(ring).headers(VERDICTS.name, NODE.encode(), b"{}",
                                                   to_node=NODE, expires=int(time.time()) + 60)
        assert collector.enforcer.verifier.verify(VERDICTS.name, NODE.encode(), b"{}", verdict,
                                                  now=time.time()).kid == "k2"
    finally:
        collector.publisher.close()


def test_the_watcher_thread_picks_up_a_change_of_an_idle_role(tmp_path: Path) -> None:
    ring = Keyring.generate("k1")
    path = _ring_file(tmp_path, ring)
    keys = KeyFile.keyring(path, interval_s=0.02).start()
    try:
        ring.rotated("k2").save(path)
        deadline = time.monotonic() + 5
        while "k2" not in keys.value.keys and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "k2" in keys.value.keys
    finally:
        keys.stop()
