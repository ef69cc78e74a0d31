"""Record signatures (transport/signing.py): who may sign what, and what a forger cannot do."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transport.signing import (
    AUTH,
    STREAMS,
    BadSignature,
    Keyring,
    NodeKeys,
    Signer,
    Verifier,
    _head_start,
    _reference_read_auth,
    claimed,
    node_signer,
)

RING = Keyring.generate("k1")
NOW = 1_800_000_000.0
V, E = "procwarden.verdicts", "procwarden.exec"


def _verdict(ring: Keyring = RING, node: str = "node-a", value: bytes = b'{"v":1}',
             expires: int = int(NOW) + 60) -> list[tuple[str, bytes]]:
    return Signer.for_streams(ring).headers(V, node.encode(), value, to_node=node,
                                            expires=expires)


def _tampered(headers: list[tuple[str, bytes]], *, signer: str | None = None,
              kid: str | None = None, expires: int | None = None,
              tag: bytes | None = None) -> list[tuple[str, bytes]]:
    """The headers with fields of their `pw-auth` changed, the rest (the tag too) kept."""
    got = _reference_read_auth(list(headers))
    assert isinstance(got, tuple), got
    was_signer, was_kid, was_expires, header, at = got
    head = _head_start(signer or was_signer, kid or was_kid)
    value = (head + (was_expires if expires is None else expires).to_bytes(8, "big")
             + (header[at:] if tag is None else tag))
    return [(n, value if n == AUTH else v) for n, v in headers]


def _refused(reason: str, verifier: Verifier, topic: str, key: bytes | None,
             value: bytes | None, headers: object, **kw: object) -> None:
    with pytest.raises(BadSignature) as err:
        verifier.verify(topic, key, value, headers, now=NOW, **kw)  # type: ignore[arg-type]
    assert err.value.reason == reason, err.value


def test_a_record_carries_one_header_of_the_documented_layout() -> None:
    # (defined once, in the compiled reader: renaming or reshaping it breaks every running peer)
    ((name, value),) = _verdict(node="node-a", expires=0x0102030405)
    assert name == AUTH == "pw-auth"
    assert value[:20] == b"\x01\x07streams\x02k1\x00\x00\x00\x01\x02\x03\x04\x05"
    assert len(value) == 20 + 16  # and the tag: HMAC-SHA256 to 128 bits
    assert claimed([(name, value)]) == (STREAMS, "k1", 0x0102030405)


def test_a_verdict_signed_for_a_node_is_accepted_by_that_node_only() -> None:
    node_a, node_b = Verifier.for_node(RING.node_keys("node-a")), \
        Verifier.for_node(RING.node_keys("node-b"))
    signed = node_a.verify(V, b"node-a", b'{"v":1}', _verdict(), now=NOW)
    assert (signed.signer, signed.kid, signed.expires) == (STREAMS, "k1", int(NOW) + 60)
    _refused("mismatch", node_b, V, b"node-a", b'{"v":1}', _verdict())


def test_a_node_cannot_forge_a_verdict_for_another_node_nor_for_itself_as_the_stream_app(
        ) -> None:
    # node-a holds only its own keys: what it signs is its own records.
    forger = Signer.for_node(RING.node_keys("node-a"))
    forged = forger.headers(V, b"node-b", b'{"v":1}')
    _refused("signer", Verifier.for_node(RING.node_keys("node-b")), V, b"node-b", b'{"v":1}',
             forged)
    # ...and it cannot relabel its signature as the stream app's.
    relabelled = _tampered(forged, signer=STREAMS, expires=int(NOW) + 60)
    _refused("mismatch", Verifier.for_node(RING.node_keys("node-b")), V, b"node-b",
             b'{"v":1}', relabelled)


@pytest.mark.parametrize("change", ["value", "key", "topic", "expiry", "kid", "signature"])
def test_any_change_to_a_signed_verdict_is_refused(change: str) -> None:
    node_a = Verifier.for_node(RING.node_keys("node-a"))
    headers = _verdict()
    topic, key, value = V, b"node-a", b'{"v":1}'
    if change == "value":
        value = b'{"v":2}'
    elif change == "key":
        key = b"node-b"
    elif change == "topic":
        topic = "procwarden.policy"
    elif change == "expiry":
        headers = _tampered(headers, expires=int(NOW) + 3600)
    elif change == "kid":
        headers = _tampered(headers, kid="k0")
    else:
        headers = _tampered(headers, tag=bytes(16))
    reason = "key" if change == "kid" else "mismatch"
    _refused(reason, node_a, topic, key, value, headers)


def test_unsigned_expired_and_malformed_verdicts_are_refused() -> None:
    node_a = Verifier.for_node(RING.node_keys("node-a"))
    _refused("unsigned", node_a, V, b"node-a", b"{}", None)
    _refused("unsigned", node_a, V, b"node-a", b"{}", [("other", b"x")])
    _refused("expired", node_a, V, b"node-a", b"{}", _verdict(value=b"{}",
                                                             expires=int(NOW) - 1))
    no_expiry = Signer.for_streams(RING).headers(V, b"node-a", b"{}", to_node="node-a")
    _refused("expiry", node_a, V, b"node-a", b"{}", no_expiry)
    ((_, good),) = _verdict(value=b"{}")
    for bad in ([(AUTH, good), (AUTH, good)], [(AUTH, None)], [(AUTH, good.decode("latin-1"))],
                [(AUTH, b"\x02" + good[1:])], [(AUTH, good[:-1])], [(AUTH, good + b"\0")],
                [(AUTH, good[:1])], [(AUTH, good[:9].replace(b"streams", b"stre\xffms") + good[9:])],
                [(AUTH, good + bytes(600))], [("x", b"y", b"z")]):
        _refused("headers", node_a, V, b"node-a", b"{}", bad)


@given(st.lists(st.tuples(st.sampled_from(["pw-auth", "pw-sig", "x"]),
                          st.none() | st.binary(max_size=300)), max_size=6),
       st.none() | st.binary(max_size=50))
def test_any_headers_raise_only_bad_signature(headers: list[tuple[str, bytes | None]],
                                              value: bytes | None) -> None:
    for verifier in (Verifier.for_node(RING.node_keys("node-a")), Verifier.for_streams(RING)):
        for from_streams in (False, True):
            with contextlib.suppress(BadSignature):
                verifier.verify(V, b"k", value, headers, now=NOW, from_streams=from_streams)


def test_the_stream_app_knows_which_node_signed_and_its_own_records_only_from_itself() -> None:
    streams = Verifier.for_streams(RING)
    event = Signer.for_node(RING.node_keys("node-a")).headers(E, b"c1", b"{}")
    assert streams.verify(E, b"c1", b"{}", event, now=NOW).node == "node-a"
    _refused("signer", streams, E, b"c1", b"{}", event, from_streams=True)
    own = Signer.for_streams(RING).headers("procwarden.policy", b"g", b"{}")
    assert streams.verify("procwarden.policy", b"g", b"{}", own, now=NOW,
                          from_streams=True).signer == STREAMS
    _refused("signer", streams, "procwarden.policy", b"g", b"{}", own)  # not a node's
    # A node's name in the signer header is bound into the signature: no renaming.
    renamed = _tampered(event, signer=node_signer("node-b"))
    _refused("mismatch", streams, E, b"c1", b"{}", renamed)
    # A tombstone is signed as one: it is not the same record as an empty value.
    tomb = Signer.for_node(RING.node_keys("node-a")).headers(E, b"c1", None)
    assert streams.verify(E, b"c1", None, tomb, now=NOW).node == "node-a"
    _refused("mismatch", streams, E, b"c1", b"", tomb)


def test_rotation_refuses_no_legitimate_record_at_any_step() -> None:
    # 1. A new key is added: everyone still signs with k1, and whoever has the new keyring
    #    (or node file) verifies k1 and k2.
    added = RING.rotated("k2")
    assert added.current == "k1" and set(added.keys) == {"k1", "k2"}
    assert Signer.for_node(added.node_keys("node-a")).kid == "k1"
    # 2. Once every holder has it, it signs: a node that has the new file takes both the
    #    stream app's old and new verdicts, and the stream app takes the node's old and new
    #    events; a node still on the old file is the only one to refuse the new key.
    active = added.activated("k2")
    old, new = _verdict(RING), _verdict(active)
    node_a = Verifier.for_node(added.node_keys("node-a"))
    assert node_a.verify(V, b"node-a", b'{"v":1}', old, now=NOW).kid == "k1"
    assert node_a.verify(V, b"node-a", b'{"v":1}', new, now=NOW).kid == "k2"
    streams = Verifier.for_streams(active)
    for ring in (RING, active):
        event = Signer.for_node(ring.node_keys("node-a")).headers(E, b"c1", b"{}")
        assert streams.verify(E, b"c1", b"{}", event, now=NOW).node == "node-a"
    _refused("key", Verifier.for_node(RING.node_keys("node-a")), V, b"node-a", b'{"v":1}', new)
    # 3. The next rotation drops k1.
    later = active.rotated("k3")
    assert set(later.keys) == {"k2", "k3"} and later.current == "k2"
    _refused("key", Verifier.for_node(later.node_keys("node-a")), V, b"node-a", b'{"v":1}',
             old)


def test_key_files_are_private_from_the_first_byte_and_refused_when_not(
        tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        RING.save(tmp_path / "keys" / "ring.json")
        RING.node_keys("node-a").save(tmp_path / "keys" / "node-a.json")
    finally:
        os.umask(old)
    for name in ("ring.json", "node-a.json"):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert Keyring.load(tmp_path / "keys" / "ring.json").keys == RING.keys
    loaded = NodeKeys.load(tmp_path / "keys" / "node-a.json")
    assert loaded.keys == RING.node_keys("node-a").keys
    (tmp_path / "keys" / "ring.json").chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        Keyring.load(tmp_path / "keys" / "ring.json")
    (tmp_path / "bad.json").write_text("[1]")
    (tmp_path / "bad.json").chmod(0o600)
    with pytest.raises(ValueError, match="not a procwarden keyring"):
        Keyring.load(tmp_path / "bad.json")


def test_a_keyring_refuses_weak_keys_and_odd_key_ids() -> None:
    with pytest.raises(ValueError, match="shorter than 32"):
        Keyring({"k1": b"short"}, "k1")
    with pytest.raises(ValueError, match="bad key id"):
        Keyring({"K 1": b"x" * 32}, "K 1")
    with pytest.raises(ValueError, match="current key id"):
        Keyring({"k1": b"x" * 32}, "k2")
    assert RING.keys["k1"].hex() not in repr(RING)


_TEXT = st.text(st.characters(codec=None) | st.sampled_from("\0\ud800\udfff\u00e9"), max_size=40)
_BYTES = st.none() | st.binary(max_size=3000)


@given(st.binary(min_size=0, max_size=64), _TEXT, st.binary(min_size=1, max_size=300),
       st.integers(0, 2**64 - 1), _BYTES, _BYTES)
def test_the_compiled_tag_is_the_python_reference_on_any_record(
        secret: bytes, topic: str, start: bytes, expires: int, key: bytes | None,
        value: bytes | None) -> None:
    from transport.signing import _HmacKey, _reference_mac

    hk = _HmacKey(secret)
    header = hk.seal(topic, start, expires, key, value)
    at = len(start) + 8
    assert header[:at] == start + expires.to_bytes(8, "big")
    assert header[at:] == _reference_mac(hk, topic, header[:at], key, value)
    assert hk.opens(header, at, topic, key, value)
    # One bit off anywhere, or not the header's length: no match.
    for i in range(len(header)):
        if i < at:  # (a changed head is another record: the tag was not made for it)
            continue
        flipped = bytearray(header)
        flipped[i] ^= 1
        assert not hk.opens(bytes(flipped), at, topic, key, value)
    for bad_at in (at - 1, at + 1, -1, 0):
        assert not hk.opens(header, bad_at, topic, key, value)
    assert not hk.opens(header + b"\0", at, topic, key, value)
    # An absent key or value is not an empty one.
    if key is None:
        assert not hk.opens(header, at, topic, b"", value)
    if value is None:
        assert not hk.opens(header, at, topic, key, b"")


_NAME = st.sampled_from(["pw-auth", "pw-auth2", "pw-sig", "other", ""])
_FIELD = st.binary(min_size=0, max_size=4) | st.sampled_from([b"streams", b"node:a", b"\xff"])
_AUTH = st.builds(lambda version, signer, kid, expires, tag, cut: (
    bytes((version, len(signer))) + signer + bytes((len(kid),)) + kid + expires + tag)[:cut],
    st.sampled_from([1, 1, 1, 0, 2]), _FIELD, _FIELD, st.binary(min_size=8, max_size=8),
    st.binary(min_size=15, max_size=17), st.integers(0, 400))
_VALUE = (st.none() | _AUTH | st.binary(max_size=300) | st.text(max_size=30)
          | st.sampled_from([b"\x01" * 513, bytearray(b"x")]))


@given(st.lists(st.tuples(_NAME, _VALUE) | st.sampled_from([("pw-auth",), ["pw-auth", b""],
                                                            (b"pw-auth", b"")]), max_size=6))
def test_the_compiled_header_reader_reads_as_the_python_reference(headers: list[object]) -> None:
    from transport import _fast_mac

    assert _fast_mac.read_auth(headers) == _reference_read_auth(headers)


def test_the_compiled_reader_refuses_what_is_not_a_record() -> None:
    from transport import _fast_mac

    with pytest.raises(ValueError, match="64 bytes"):
        _fast_mac.Key(b"k" * 65)
    key = _fast_mac.Key(b"k" * 32)
    with pytest.raises(TypeError):
        key.seal(b"topic", b"\x01", 0, None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        key.seal("topic", b"\x01", 0, "a str key", None)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        key.seal("topic", b"\x01", -1, None, None)
    with pytest.raises(ValueError, match="too long"):
        key.seal("topic", b"\x01" * 500, 0, None, None)
    with pytest.raises(TypeError):
        key.opens("not bytes", 0, "topic", None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _fast_mac.read_auth(((AUTH, b""),))  # type: ignore[arg-type]
    assert _fast_mac.read_auth([]) is None
    with pytest.raises(ValueError, match="1 to 255"):
        Signer("x" * 256, lambda *a: None, "k1")


def test_a_signer_name_with_a_nul_is_refused() -> None:
    event = Signer.for_node(RING.node_keys("node-a")).headers(E, b"c1", b"{}")
    odd = _tampered(event, signer="node:node-a\0k1")
    _refused("signer", Verifier.for_streams(RING), E, b"c1", b"{}", odd)


def test_the_keys_commands_rotate_in_two_steps(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PROCWARDEN_KEYS_DIR": str(tmp_path / "keys")}

    def keys(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "procwarden.cli", "keys", *args],
                              env=env, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parents[2])
        return done.stdout

    keys("init")
    assert "k2 added" in keys("rotate")
    ring = Keyring.load(tmp_path / "keys" / "keyring.json")
    assert (sorted(ring.keys), ring.current) == (["k1", "k2"], "k1")
    keys("activate", "k2")
    keys("node", "node-a", "--out", str(tmp_path / "node-a.json"))
    node = NodeKeys.load(tmp_path / "node-a.json")
    assert (node.node, node.current, sorted(node.keys)) == ("node-a", "k2", ["k1", "k2"])
    assert node.keys == Keyring.load(tmp_path / "keys" / "keyring.json").node_keys("node-a").keys
