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
from typing import Any
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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"only http:// and https:// URLs are supported, found {url!r}")
        origin = f"{parts.scheme}://{parts.netloc}"
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
                raise HttpError(f"cannot connect to {parts.netloc}: {exc.os_error}") from None
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
