"""Process state persistence: what a decision changes is noticed, and a snapshot restores it."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import DecodeError, Envelope, ProcessSnapshot, decode_envelope, encode
from streams.engine import ProcessState
from streams.engine.state import StateEffect
from streams.worker.session import DecisionSession

_pids = st.integers(1, 6)
_pairs = st.tuples(_pids, st.integers(100, 102))
_effects = st.builds(
    StateEffect,
    risk=st.none() | st.tuples(_pids, st.sampled_from(["nc", "nmap"])),
    probe_shell=st.none() | _pids,
    admit_pgid=st.none() | _pids,
    forget_pid=st.none() | _pids,
    tunnel_sighting=st.none() | _pairs,
    tunnel_reported=st.none() | _pairs,
    drift_path=st.none() | st.sampled_from(["/tmp/a", "/tmp/b"]),
    clean_path=st.none() | st.sampled_from(["/tmp/a", "/tmp/b"]),
)


def _content(state: ProcessState) -> tuple[object, ...]:
    return (state.risk, state.probe_shells, state.admitted_pgids, state.tunnels, state.drift)


@given(st.lists(st.none() | _effects, max_size=30))
def test_every_change_is_noticed_and_survives_the_wire(effects: list[StateEffect | None]) -> None:
    state = ProcessState()
    for effect in effects:
        before = copy.deepcopy(_content(state))
        seq = state.seq
        changed = state.apply(effect)
        # Never missed (a missed change is a snapshot not written); a spurious one only costs
        # a message (an effect that marks a pid and forgets it at once).
        if _content(state) != before:
            assert changed
        assert state.seq == seq + changed
    env = Envelope.wrap(state.snapshot("c1"), event_id="s", node="n", ts=1.0)
    snap = decode_envelope(encode(env)).payload
    assert isinstance(snap, ProcessSnapshot)
    restored = ProcessState.restore(snap)
    assert _content(restored) == _content(state) and restored.seq == state.seq


def test_a_session_keeps_its_own_newer_state_over_an_echo() -> None:
    session = DecisionSession()
    state = ProcessState()
    state.apply(StateEffect(drift_path="/tmp/a"))
    old = state.snapshot("c1")
    state.apply(StateEffect(drift_path="/tmp/b"))
    assert session.restore_state(state.snapshot("c1"))
    assert not session.restore_state(old)  # the echo of an earlier change
    assert session.states["c1"].drift == {"/tmp/a", "/tmp/b"}


def _state_record(**snapshot: object) -> bytes:
    body = {"workload_id": "c1", "seq": 1, **snapshot}
    return encode({"schema_version": 1, "event_id": "e1", "node": "n1", "cluster": "default",
                   "ts": 1.0, "kind": "process_state", "payload": body})


def test_a_snapshot_keyed_by_anything_but_a_pid_is_refused_at_decode() -> None:
    # Found by bench/fuzz.py: the decoder took any text as a pid and restoring it raised
    # a bare ValueError out of int().
    for key in ("abc", "-1", "1.5", "٣", "9" * 21):
        with pytest.raises(DecodeError):
            decode_envelope(_state_record(risk={key: "nc"}))
    assert decode_envelope(_state_record(risk={"42": "nc"}))


@pytest.mark.parametrize("snapshot", [
    {"risk": {"7": "not-a-risk"}},
    {"overflow": {"risky_pids": "not-a-risk"}},
    {"overflow": {"not-a-cap": ""}},
])
def test_a_snapshot_naming_what_this_build_does_not_know_is_not_restored(
        snapshot: dict[str, object]) -> None:
    # Restoring it used to succeed, and the workload's next exec under a risky parent raised
    # KeyError out of the engine (SUSPICIOUS[risk]) on every retry.
    session = DecisionSession()
    snap = decode_envelope(_state_record(**snapshot)).payload
    assert isinstance(snap, ProcessSnapshot)
    with pytest.raises(ValueError, match="unknown"):
        session.restore_state(snap)
    assert "c1" not in session.states
