"""A minimal HTTP/1.1 client over a raw socket that reports each chunk of a chunked response as
it was framed on the wire, so tests can see exactly how the gateway cut a stream."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit


class RawResponse:
    """The response head is read on first use, so a test can drop the connection before it arrives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self._status: int | None = None
        self._headers: dict[str, str] = {}

    def _read_head(self) -> None:
        if self._status is not None:
            return
        status_line = self.file.readline().decode()
        self._status = int(status_line.split()[1])
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            self._headers[name.strip().lower()] = value.strip()

    @property
    def status(self) -> int:
        self._read_head()
        assert self._status is not None
        return self._status

    @property
    def headers(self) -> dict[str, str]:
        self._read_head()
        return self._headers

    def chunks(self) -> list[bytes]:
        """Read the chunked body to its end; one entry per HTTP chunk."""
        return list(self.iter_chunks())

    def iter_chunks(self):  # type: ignore[no-untyped-def]
        self._read_head()
        if self.headers.get("transfer-encoding") != "chunked":
            length = int(self.headers.get("content-length", "0"))
            yield self.file.read(length)
            return
        while True:
            size_line = self.file.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.file.readline()
                return
            data = self.file.read(size)
            self.file.read(2)
            yield data

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def request(url: str, method: str = "POST", body: bytes = b"", headers: dict[str, str] | None = None) -> RawResponse:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
    lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return RawResponse(sock)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.005) -> float:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; return the seconds it took, or raise after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
    return time.monotonic() - start
