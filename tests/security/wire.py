"""Requests written byte for byte on a socket: paths exactly as given (no client normalises ``..``,
``//`` or ``%2F``), repeated headers, bare CR/LF, odd methods. Answers are read to their end."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import orjson


@dataclass
class Reply:
    status: int  # 0: the server closed the connection without an answer
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> object:
        return orjson.loads(self.body)


def send_raw(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> Reply:
    """Send ``head`` (request line and headers, without the blank line) and ``body``; read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    if not data:
        return Reply(0, [], b"")
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    if ("transfer-encoding", "chunked") in headers:
        rest = _unchunk(rest)
    return Reply(status, headers, rest)


def request(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Reply:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body or method in ("POST", "PUT", "PATCH", "DELETE"):
        lines.append(f"Content-Length: {len(body)}")
    return send_raw(port, "\r\n".join(lines).encode(), body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out
