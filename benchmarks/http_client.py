"""The CPU an async HTTP client spends per request on loopback keep-alive (a benchmark, run on purpose).

    .venv/bin/python benchmarks/http_client.py [--requests 20000] [--connections 32]
        [--clients aiohttp,httpx,geventhttpclient,service]

Chooses the client of the services' hot paths (the provider's notifications, the checkout's calls to
the provider, the service benchmark's load generator): each client in turn sends ``--requests`` POSTs
with a small JSON body over ``--connections`` concurrent keep-alive connections to a minimal server
in **another process** (asyncio + uvloop, a fixed 7-byte answer), so what is measured is the client.
Figures per client: requests/s and the client's CPU microseconds per request (``process_time``: on a
shared machine wall-clock rates count other processes' work too, CPU per request much less).

The last line is one JSON object: ``{client: {rps, cpu_us_per_request, p50_ms, p99_ms}, ...,
"chosen": <the client with the least CPU per request>, "ratio": <chosen's CPU per request / httpx's>}``
(the ratio it is judged by: below 1 means the chosen client is cheaper than httpx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nsuccess"


def serve() -> None:
    """``--serve``: a minimal keep-alive HTTP/1.1 server on a free loopback port (printed on stdout)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def _run(kind: str, url: str, n: int, connections: int) -> dict:
    """``n`` POSTs through client ``kind`` (``aiohttp``, ``httpx`` or ``service``: the services' own
    wrapper, ``loadtests.service.httpclient.HttpClient``), ``connections`` workers."""
    body, headers = b'{"trade":"t1","amount":100}', {"Content-Type": "application/json"}
    if kind == "httpx":
        import httpx

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=connections,
                                                       max_keepalive_connections=connections))

        async def send() -> int:
            r = await client.post(url, content=body, headers=headers, timeout=30)
            return r.status_code

        close = client.aclose
    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=connections, limit=0))

        async def send() -> int:
            async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
                await r.read()
                return r.status

        close = session.close
    elif kind == "service":
        from loadtests.service.httpclient import HttpClient

        wrapper = HttpClient(max_per_origin=connections)

        async def send() -> int:
            return (await wrapper.request("POST", url, body, headers, timeout=30)).status

        close = wrapper.aclose
    elif kind == "geventhttpclient":  # gevent's own hub, not asyncio: measured in a process of its own
        out = subprocess.run([sys.executable, __file__, "--gevent-client", url, str(n), str(connections)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    else:
        raise SystemExit(f"--clients: unknown client {kind!r}; expected aiohttp, httpx, geventhttpclient or service")
    for _ in range(50):  # connections opened, imports and caches warm
        await send()
    latencies: list[float] = []
    it = iter(range(n))
    errors = [0]

    async def worker() -> None:
        for _ in it:
            t0 = time.perf_counter()
            if await send() != 200:
                errors[0] += 1
            latencies.append(time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await close()
    return {"rps": round(n / elapsed, 1), "cpu_us_per_request": round(cpu / n * 1e6, 1),
            "p50_ms": round(_percentile(latencies, 0.5) * 1e3, 2), "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 2),
            "errors": errors[0]}


def gevent_client(url: str, n: int, connections: int) -> dict:
    """``--gevent-client URL N C``: the same measurement with geventhttpclient (Locust's FastHttpUser
    client: a C parser on gevent's hub), ``C`` greenlets sharing one pooled ``HTTPClient``."""
    import gevent
    from geventhttpclient import HTTPClient
    from geventhttpclient.url import URL

    target = URL(url)
    client = HTTPClient(target.host, target.port, concurrency=connections, connection_timeout=30, network_timeout=30)
    body, headers = b'{"trade":"t1","amount":100}', {"Content-Type": "application/json"}

    def send() -> int:
        r = client.request("POST", target.request_uri, body=body, headers=headers)
        r.read()
        r.release()
        return r.status_code

    for _ in range(50):
        send()
    latencies: list[float] = []
    it = iter(range(n))
    errors = [0]

    def worker() -> None:
        for _ in it:
            t0 = time.perf_counter()
            if send() != 200:
                errors[0] += 1
            latencies.append(time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(connections)])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    client.close()
    return {"rps": round(n / elapsed, 1), "cpu_us_per_request": round(cpu / n * 1e6, 1),
            "p50_ms": round(_percentile(latencies, 0.5) * 1e3, 2), "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 2),
            "errors": errors[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--clients", default="aiohttp,httpx,geventhttpclient,service",
                        help="comma-separated, of: aiohttp, httpx, geventhttpclient, service (the services' wrapper)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gevent-client", nargs=3, metavar=("URL", "N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.gevent_client:
        url, n, c = args.gevent_client
        print(json.dumps(gevent_client(url, int(n), int(c))))
        return 0
    if args.requests < 1 or args.connections < 1:
        parser.error("--requests and --connections: expected positive integers")
    try:
        import uvloop

        uvloop.install()  # as in the services (uvicorn loop="uvloop")
    except ImportError:
        pass
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/notify"
        print(f"load average {os.getloadavg()[0]:.2f}  requests {args.requests}  connections {args.connections}")
        out: dict = {}
        for kind in [k for k in args.clients.split(",") if k]:
            out[kind] = asyncio.run(_run(kind, url, args.requests, args.connections))
            print(f"{kind:<8} {json.dumps(out[kind])}", flush=True)
    finally:
        server.terminate()
        server.wait()
    # the candidates for the services' event loops: asyncio clients (geventhttpclient is shown beside
    # them: it needs gevent's hub, which a uvicorn service's asyncio loop is not)
    libs = {k: v for k, v in out.items() if k in ("aiohttp", "httpx")}
    if libs:
        out["chosen"] = min(libs, key=lambda k: libs[k]["cpu_us_per_request"])
    if "httpx" in out and out.get("chosen"):
        out["ratio"] = round(out[out["chosen"]]["cpu_us_per_request"] / out["httpx"]["cpu_us_per_request"], 3)
    out["load_average_at_start"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
