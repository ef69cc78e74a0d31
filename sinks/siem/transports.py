"""Where incidents go: syslog over UDP, TCP or TLS (RFC 6587 octet counting), or a webhook.

Each transport sends a batch or raises; the forwarder retries and never drops a batch.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["Transport", "WebhookTransport", "default_max_bytes", "syslog_transport"]


class Transport(Protocol):
    def send(self, messages: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class _UdpTransport:
    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, messages: Sequence[bytes]) -> None:
        for message in messages:
            self.sock.sendto(message[:65000], self.address)

    def close(self) -> None:
        self.sock.close()


class _StreamTransport:
    """TCP or TLS with octet-counting framing (`LEN SP MSG`), reconnecting when needed."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None,
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def send(self, messages: Sequence[bytes]) -> None:
        payload = b"".join(str(len(m)).encode() + b" " + m for m in messages)
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.sendall(payload)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def default_max_bytes(url: str) -> int:
    """The largest incident to send to `url` by default: rsyslog's usual maxMessageSize over
    a stream; over UDP, what receivers commonly take in one datagram."""
    return 8192 if urlsplit(url).scheme == "udp" else 64 * 1024


def syslog_transport(url: str, *, ca_file: str = "", cert_file: str = "",
                     key_file: str = "") -> Transport:
    """`udp://host:514`, `tcp://host:514` or `tls://host:6514`."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"syslog address {url!r} needs a host and a port")
    if parts.scheme == "udp":
        return _UdpTransport(parts.hostname, parts.port)
    if parts.scheme == "tcp":
        return _StreamTransport(parts.hostname, parts.port, None)
    if parts.scheme == "tls":
        context = ssl.create_default_context(cafile=ca_file or None)
        if cert_file:
            context.load_cert_chain(cert_file, key_file or None)
        return _StreamTransport(parts.hostname, parts.port, context)
    raise ValueError(f"syslog address {url!r}: the scheme must be udp, tcp or tls")


class WebhookTransport:
    """POSTs a JSON array of incidents; any answer but 2xx is a failure to retry."""

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0) -> None:
        self.url, self.token, self.timeout = url, token, timeout

    def send(self, messages: Sequence[bytes]) -> None:
        body = b"[" + b",".join(messages) + b"]"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                if not 200 <= resp.status < 300:
                    raise OSError(f"webhook answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise OSError(f"webhook answered {exc.code}") from None

    def close(self) -> None:
        return None
