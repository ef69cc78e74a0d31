"""What the collector and its exec answerer say to each other (collectors/enforcement/answerer_protocol.py):
each message reads back as it was sent, the same on both ends; anything else is refused."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.enforcement.answerer_link import AnswererLink
from collectors.enforcement.answerer_protocol import (
    Ask,
    Counts,
    Drift,
    Forget,
    HoldMessage,
    Metrics,
    ProtocolError,
    Stop,
    ToAnswerer,
    ToCollector,
    VerdictMessage,
    decode_to_answerer,
    decode_to_collector,
    encode,
)
from collectors.enforcement.cache_key import cache_key
from collectors.enforcement.exec_answerer import Hold, _Metrics
from collectors.settings import CollectorSettings
from schemas import FailMode, FileEvent, FileOp, Origin

ASK = Ask("n1:1:held-1-1", 4242, "cid-1", "/usr/bin/ünï odd", True, Origin.MODIFIED, False)


@pytest.mark.parametrize("hold", [
    Hold(True, "s1"),
    Hold(True, "s2", writes=True, fail_mode=FailMode.CLOSED),
    Hold(False, "", fail_mode=FailMode.OPEN),
])
def test_a_hold_reads_back_as_it_was_sent(hold: Hold) -> None:
    wire = encode(hold.message("cid-1"))
    assert orjson.loads(wire)["kind"] == "hold"
    message = decode_to_answerer(wire)
    assert isinstance(message, HoldMessage)
    assert (message.workload, message.hold) == ("cid-1", hold)


@pytest.mark.parametrize("message", [
    VerdictMessage("n1:1:held-1-1", False, "s1", True), Forget("cid-1"), Stop(),
])
def test_each_message_to_the_answerer_reads_back(message: ToAnswerer) -> None:
    assert decode_to_answerer(encode(message)) == message


@pytest.mark.parametrize("message", [
    ASK,
    Drift(FileEvent(workload_id="cid-1", op=FileOp.MODIFY, path="/bin/sh")),
    Metrics(Counts(**_Metrics().snapshot(), read_errors=1, overflows=0)),
])
def test_each_message_to_the_collector_reads_back(message: ToCollector) -> None:
    assert decode_to_collector(encode(message)) == message


def test_the_wire_is_plain_json_with_named_fields() -> None:
    assert orjson.loads(encode(ASK)) == {
        "kind": "ask", "event_id": "n1:1:held-1-1", "pid": 4242, "workload": "cid-1",
        "path": "/usr/bin/ünï odd", "injected": True, "origin": "modified", "netcat": False}


@pytest.mark.parametrize(("name", "asked"), [
    (b"/tmp/top", "/tmp/top"),
    ("/tmp/ünï".encode(), "/tmp/ünï"),
    (b"/tmp/\xfftop", "/tmp/\ufffdtop"),  # not UTF-8
    (b"/tmp/\xed\xa0\x80", "/tmp/\ufffd\ufffd\ufffd"),  # an encoded surrogate
])
def test_a_held_exec_of_any_name_can_be_asked_about(name: bytes, asked: str) -> None:
    """A file named with bytes that are not UTF-8 (read as lone surrogates) made the question
    fail to encode, and the answerer allowed that exec ("answering a held exec failed")."""
    key = cache_key("cid-1", "s1", os.fsdecode(name), True, Origin.NEW, frozenset())
    message = decode_to_collector(encode(Ask.held("n1:1:held-1-1", 7, key)))
    assert message == Ask("n1:1:held-1-1", 7, "cid-1", asked, False, Origin.NEW, False)


def _ask(**change: Any) -> bytes:
    fields = orjson.loads(encode(Ask("e", 1, "w", "/bin/sh", False, Origin.IMAGE, False)))
    fields.update(change)
    return orjson.dumps({k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize(("wire", "why"), [
    (_ask(kind="asks"), "Invalid value 'asks'"),  # an unknown kind
    (_ask(euid=0), "unknown field `euid`"),
    (_ask(netcat=None), "missing required field `netcat`"),
    (_ask(pid=True), "Expected `int`, got `bool`"),
    (_ask(pid="1"), "Expected `int`, got `str`"),
    (_ask(injected=1), "Expected `bool`, got `int`"),
    (_ask(origin="mars"), "Invalid enum value 'mars'"),
    (encode(Stop()), "Invalid value 'stop'"),  # a message for the other end
    (b'["ask", "e", 1, "w", "/bin/sh", false, "image", false]', "Expected `object`"),
    (b"{not json", "malformed"),
    (b"", "truncated"),
])
def test_anything_else_is_refused_by_the_collector(wire: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_to_collector(wire)


@pytest.mark.parametrize(("wire", "why"), [
    (b'{"kind":"hold","workload":"c","pre_exec":true,"stamp":"s","writes":false,'
     b'"fail_mode":"sometimes"}', "Invalid enum value 'sometimes'"),
    (b'{"kind":"hold","workload":"c","pre_exec":true,"stamp":"s","writes":false}',
     "missing required field `fail_mode`"),
    (b'{"kind":"verdict","event_id":"e","allow":"yes","stamp":"s","any_caller":false}',
     "Expected `bool`, got `str`"),
    (b'{"kind":"stop","now":true}', "unknown field `now`"),
    (b'{"kind":"forget"}', "missing required field `workload`"),
    (b'{"workload":"c"}', "missing required field `kind`"),
    (encode(ASK), "Invalid value 'ask'"),
])
def test_anything_else_is_refused_by_the_answerer(wire: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_to_answerer(wire)


def test_a_refused_message_is_logged_and_the_next_one_still_heard(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    heard: list[Ask | Drift] = []
    link = AnswererLink(CollectorSettings(state_dir=tmp_path, dry_run=True), lambda: None,
                        heard.append)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link._socket = ours
    with theirs:
        theirs.send(_ask(kind="hello"))
        theirs.send(encode(ASK))
    with caplog.at_level(logging.ERROR, "procwarden.collector.answerer_link"):
        link._read()  # until the answerer's end is closed
    ours.close()
    assert heard == [ASK]
    assert "refused from the exec answerer" in caplog.text and "hello" in caplog.text


def test_an_unknown_fail_mode_in_a_holds_file_is_refused() -> None:
    with pytest.raises(ValueError):
        Hold.of_fields([True, "s", False, "sometimes"])


@pytest.mark.parametrize(("saved", "hold"), [
    ([True, "s1"], Hold(True, "s1")),  # before writes and fail modes were held
    ([True, "s2", True, ""], Hold(True, "s2", writes=True)),  # "" was no fail mode
    ([False, "s3", False, "closed"], Hold(False, "s3", fail_mode=FailMode.CLOSED)),
])
def test_a_holds_file_of_an_earlier_collector_still_reads(saved: list[object], hold: Hold
                                                         ) -> None:
    assert Hold.of_fields(saved) == hold
    assert Hold.of_fields(Hold.of_fields(saved).fields()) == hold
