"""A small HTTP/1.1 keep-alive client on asyncio streams, for the hot paths.

The provider's notifier sends one POST per notification attempt, and the benchmark's load generator
must outrun the server it measures; a general-purpose client (httpx) spends several hundred
microseconds of CPU per request, which would make either of them the bottleneck. This one does only
what those two need: plain ``http://`` origins, a pool of idle keep-alive connections per origin,
``Content-Length`` and ``chunked`` response bodies, ``Connection: close``, and one retry on a fresh
connection when a pooled one turns out to have been closed by the server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """The request failed below HTTP (refused, reset, timed out, unparsable response)."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def status_code(self) -> int:  # the httpx spelling, so callers can take either
        return self.status

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """At most ``max_per_origin`` connections per origin: further requests wait for one to come free
    (opening and closing connections under load would cost both ends far more than the wait)."""

    def __init__(self, max_per_origin: int = 64) -> None:
        self.max_per_origin = max_per_origin
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._origins: dict[str, tuple[str, int, str]] = {}

    def _split(self, url: str) -> tuple[str, int, str]:
        hit = self._origins.get(url)
        if hit is None:
            u = urlsplit(url)
            if u.scheme != "http" or not u.hostname:
                raise HttpError(f"only http:// URLs are supported, found {url!r}")
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            hit = (u.hostname, u.port or 80, target)
            if len(self._origins) < 10_000:
                self._origins[url] = hit
        return hit

    async def request(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> Response:
        host, port, target = self._split(url)
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
        if headers:
            head.extend(f"{k}: {v}" for k, v in headers.items())
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        key = (host, port)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.max_per_origin)
        async with slots:  # waiting for a free connection is not part of the request's timeout
            try:
                async with asyncio.timeout(timeout):
                    return await self._send(key, payload)
            except TimeoutError:
                raise HttpError(f"timed out after {timeout:.3g}s") from None

    async def _send(self, key: tuple[str, int], payload: bytes) -> Response:
        host, port = key
        idle = self._idle.get(key)
        while idle:
            reader, writer = idle.pop()
            if writer.is_closing() or reader.at_eof():
                writer.close()
                continue
            try:
                return await self._exchange(key, reader, writer, payload)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()  # the server closed the idle connection: try a fresh one
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            return await self._exchange(key, reader, writer, payload)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            raise HttpError(f"{exc.__class__.__name__}: {exc}") from None

    async def _exchange(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        payload: bytes) -> Response:
        ok = False
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            keep = headers.get("connection", "").lower() != "close"
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(parts)
            else:
                body, keep = await reader.read(), False
            ok = True
        finally:
            if not ok:
                writer.close()
        if keep:
            self._idle.setdefault(key, []).append((reader, writer))  # bounded by the origin's slots
        else:
            writer.close()
        return Response(status, headers, body)

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for _, writer in pool:
                writer.close()
        self._idle.clear()
