"""The record signature of transport/signing.py, compiled (transport/fast_mac.c)."""

from typing import Any

AUTH: str  # the header's name
VERSION: int  # of its layout
TAG: int  # bytes of its tag
MAX_FIELD: int  # bytes of its signer or key id
MAX_HEADER: int  # bytes of it: anything longer is refused unread

class Key:
    def __init__(self, secret: bytes) -> None: ...
    def seal(self, topic: str, head_start: bytes, expires: int, key: bytes | None,
             value: bytes | None, /) -> bytes: ...
    def opens(self, header: bytes, tag_at: int, topic: str, key: bytes | None,
              value: bytes | None, /) -> bool: ...

def read_auth(headers: list[Any], /) -> tuple[str, str, int, bytes, int] | str | None: ...
