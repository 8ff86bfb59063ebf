"""The checkout's keep-alive link to the provider (``ProviderLink``): answers, reuse, and every failure
below HTTP as ``HttpError`` — against a small asyncio server that answers as told."""

from __future__ import annotations

import asyncio

import pytest

from loadtests.service.checkout import ProviderLink
from loadtests.service.httpclient import HttpError


class Server:
    """Reads requests (head + Content-Length body); answers each with ``self.answer(request)`` bytes,
    or with nothing and a close (``None``); counts connections and requests."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                out = self.answer(head + body)
                if out is None:
                    writer.close()
                    return
                if isinstance(out, float):  # wait that long, then say nothing
                    await asyncio.sleep(out)
                    continue
                writer.write(out)
                await writer.drain()
                if b"connection: close" in out.lower():
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        for w in self.writers:
            w.close()
        self.server.close()


def ok(body: bytes = b'{"state":"created"}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


def run(coro):
    return asyncio.run(coro)


def test_answers_are_parsed_and_one_connection_is_reused():
    async def main():
        srv = Server(lambda req: ok(b'{"n":%d}' % len(req)) if b"POST" in req else ok(b"[]"))
        async with srv as url:
            link = ProviderLink(url)
            first = await link.request("POST", "/trades", b'{"a":1}', {"Content-Type": "application/json"}, 2.0)
            second = await link.request("GET", "/trades/t1?x=1", b"", None, 2.0)
            link.close()
        assert first.status_code == 200 and first.headers["content-type"] == "application/json"
        assert first.json() == {"n": len(srv.requests[0])}
        assert second.json() == [] and second.text == "[]"
        assert srv.connections == 1  # kept alive
        assert srv.requests[0].startswith(b"POST /trades HTTP/1.1\r\n") and srv.requests[0].endswith(b'{"a":1}')
        assert b"Content-Type: application/json\r\n" in srv.requests[0]
        assert srv.requests[1].startswith(b"GET /trades/t1?x=1 HTTP/1.1\r\n")
    run(main())


def test_a_chunked_answer_is_read_whole():
    chunked = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"

    async def main():
        async with Server(lambda req: chunked) as url:
            link = ProviderLink(url)
            answer = await link.request("GET", "/x", timeout=2.0)
            link.close()
        assert answer.status_code == 201 and answer.json() == {"a": 1}
    run(main())


def test_a_pooled_connection_the_server_closed_is_retried_once_on_a_fresh_one():
    async def main():
        srv = Server(lambda req: ok())
        async with srv as url:
            link = ProviderLink(url)
            await link.request("GET", "/a", timeout=2.0)
            for w in srv.writers:  # the server drops the idle connection
                w.close()
            await asyncio.sleep(0.05)
            again = await link.request("POST", "/b", b"{}", None, 2.0)
            link.close()
        assert again.status_code == 200 and srv.connections == 2
    run(main())


def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry():
    async def main():
        srv = Server(lambda req: None)  # reads the request, closes without answering
        async with srv as url:
            link = ProviderLink(url)
            with pytest.raises(HttpError):
                await link.request("POST", "/trades", b"{}", None, 2.0)
            link.close()
        assert len(srv.requests) == 1
    run(main())


def test_connection_close_is_not_reused():
    async def main():
        srv = Server(lambda req: ok(extra=b"connection: close\r\n"))
        async with srv as url:
            link = ProviderLink(url)
            await link.request("GET", "/a", timeout=2.0)
            await link.request("GET", "/b", timeout=2.0)
            link.close()
        assert srv.connections == 2
    run(main())


def test_timeout_refusal_and_oversized_answer_are_http_errors():
    async def main():
        srv = Server(lambda req: 5.0)  # never answers in time
        async with srv as url:
            link = ProviderLink(url)
            with pytest.raises(HttpError, match="timed out"):
                await link.request("GET", "/slow", timeout=0.2)
            assert not link._idle  # the timed-out connection is not kept
            link.close()
        big = Server(lambda req: ok(b"x" * 2000))
        async with big as url:
            link = ProviderLink(url, max_body=1000)
            with pytest.raises(HttpError, match="limit"):
                await link.request("GET", "/big", timeout=2.0)
            link.close()
        with pytest.raises(HttpError, match="cannot connect"):
            await ProviderLink(url).request("GET", "/gone", timeout=2.0)  # the server is closed now
    run(main())


def test_only_plain_http_urls():
    with pytest.raises(ValueError):
        ProviderLink("https://psp.example/")
