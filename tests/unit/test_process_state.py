"""Process state persistence: what a decision changes is noticed, and a snapshot restores it."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from schemas import Envelope, ProcessSnapshot, decode_envelope, encode
from streams.engine import ProcessState
from streams.engine.state import StateEffect
from streams.session import DecisionSession

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
