"""The record MAC of transport/signing.py, compiled (transport/fast_mac.c)."""

HEADER_NAMES: tuple[str, str, str, str]  # signer, key id, expiry, signature
MAX_HEADER: int  # bytes of one of them: anything longer is refused unread

class Key:
    def __init__(self, secret: bytes) -> None: ...
    def hexmac(self, topic: str, signer: str, kid: str, expires: str, key: bytes | None,
               value: bytes | None, /) -> bytes: ...
    def matches(self, signature: str, topic: str, signer: str, kid: str, expires: str,
                key: bytes | None, value: bytes | None, /) -> bool: ...

_Four = tuple[str | None, str | None, str | None, str | None]

def read_headers(headers: object, /) -> _Four | str | None: ...
