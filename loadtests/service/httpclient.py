"""The services' HTTP client: aiohttp behind the few calls the hot paths make.

Used for the provider's notification attempts, the checkout's calls to the provider and the service
benchmark's load generator. aiohttp was chosen over httpx by ``benchmarks/http_client.py`` (CPU per
request on loopback keep-alive; see ``docs/performance.md``). This module adds only what its callers
rely on and aiohttp does not do by itself:

* **timeouts**: ``timeout`` wall seconds for the whole exchange (connect, send, answer head and body);
  waiting for a free connection of the origin's pool is not part of it;
* **connection reuse**: at most ``max_per_origin`` keep-alive connections per origin (further requests
  wait for one, outside their timeout); an idle connection is dropped after :data:`KEEPALIVE` seconds,
  before the services' own idle timeout (30 s) closes it under a request;
* **one retry** on a fresh connection when a pooled one turns out to have been closed by the server
  (aiohttp retries only idempotent methods; a notification or a provider call is safe to resend:
  notifications carry a stable id, the provider's writes are idempotent on the merchant's keys);
* **error mapping**: every failure below HTTP (refused, reset, timed out, unparsable, too large)
  raises :class:`HttpError`, never an aiohttp or OS exception;
* **body limits**: an answer larger than ``max_body`` bytes is refused (``HttpError``) without
  reading the rest; heads are bounded by aiohttp's parser (8 KiB lines).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp

KEEPALIVE = 15.0  # seconds an idle pooled connection is kept
MAX_RESPONSE_BODY = 1 << 20  # 1 MiB: no answer a service waits for is anywhere near it


class HttpError(Exception):
    """The request failed below HTTP (refused, reset, timed out, unparsable or oversized answer)."""


class Response:
    """An answer: ``status`` (also ``status_code``), ``headers`` (case-insensitive), ``body`` bytes."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def status_code(self) -> int:  # the httpx spelling, so callers can take either
        return self.status

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class HttpClient:
    """One aiohttp session (created on first use, on the running loop), pooled per origin."""

    def __init__(self, max_per_origin: int = 64, max_body: int = MAX_RESPONSE_BODY) -> None:
        self.max_per_origin = max_per_origin
        self.max_body = max_body
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._origins: dict[str, str] = {}

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.max_per_origin,
                                             keepalive_timeout=KEEPALIVE, ttl_dns_cache=300)
            # no cookies kept between calls, no proxies from the environment: a service talks to its peers
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  trust_env=False, auto_decompress=True)
        return self._session

    async def request(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> Response:
        """Send one request; the answer whatever its status, or :class:`HttpError`."""
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise HttpError(f"only http:// and https:// URLs are supported, found {url!r}")
            origin = f"{parts.scheme}://{parts.netloc}"
            if len(self._origins) < 10_000:  # a notify URL is reused for every attempt
                self._origins[url] = origin
        slots = self._slots.get(origin)
        if slots is None:
            if len(self._slots) > 10_000:
                self._slots.clear()
            slots = self._slots[origin] = asyncio.Semaphore(self.max_per_origin)
        async with slots:  # waiting for a free connection is not part of the request's timeout
            try:
                async with asyncio.timeout(timeout):
                    try:
                        return await self._exchange(method, url, body, headers)
                    except _RETRYABLE as exc:  # a pooled connection the server had closed: once more
                        if isinstance(exc, aiohttp.ClientConnectorError):  # (a refusal is not retried)
                            raise
                        return await self._exchange(method, url, body, headers)
            except TimeoutError:
                raise HttpError(f"timed out after {timeout:.3g}s") from None
            except aiohttp.ClientConnectorError as exc:
                raise HttpError(f"cannot connect to {origin}: {exc.os_error}") from None
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise HttpError(f"{exc.__class__.__name__}: {exc}") from None

    async def _exchange(self, method: str, url: str, body: bytes, headers: dict[str, str] | None) -> Response:
        session = self._session_now()
        async with session.request(method, url, data=body or None, headers=headers, allow_redirects=False) as r:
            if r.content_length is not None and r.content_length > self.max_body:
                r.close()  # not reading it: the connection is dropped
                raise HttpError(f"answer of {r.content_length} bytes exceeds the limit of {self.max_body}")
            if r.content_length is not None:
                data = await r.read()
            else:  # chunked, or up to the close: counted as it arrives
                chunks, size = [], 0
                while chunk := await r.content.read(65536):
                    size += len(chunk)
                    if size > self.max_body:
                        r.close()
                        raise HttpError(f"answer exceeds the limit of {self.max_body} bytes")
                    chunks.append(chunk)
                data = b"".join(chunks)
            return Response(r.status, r.headers, data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the same client in a worker process ---------------------------------------------------------------

_REQ = struct.Struct("!IdBHII")  # id, timeout, then the lengths of method, url, headers ("k:v" lines), body
_ANS = struct.Struct("!IhI")  # id, status (-1: HttpError, the body is its message), body length
WORKER_ENV = "CHECKOUT_CHAOS_HTTP_IN_PROCESS"  # set to 1: the provider sends notifications itself
# The pipe between the provider and its worker is written at most once per FLUSH_GAP seconds each way:
# the frames of a busier moment wait (at most this long) to go down together. One write wakes the
# other process once for the batch, and the batch then travels on as one: the worker sends the
# notifications in one turn of its loop (the receiver takes them in one turn too, and commits them
# together), and the provider records their answers in one transaction. An idle pipe is written in
# the turn the first frame is queued (no delay at low rates). 2 ms is small beside what a
# notification waits anyway (``gateway.notify_latency``: a 200 ms median, 3.3 ms of wall time at x60).
FLUSH_GAP = 0.002


class _Coalesced:
    """A writer that sends the frames queued since its last write in one write, at most once per
    ``gap`` seconds (at once when it has not written for that long)."""

    __slots__ = ("_write", "_gap", "_out", "_last", "_loop")

    def __init__(self, write: Callable[[list[bytes]], None], gap: float = FLUSH_GAP) -> None:
        self._write, self._gap, self._out, self._last, self._loop = write, gap, [], -1e9, None

    def add(self, frame: bytes) -> None:
        if not self._out:
            self._loop = loop = asyncio.get_running_loop()
            wait = self._last + self._gap - loop.time()
            if wait > 0:
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)
        self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out:
            self._last = self._loop.time()
            self._write(out)


class WorkerClient:
    """:class:`HttpClient`'s interface, the requests made by a child process (``python -m
    loadtests.service.httpclient``) over a pipe: the caller's event loop only frames each request and
    its answer, while aiohttp's request machinery (a few hundred microseconds of CPU per request,
    ``benchmarks/http_client.py``) runs in the child, off the loop that serves the provider's requests. The child is started on first use,
    and again after it died (its requests in flight then fail as :class:`HttpError`, like a reset
    connection: the caller's retry schedule applies); it exits when the pipe closes (the parent died).

    Both ends batch the pipe: the requests framed since the last write go down in one write, at most
    one write per :data:`FLUSH_GAP` (at once on an idle pipe), and each read takes every complete frame
    it holds (one wake-up and one system call for a batch of attempts or answers, rather than two
    awaits per frame)."""

    def __init__(self, max_per_origin: int = 64, max_body: int = MAX_RESPONSE_BODY) -> None:
        self.max_per_origin, self.max_body = max_per_origin, max_body
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Lock | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next = 0
        self._out = _Coalesced(self._write)  # frames queued since the last write, written together

    async def start(self) -> None:
        """Start the child now (a service calls it at start-up, so the first request does not wait for
        the child's imports)."""
        await self._ensure()

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None and self._reader_task is not None \
                and not self._reader_task.done():
            return self._proc
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._proc is None or self._proc.returncode is not None or self._reader_task is None \
                    or self._reader_task.done():
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "loadtests.service.httpclient", str(self.max_per_origin), str(self.max_body),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                self._reader_task = asyncio.get_running_loop().create_task(self._read_answers(self._proc))
        return self._proc

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        """Answers as they come, every complete one of each read (one wake-up for a batch of answers)."""
        buf, size, pending = b"", _ANS.size, self._pending
        try:
            while chunk := await proc.stdout.read(1 << 16):
                buf = buf + chunk if buf else chunk
                at, end = 0, len(buf)
                while end - at >= size:
                    rid, status, n = _ANS.unpack_from(buf, at)
                    if end - at - size < n:
                        break
                    body = buf[at + size:at + size + n]
                    at += size + n
                    fut = pending.pop(rid, None)
                    if fut is None or fut.done():
                        continue
                    if status < 0:
                        fut.set_exception(HttpError(body.decode("utf-8", "replace")))
                    else:
                        fut.set_result(Response(status, {}, body))
                buf = buf[at:]
        except ConnectionError:
            pass
        finally:
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(HttpError("the HTTP worker process exited"))

    async def request(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> Response:
        proc = await self._ensure()
        self._next = rid = (self._next + 1) & 0xFFFFFFFF
        m, u = method.encode(), url.encode()
        # header names and values never hold CR or LF (HTTP forbids them): one per line
        h = "\r\n".join(f"{k}:{v}" for k, v in headers.items()).encode() if headers else b""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[rid] = fut
        self._out.add(_REQ.pack(rid, timeout, len(m), len(u), len(h), len(body)) + m + u + h + body)
        # The child enforces the timeout (waiting for a free connection excluded); this bound only
        # guards against a child that hangs (a timer: cheaper than asyncio.timeout on this hot path).
        guard = 2 * timeout + 30
        timer = loop.call_later(guard, _expire, fut, guard)
        try:
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)

    def _write(self, out: list[bytes]) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None and not proc.stdin.is_closing():
            proc.stdin.write(b"".join(out))
            return
        for frame in out:  # the child is gone: these requests fail now, like a reset connection
            fut = self._pending.pop(_REQ.unpack_from(frame)[0], None)
            if fut is not None and not fut.done():
                fut.set_exception(HttpError("the HTTP worker process exited"))

    async def aclose(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.stdin.close()  # the child exits at end of input
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)


def _expire(fut: asyncio.Future, after: float) -> None:
    if not fut.done():
        fut.set_exception(HttpError(f"the HTTP worker did not answer within {after:.3g}s"))


def client_for_notifications() -> HttpClient | WorkerClient:
    """The provider's notification sender: a worker process, unless ``$CHECKOUT_CHAOS_HTTP_IN_PROCESS``."""
    return HttpClient() if os.environ.get(WORKER_ENV, "").strip() in ("1", "true", "yes") else WorkerClient()


def _worker(max_per_origin: int, max_body: int) -> None:
    """The child of :class:`WorkerClient`: requests framed on stdin, answers framed on stdout."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 22)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
        client = HttpClient(max_per_origin, max_body)
        tasks: set[asyncio.Task] = set()

        def write(frames: list[bytes]) -> None:  # the answers queued since the last write, in one
            if not transport.is_closing():
                transport.write(b"".join(frames))

        out = _Coalesced(write)

        async def one(rid: int, method: str, url: str, headers: dict, body: bytes, timeout: float) -> None:
            try:
                r = await client.request(method, url, body, headers or None, timeout)
                status, data = r.status, r.body
            except HttpError as exc:
                status, data = -1, str(exc).encode()
            except Exception as exc:  # never let one request take the worker down
                status, data = -1, f"{exc.__class__.__name__}: {exc}".encode()
            out.add(_ANS.pack(rid, status, len(data)) + data)

        buf, size = b"", _REQ.size
        try:
            while chunk := await reader.read(1 << 20):  # every complete request of each read
                buf = buf + chunk if buf else chunk
                at, end = 0, len(buf)
                while end - at >= size:
                    rid, timeout, lm, lu, lh, lb = _REQ.unpack_from(buf, at)
                    start = at + size
                    if end - start < lm + lu + lh + lb:
                        break
                    raw = buf[start:start + lm + lu + lh + lb]
                    at = start + lm + lu + lh + lb
                    method, url = raw[:lm].decode(), raw[lm:lm + lu].decode()
                    headers = dict(line.split(":", 1) for line in raw[lm + lu:lm + lu + lh].decode().split("\r\n")) \
                        if lh else {}
                    task = loop.create_task(one(rid, method, url, headers, raw[lm + lu + lh:], timeout))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                buf = buf[at:]
        except ConnectionError:
            pass  # the parent closed the pipe (or died); end of input: the loop above ends
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()

    asyncio.run(main())


if __name__ == "__main__":
    _worker(int(sys.argv[1]) if len(sys.argv) > 1 else 64, int(sys.argv[2]) if len(sys.argv) > 2 else MAX_RESPONSE_BODY)
