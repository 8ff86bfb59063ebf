"""Throughput and latency of the live services on loopback (a benchmark, run on purpose).

    /work/venv/bin/python benchmarks/service_throughput.py [--orders 8000] [--rounds 3] [--connections 32] [--time-scale 60]
        [--wechat-orders 1000] [--only-faces]

Starts the mock provider and the reference checkout (no injected faults: no declines, blocks, holds,
losses; the scenario's latencies scaled by ``--time-scale``), then drives them from a **separate load
generator process** (this file with ``--generate``: asyncio + uvloop + one aiohttp session, about
ten thousand requests per second per core of its own capacity: its CPU share is printed for every
phase, see ``generator`` below):

1. ``create``   — ``POST /orders`` on the checkout;
2. ``start``    — ``POST /orders/{id}/pay`` on the checkout (creates the provider trade);
3. rounds of, back to back (a machine whose load changes shows in all three; medians are reported):
   ``trivial`` — ``GET /healthz`` on the provider, the framework's own ceiling on that server;
   ``confirm`` — ``POST /trades/{trade}/pay`` on the provider, closed loop at full speed: a bank debit,
   a ledger commit, and a notification sent to the checkout (which marks the order paid and ships);
   ``bare`` — the same on trades created without a ``notify_url``: the debit and ledger commit alone;
4. ``confirm_half`` — confirm, open loop at half the measured confirm rate: the p99 a user sees when
   the service is not saturated (latency counted from each request's scheduled start).

For every phase it reports requests/s, p50/p99 latency and the CPU each process used (cores), which
shows where the bottleneck is: the provider is one Python process, so it saturates at 1.0 core; the
generator staying well below that shows it is not what limits the figures. ``notifier`` is the
provider's notification worker (a child process making the POSTs): with the checkout that receives
them and the generator it shares the machine's cores, so the last line also gives every process's CPU
milliseconds per confirm (``cpu_ms_per_confirm_all``), whose sum bounds the confirm rate on 2 cores. The last line is one JSON
object with ``confirm_rps``, ``trivial_rps``, ``ratio`` and ``confirm_p99_ms_at_half`` (the issue's
targets: ratio >= 0.4, p99 < 50 ms), and the provider's CPU milliseconds per request of each route with
their ratio (``cpu_ratio`` = trivial's / confirm's), which a loaded machine disturbs much less.

The provider sends its notifications from a worker process (``loadtests.service.httpclient``);
``CHECKOUT_CHAOS_HTTP_IN_PROCESS=1`` in the environment makes it send them from its own event loop, as
before, for comparison. ``--profile PREFIX`` profiles the provider's pay path instead (docs/performance.md);
``--core`` measures the provider's core alone, in this process (CPU per confirm with and without its
notification, no HTTP server: the pay path's own cost, steadier on a shared machine).

Then, on a provider of its own with the Alipay face (``alipay_face``; ``--alipay-orders 0`` skips it,
``--only-alipay`` runs only it): signed ``alipay.trade.create`` calls through ``/gateway.do``, the
buyer's confirm, and the signed form notification acknowledged with ``success``: its create+pay+notify
rate and the measured RSA2 cost per request, under ``alipay_face`` in the last JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NO_FAULTS = {
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "bank.risk_hold_probability": 0.0,
    "bank.response_loss": 0.0,
    "gateway.notify_loss": 0.0,
    "gateway.notify_duplicate": 0.0,
    "order_service.order_ttl": "30d",  # a 30-minute TTL (30 s at x60) would close orders before the confirm phase
}


# -- the load generator (its own process) -------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _session(connections: int):
    """The generator's client: one aiohttp session, ``connections`` keep-alive connections per origin.
    aiohttp itself, not the services' wrapper around it (``loadtests.service.httpclient.HttpClient``:
    its per-origin slots, timeout and error mapping cost about a third more CPU per request,
    ``benchmarks/http_client.py``): what the generator spends is taken from the cores the services
    share, so the leaner it is, the less it weighs on the figures (trivial and confirm alike)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=connections, keepalive_timeout=15)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=30))


async def _send(session, method: str, url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    async with session.request(method, url, data=body or None, headers=headers, allow_redirects=False) as r:
        return r.status, await r.read()


async def _closed_loop(requests: list[tuple[str, str, bytes]], connections: int) -> dict:
    session = _session(connections)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: list[bytes | None] = [None] * len(requests)
    it = iter(range(len(requests)))
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        for i in it:
            method, url, body = requests[i]
            t0 = time.perf_counter()
            try:
                status, bodies[i] = await _send(session, method, url, body, headers)
            except Exception:
                status = 0
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    await session.close()
    return {"n": len(requests), "elapsed": elapsed, "rps": len(requests) / elapsed,
            "p50_ms": _percentile(latencies, 0.5) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "statuses": statuses, "generator_cores": (time.process_time() - cpu0) / elapsed,
            "bodies": [b.decode() if b else None for b in bodies]}


async def _open_loop(requests: list[tuple[str, str, bytes]], rate: float, max_outstanding: int) -> dict:
    """Requests at a fixed rate; latency from each request's *scheduled* start (no coordinated omission)."""
    session = _session(max_outstanding)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limit = asyncio.Semaphore(max_outstanding)
    headers = {"Content-Type": "application/json"}

    async def one(method: str, url: str, body: bytes, scheduled: float) -> None:
        async with limit:
            try:
                status = (await _send(session, method, url, body, headers))[0]
            except Exception:
                status = 0
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, (method, url, body) in enumerate(requests):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(method, url, body, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await session.close()
    return {"n": len(requests), "elapsed": elapsed, "rps": len(requests) / elapsed, "target_rps": rate,
            "p50_ms": _percentile(latencies, 0.5) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "statuses": statuses, "generator_cores": (time.process_time() - cpu0) / elapsed, "bodies": []}


def generate() -> None:
    """``--generate``: read one phase spec (JSON) on stdin, run it, print the result (JSON)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    spec = json.load(sys.stdin)
    requests = [(m, u, b.encode()) for m, u, b in spec["requests"]]
    if spec.get("rate"):
        result = asyncio.run(_open_loop(requests, spec["rate"], spec["connections"] * 8))
    else:
        result = asyncio.run(_closed_loop(requests, spec["connections"]))
    json.dump(result, sys.stdout)


# -- the orchestrator ---------------------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone (a notification worker that exited)
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _notifier_pid(provider: int) -> int | None:
    """The provider's notification worker (its child process, ``httpclient.WorkerClient``), if any."""
    try:
        children = Path(f"/proc/{provider}/task/{provider}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


class Bench:
    def __init__(self, services, connections: int) -> None:
        self.s, self.connections = services, connections
        self.results: dict[str, dict] = {}

    def phase(self, name: str, requests: list[tuple[str, str, str]], rate: float | None = None) -> dict:
        pids = {n: self.s.pid(n) for n in ("provider", "checkout")}
        # the worker that makes the provider's notification POSTs: a process of its own, on the same cores
        pids["notifier"] = _notifier_pid(pids["provider"])
        cpu0 = {n: _cpu_seconds(p) for n, p in pids.items()}
        gen = subprocess.Popen([sys.executable, __file__, "--generate"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
        out, _ = gen.communicate(json.dumps({"requests": requests, "connections": self.connections, "rate": rate}))
        result = json.loads(out)
        for n, p in pids.items():
            result[f"{n}_cores"] = (_cpu_seconds(p) - cpu0[n]) / result["elapsed"]
        self.results[name] = result
        ok = sum(v for k, v in result["statuses"].items() if k.startswith("2"))
        print(f"{name:<13} {result['n']:>6} requests  {result['rps']:>8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
              f"p99 {result['p99_ms']:6.2f} ms  2xx {ok}/{result['n']}  cores: provider {result['provider_cores']:.2f} "
              f"checkout {result['checkout_cores']:.2f} notifier {result['notifier_cores']:.2f} "
              f"generator {result['generator_cores']:.2f}", flush=True)
        return result


def _drain(s, acked: int, timeout: float = 60.0) -> None:
    """Wait until ``acked`` notifications are acknowledged, so a round starts with an empty outbox."""
    t0 = time.monotonic()
    while s.admin("provider", "GET", "/admin/stats").json()["notifications"].get("acked", 0) < acked:
        if time.monotonic() - t0 > timeout:
            print(f"  (notifications not drained after {timeout:g} s)", flush=True)
            return
        time.sleep(0.1)
    print(f"  notifications drained {time.monotonic() - t0:.1f} s after the round", flush=True)


# -- the Alipay face (a separate run: its own provider with the alipay face) ---------------------------


def _ack_server() -> tuple[str, object]:
    """A merchant notify endpoint that answers every POST ``success`` (keep-alive), in a thread."""
    import threading

    ready: dict = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()

    def run() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        ready["port"], ready["loop"] = server.sockets[0].getsockname()[1], loop
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while "port" not in ready:
        time.sleep(0.01)
    return f"http://127.0.0.1:{ready['port']}/notify", ready["loop"]


def _rsa_cost(private_key, public_key, n: int = 300) -> dict:
    """Milliseconds of one RSA2 (2048-bit SHA256withRSA) signature and one verification, in this process."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    payload = b'{"code":"10000","msg":"Success","out_trade_no":"bench","trade_no":"2026120122001000000000000001"}'
    # CPU time (process_time), not wall time: on a shared machine the wall clock counts others' work too
    t0 = time.process_time()
    sigs = [private_key.sign(payload + str(i).encode(), padding.PKCS1v15(), hashes.SHA256()) for i in range(n)]
    sign_ms = (time.process_time() - t0) / n * 1e3
    t0 = time.process_time()
    for i, sig in enumerate(sigs):
        public_key.verify(sig, payload + str(i).encode(), padding.PKCS1v15(), hashes.SHA256())
    return {"rsa2_sign_cpu_ms": round(sign_ms, 3), "rsa2_verify_cpu_ms": round((time.process_time() - t0) / n * 1e3, 3)}


def alipay_face(orders: int, connections: int, time_scale: float) -> dict:
    """The Alipay face's create + pay + notify rate: ``alipay.trade.create`` through ``/gateway.do``
    (RSA2-verified, the answer RSA2-signed), the buyer's confirm (bank debit, ledger), and the signed
    form notification acknowledged by a merchant endpoint answering ``success``. Also the RSA cost per
    request, measured: the mock verifies one signature and makes one per gateway call, and makes one
    per notification attempt."""
    import base64
    from datetime import datetime
    from urllib.parse import urlencode

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from loadtests.service.psp.faces.alipay import DEFAULT_APP_ID
    from loadtests.service.runner import start_services

    load = os.getloadavg()[0]
    notify_url, loop = _ack_server()
    data = Path(tempfile.mkdtemp(prefix="cc-bench-alipay-"))
    print(f"alipay face: {orders} flows, connections {connections}, data {data}", flush=True)
    with start_services(None, data, time_scale, NO_FAULTS, faces=("alipay",)) as s:
        key_dir = data / "psp" / "alipay"
        app_key = serialization.load_pem_private_key((key_dir / "app_private_key.pem").read_bytes(), None)
        mock_key = serialization.load_pem_private_key((key_dir / "alipay_private_key.pem").read_bytes(), None)
        rsa = _rsa_cost(mock_key, mock_key.public_key())
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")

        def signed(no: str, i: int) -> str:  # what an SDK sends: sorted k=v, SHA256withRSA, base64
            params = {"app_id": DEFAULT_APP_ID, "method": "alipay.trade.create", "charset": "utf-8",
                      "sign_type": "RSA2", "timestamp": stamp, "version": "1.0", "notify_url": notify_url,
                      "biz_content": json.dumps({"out_trade_no": no, "subject": "bench",
                                                 "total_amount": f"{1 + i % 90}.00"}, separators=(",", ":"))}
            content = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
            params["sign"] = base64.b64encode(app_key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
            return urlencode(params)

        gateway = s.provider_url + "/gateway.do"
        requests = [("GET", f"{gateway}?{signed(f'ab{i}', i)}", "") for i in range(orders)]
        b = Bench(s, connections)
        b.phase("alipay warmup", [("GET", s.provider_url + "/healthz", "")] * 1000)
        create = b.phase("alipay create", requests)
        trade_nos = [json.loads(body)["alipay_trade_create_response"].get("trade_no") for body in create["bodies"] if body]
        trade_nos = [t for t in trade_nos if t]
        pay = b.phase("alipay pay", [("POST", f"{s.provider_url}/alipay/cashier/{t}/confirm", "") for t in trade_nos])
        acked, t_paid = 0, time.perf_counter()
        while time.perf_counter() - t_paid < 120:
            acked = s.admin("provider", "GET", "/admin/stats").json()["notifications"].get("acked", 0)
            if acked >= len(trade_nos):
                break
            time.sleep(0.05)
        # the two closed loops plus the wait for the last acknowledgement (not the generators' start-up)
        total = create["elapsed"] + pay["elapsed"] + (time.perf_counter() - t_paid)
        ledger = s.admin("provider", "GET", "/admin/ledger").json()
    loop.call_soon_threadsafe(loop.stop)
    flows = min(acked, len(trade_nos))
    out = {
        "flows": flows,
        "flow_rps": round(flows / total, 1),  # create + pay + notification acknowledged, end to end
        "create_rps": round(create["rps"], 1), "create_p50_ms": round(create["p50_ms"], 2),
        "create_p99_ms": round(create["p99_ms"], 2),
        "pay_rps": round(pay["rps"], 1), "pay_p50_ms": round(pay["p50_ms"], 2), "pay_p99_ms": round(pay["p99_ms"], 2),
        "provider_cpu_ms_per_create": round(create["provider_cores"] * create["elapsed"] / max(1, create["n"]) * 1e3, 3),
        "provider_cpu_ms_per_pay_and_notify": round(pay["provider_cores"] * pay["elapsed"] / max(1, pay["n"]) * 1e3, 3),
        **rsa,
        # per flow the mock signs twice (the create answer, the notification) and verifies once
        "rsa_cpu_ms_per_flow": round(2 * rsa["rsa2_sign_cpu_ms"] + rsa["rsa2_verify_cpu_ms"], 3),
        "load_average_at_start": round(load, 2),
        "ledger_balanced": ledger["balanced"],
    }
    print("alipay face: " + json.dumps(out), flush=True)
    return out


# -- the WeChat Pay face (its own provider; merged into the last line as "wechat_face") -------------


def wechat_face(orders: int, connections: int, time_scale: float) -> dict:
    """The WeChat Pay v3 face end to end: signed native orders (``create``), the buyer paying each
    ``code_url`` (``pay``: bank debit, ledger, an AES-GCM encrypted, RSA-signed TRANSACTION.SUCCESS
    notification to a loopback receiver that answers 204), signed queries (``query``). Requests are
    signed beforehand (SHA256withRSA, as the SDK does); every answer is signed by the mock, which is
    part of what is measured. Load generator and receiver: asyncio in this process."""
    import base64
    import secrets as _secrets

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from loadtests.service.httpclient import HttpClient
    from loadtests.service.psp.faces import face_class
    from loadtests.service.runner import start_services

    data = Path(tempfile.mkdtemp(prefix="cc-bench-wx-"))
    with start_services(None, data, time_scale, NO_FAULTS, faces=("wechat",)) as s:
        face = face_class("wechat")(None, s.data_dir, None)
        cfg = face.merchant_config(s.provider_url)
        key = serialization.load_pem_private_key((face.dir / "merchant_private_key.pem").read_bytes(), None)

        def auth(method: str, path: str, body: str) -> str:
            ts, nonce = str(int(time.time())), _secrets.token_hex(16)
            sig = key.sign(f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n".encode(), padding.PKCS1v15(), hashes.SHA256())
            return (f'WECHATPAY2-SHA256-RSA2048 mchid="{cfg["mchid"]}",nonce_str="{nonce}",'
                    f'signature="{base64.b64encode(sig).decode()}",timestamp="{ts}",serial_no="{cfg["cert_serial_no"]}"')

        async def run() -> dict:
            async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    while True:
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), 0)
                        await reader.readexactly(length)
                        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                        await writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    writer.close()  # the provider hung up, or the run is over (idle keep-alive connections)

            server = await asyncio.start_server(receiver, "127.0.0.1", 0)
            notify = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/wx/notify"
            nos = [f"wxb{i:06d}" for i in range(orders)]
            create_path = "/v3/pay/transactions/native"
            creates = []
            for no in nos:
                body = json.dumps({"appid": cfg["appid"], "mchid": cfg["mchid"], "description": "bench",
                                   "out_trade_no": no, "notify_url": notify, "amount": {"total": 100}})
                creates.append(("POST", create_path, body, auth("POST", create_path, body)))
            queries = [("GET", p, "", auth("GET", p, "")) for p in
                       (f"/v3/pay/transactions/out-trade-no/{no}?mchid={cfg['mchid']}" for no in nos)]
            client = HttpClient(max_per_origin=connections)
            pid = s.pid("provider")

            async def phase(reqs: list[tuple[str, str, str, str | None]]) -> tuple[dict, list[bytes]]:
                it, lat, ok, bodies = iter(range(len(reqs))), [], [0], [b""] * len(reqs)

                async def worker() -> None:
                    for i in it:
                        method, path, body, authorization = reqs[i]
                        headers = {"Content-Type": "application/json"}
                        if authorization:
                            headers["Authorization"] = authorization
                        t0 = time.perf_counter()
                        resp = await client.request(method, s.provider_url + path, body.encode(), headers, timeout=30)
                        lat.append(time.perf_counter() - t0)
                        ok[0] += 200 <= resp.status < 300
                        bodies[i] = resp.body

                cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(connections)))
                elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
                # CPU per request tells the face's own cost even when the machine's load caps the rate
                return ({"rps": round(len(reqs) / elapsed, 1), "p50_ms": round(_percentile(lat, 0.5) * 1e3, 2),
                         "p99_ms": round(_percentile(lat, 0.99) * 1e3, 2), "ok": ok[0], "n": len(reqs),
                         "provider_cores": round(cpu / elapsed, 2),
                         "provider_cpu_ms_per_request": round(cpu * 1e3 / len(reqs), 2)}, bodies)

            out: dict = {}
            out["create"], bodies = await phase(creates)
            pays = [("POST", "/wechat/app/pay", json.dumps({"code_url": json.loads(b)["code_url"]}), None)
                    for b in bodies if b]
            out["pay"], _ = await phase(pays)
            out["query"], _ = await phase(queries)
            t0 = time.monotonic()
            while s.admin("provider", "GET", "/admin/stats").json()["notifications"].get("acked", 0) < len(pays):
                if time.monotonic() - t0 > 60:
                    break
                await asyncio.sleep(0.1)
            out["notifications"] = s.admin("provider", "GET", "/admin/stats").json()["notifications"]
            await client.aclose()
            server.close()
            return out

        result = asyncio.run(run())
        result["ledger_balanced"] = s.admin("provider", "GET", "/admin/ledger").json()["balanced"]
    for name in ("create", "pay", "query"):
        r = result[name]
        print(f"wechat {name:<7} {r['n']:>6} requests  {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  2xx {r['ok']}/{r['n']}  provider cores {r['provider_cores']:.2f} "
              f"({r['provider_cpu_ms_per_request']:.2f} ms CPU per request)", flush=True)
    print(f"wechat notifications {result['notifications']}  ledger balanced: {result['ledger_balanced']}", flush=True)
    return result


def profile_pay(orders: int, connections: int, time_scale: float, prefix: str, top: int = 30) -> dict:
    """``--profile``: the provider under cProfile (``CHECKOUT_CHAOS_PROFILE``) while the checkout creates
    and starts ``orders`` orders and the generator confirms them all (the pay path with its
    notification). Prints the profile's top lines by own time; the figures are of a profiled run (slower)."""
    import pstats

    from loadtests.service.base import PROFILE_ENV
    from loadtests.service.runner import start_services

    os.environ[PROFILE_ENV] = prefix
    try:
        with start_services(None, Path(tempfile.mkdtemp(prefix="cc-bench-prof-")), time_scale, NO_FAULTS) as s:
            b = Bench(s, connections)
            p, c = s.provider_url, s.checkout_url
            names = [f"po{i}" for i in range(orders)]
            b.phase("create", [("POST", c + "/orders", json.dumps({"order": o, "user": f"u{i % 500}", "amount": 100}))
                               for i, o in enumerate(names)])
            started = b.phase("start", [("POST", f"{c}/orders/{o}/pay", "") for o in names])
            trades = [json.loads(body)["trade"] for body in started["bodies"] if body and '"trade"' in body]
            confirm = b.phase("confirm", [("POST", f"{p}/trades/{t}/pay", "") for t in trades])
            _drain(s, len(trades))
    finally:
        os.environ.pop(PROFILE_ENV, None)
    stats = pstats.Stats(f"{prefix}.provider.prof")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"psp/core.py|store.py|web.py|httpclient.py", top)
    return {"profiled_confirm_rps": round(confirm["rps"], 1), "profile": f"{prefix}.provider.prof"}


def _ack_forever() -> None:
    """``--ack-server``: a merchant endpoint answering every POST ``success``, in its own process
    (its port on stdout), so that what ``--core`` measures is the provider's side alone."""
    url, _ = _ack_server()  # served by a thread of this process
    print(url.rsplit(":", 1)[1].split("/")[0], flush=True)
    while True:
        time.sleep(3600)


def core_cost(orders: int, rounds: int, time_scale: float) -> dict:
    """``--core``: the provider's core alone, in this process (no HTTP server, no uvicorn): ``pay`` on
    ``orders`` trades, 32 at a time, each awaited until durable, the notifications drained (POSTed by
    the notification worker to an acknowledging endpoint in another process); then the same on trades
    without a ``notify_url``; ``rounds`` times, alternated. CPU milliseconds per confirm of this process
    (its threads included: the WAL checkpointer), medians over the rounds: steadier than the HTTP
    figures on a shared machine, and what the pay path's own code costs."""
    import uvloop

    from loadtests.service import base
    from loadtests.service.psp.app import create_app
    from sim.scenario import default_scenario

    ack = subprocess.Popen([sys.executable, __file__, "--ack-server"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{int(ack.stdout.readline())}/notify"
    config = base.ServiceConfig(scenario=default_scenario().with_overrides(NO_FAULTS),
                                data_dir=Path(tempfile.mkdtemp(prefix="cc-bench-core-")), start_epoch=time.time(),
                                time_scale=time_scale, admin_token="bench", notify_secret="bench")
    app = create_app(config)
    svc = app.state.service
    runs: dict[str, list[float]] = {"confirm": [], "bare": []}

    async def run() -> None:
        acked = 0
        async with svc.lifespan(app):
            await asyncio.sleep(0.5)  # the notification worker started
            for r in range(rounds):
                for kind in ("confirm", "bare"):
                    trades = [f"{kind}-{r}-{i}" for i in range(orders)]
                    for i, t in enumerate(trades):
                        await svc.create_trade(t, "o" + t, f"u{i % 500}", 100 + i % 9000,
                                               notify_url=url if kind == "confirm" else None, meta={"method": "card"})
                    await svc.store.durable()
                    it = iter(trades)

                    async def worker() -> None:
                        for t in it:
                            await svc.pay(t)
                            await svc.store.durable()

                    cpu0 = time.process_time()
                    await asyncio.gather(*(worker() for _ in range(32)))
                    if kind == "confirm":
                        acked += orders
                        while svc.store.one("SELECT COUNT(*) FROM notifications WHERE state = 'acked'")[0] < acked:
                            await asyncio.sleep(0.02)
                    runs[kind].append((time.process_time() - cpu0) / orders * 1e3)
                    print(f"core {kind:<8} round {r + 1}: {runs[kind][-1]:.3f} ms CPU per confirm", flush=True)

    uvloop.install()
    try:
        asyncio.run(run())
    finally:
        ack.kill()
    return {"core_cpu_ms_per_confirm": round(statistics.median(runs["confirm"]), 3),
            "core_cpu_ms_per_bare_confirm": round(statistics.median(runs["bare"]), 3),
            "core_rounds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "orders": orders}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=8000, help="orders created, started and confirmed")
    parser.add_argument("--trivial", type=int, default=15000, help="requests per trivial-route run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of trivial / confirm / confirm without notify")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (closed loop)")
    parser.add_argument("--time-scale", type=float, default=60.0, help="default: the scenario default (live.time_scale)")
    parser.add_argument("--faces", default="stripe", help="PSP faces whose own flow rate is measured too "
                        "(comma-separated; '' for none): each one's create + pay + notification, see _faces.py")
    parser.add_argument("--face-flows", type=int, default=1500, help="flows per face")
    parser.add_argument("--alipay-orders", type=int, default=2000, help="flows through the Alipay face (0: skip)")
    parser.add_argument("--only-alipay", action="store_true", help="run only the Alipay face's part")
    parser.add_argument("--wechat-orders", type=int, default=1000, help="orders through the WeChat Pay face (0: skip)")
    parser.add_argument("--only-faces", action="store_true", help="run the PSP-face figures only")
    parser.add_argument("--profile", metavar="PREFIX", help="profile the provider's pay path only: write "
                        "PREFIX.provider.prof and print its top lines (no other figures)")
    parser.add_argument("--core", action="store_true", help="measure the provider's core alone, in process "
                        "(CPU per confirm with and without notification; --orders per round, --rounds)")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ack-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate()
        return 0
    if args.ack_server:
        _ack_forever()
        return 0
    if args.core:
        load = round(os.getloadavg()[0], 2)
        print(f"cores: {os.cpu_count()}  load average: {load:.2f}  core alone, {args.orders} confirms per round", flush=True)
        out = core_cost(args.orders, args.rounds, args.time_scale)
        out["load_average_at_start"] = load
        print(json.dumps(out))
        return 0

    if args.profile:
        print(json.dumps(profile_pay(args.orders, args.connections, args.time_scale, args.profile)))
        return 0
    if args.only_alipay:
        print(json.dumps({"alipay_face": alipay_face(args.alipay_orders, args.connections, args.time_scale)}))
        return 0
    if args.only_faces:  # every PSP face's figures, no native rounds (their ratio to native is then absent)
        summary = {"load_average_at_start": round(os.getloadavg()[0], 2)}
        if args.alipay_orders > 0:
            summary["alipay_face"] = alipay_face(args.alipay_orders, args.connections, args.time_scale)
        if args.wechat_orders:
            summary["wechat_face"] = wechat_face(args.wechat_orders, args.connections, args.time_scale)
        summary.update(_face_rates(args, None))
        print(json.dumps(summary))
        return 0
    from loadtests.service.runner import start_services

    data = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}  load average: {load:.2f}  time scale: {args.time_scale:g}  "
          f"connections: {args.connections}  data: {data}")
    with start_services(None, data, args.time_scale, NO_FAULTS) as s:
        b = Bench(s, args.connections)
        p, c = s.provider_url, s.checkout_url
        b.phase("warmup", [("GET", p + "/healthz", "")] * 2000)
        rounds, per_round = args.rounds, args.orders // (args.rounds + 1)
        n = per_round * (rounds + 1)  # the last share is for the latency run at half rate
        orders = [f"bo{i}" for i in range(n)]
        create = b.phase("create", [("POST", c + "/orders", json.dumps(
            {"order": o, "user": f"u{i % 500}", "amount": 100 + i % 9000})) for i, o in enumerate(orders)])
        started = b.phase("start", [("POST", f"{c}/orders/{o}/pay", "") for o in orders])
        trades = [json.loads(body)["trade"] for body in started["bodies"] if body and '"trade"' in body]
        bare = [f"bt{i}" for i in range(per_round * rounds)]
        b.phase("create_bare", [("POST", p + "/trades", json.dumps({"trade": t, "order": "b" + t, "user": "u1",
                                                                     "amount": 100})) for t in bare])
        # Rounds of trivial / confirm / confirm without notification, back to back, so that a change in
        # the machine's load shows in all three; the figures are the medians over the rounds.
        runs: dict[str, list[dict]] = {"trivial": [], "confirm": [], "bare": []}
        for r in range(rounds):
            runs["trivial"].append(b.phase(f"trivial {r + 1}", [("GET", p + "/healthz", "")] * args.trivial))
            chunk = slice(r * per_round, (r + 1) * per_round)
            runs["confirm"].append(b.phase(f"confirm {r + 1}", [("POST", f"{p}/trades/{t}/pay", "")
                                                               for t in trades[chunk]]))
            runs["bare"].append(b.phase(f"bare {r + 1}", [("POST", f"{p}/trades/{t}/pay", "") for t in bare[chunk]]))
            _drain(s, (r + 1) * per_round)
        trivial_rps = statistics.median(x["rps"] for x in runs["trivial"])
        confirm_rps = statistics.median(x["rps"] for x in runs["confirm"])
        bare_rps = statistics.median(x["rps"] for x in runs["bare"])
        ratios = [cf["rps"] / tr["rps"] for cf, tr in zip(runs["confirm"], runs["trivial"])]
        bare_ratios = [br["rps"] / tr["rps"] for br, tr in zip(runs["bare"], runs["trivial"])]
        at_half = b.phase("confirm_half", [("POST", f"{p}/trades/{t}/pay", "") for t in trades[rounds * per_round:]],
                          rate=confirm_rps / 2)
        ledger = s.admin("provider", "GET", "/admin/ledger").json()
        stats = s.admin("provider", "GET", "/admin/stats").json()
        print(f"ledger balanced: {ledger['balanced']}  charges: {ledger['txns'].get('charge', 0)}  "
              f"trades: {stats['trades']}  notifications: {stats['notifications']}")
    med = lambda key, name: round(statistics.median(x[key] for x in runs[name]), 2)  # noqa: E731
    cpu_ms = lambda name: round(statistics.median(x["provider_cores"] / x["rps"] * 1e3 for x in runs[name]), 3)  # noqa: E731
    summary = {
        "confirm_rps": round(confirm_rps, 1),
        "trivial_rps": round(trivial_rps, 1),
        "ratio": round(statistics.median(ratios), 3),
        "confirm_p99_ms_at_half": round(at_half["p99_ms"], 2),
        "confirm_without_notify_rps": round(bare_rps, 1),
        "ratio_without_notify": round(statistics.median(bare_ratios), 3),
        "ratio_rounds": [round(x, 3) for x in ratios],
        "ratio_without_notify_rounds": [round(x, 3) for x in bare_ratios],
        # CPU per request of the provider (ms): on a shared machine a steadier figure than req/s
        "provider_cpu_ms_per_trivial": cpu_ms("trivial"),
        "provider_cpu_ms_per_confirm": cpu_ms("confirm"),
        "provider_cpu_ms_per_bare_confirm": cpu_ms("bare"),
        "cpu_ratio": round(cpu_ms("trivial") / cpu_ms("confirm"), 3) if cpu_ms("confirm") else None,
        "notifications_in_process": bool(os.environ.get("CHECKOUT_CHAOS_HTTP_IN_PROCESS")),
        "confirm_p50_ms": med("p50_ms", "confirm"),
        "confirm_p99_ms": med("p99_ms", "confirm"),
        "confirm_half_rps": round(at_half["rps"], 1),
        "confirm_p50_ms_at_half": round(at_half["p50_ms"], 2),
        "create_rps": round(create["rps"], 1),
        "create_p50_ms": round(create["p50_ms"], 2),
        "create_p99_ms": round(create["p99_ms"], 2),
        "start_rps": round(started["rps"], 1),
        "start_p50_ms": round(started["p50_ms"], 2),
        "start_p99_ms": round(started["p99_ms"], 2),
        "trivial_p50_ms": med("p50_ms", "trivial"),
        "trivial_p99_ms": med("p99_ms", "trivial"),
        "cores_trivial": {"provider": med("provider_cores", "trivial"), "generator": med("generator_cores", "trivial")},
        "cores_confirm": {"provider": med("provider_cores", "confirm"), "checkout": med("checkout_cores", "confirm"),
                          "notifier": med("notifier_cores", "confirm"), "generator": med("generator_cores", "confirm")},
        # CPU ms per confirm of every process on the path (the 2 cores they share bound the wall-clock rate)
        "cpu_ms_per_confirm_all": {n: round(statistics.median(x[f"{n}_cores"] / x["rps"] * 1e3 for x in runs["confirm"]), 3)
                                   for n in ("provider", "notifier", "checkout", "generator")},
        "ledger_balanced": ledger["balanced"],
        "load_average_at_start": round(load, 2),
        "time_scale": args.time_scale,
        "connections": args.connections,
    }
    summary.update(_face_rates(args, confirm_rps))
    if args.alipay_orders > 0:
        summary["alipay_face"] = alipay_face(args.alipay_orders, args.connections, args.time_scale)
    if args.wechat_orders:
        summary["wechat_face"] = wechat_face(args.wechat_orders, args.connections, args.time_scale)
    print(json.dumps(summary))
    return 0


def _face_rates(args: argparse.Namespace, native_confirm_rps: float | None) -> dict:
    """Each PSP face's own flow, on a fresh pair of services with that face (``_faces.py``)."""
    import _faces
    from loadtests.service.runner import start_services

    out: dict = {}
    for face in [f for f in args.faces.split(",") if f]:
        with start_services(None, Path(tempfile.mkdtemp(prefix=f"cc-bench-{face}-")), args.time_scale, NO_FAULTS,
                            faces=(face,)) as s:
            figures = getattr(_faces, f"{face}_face")(s, args.face_flows, args.connections)
        if native_confirm_rps:
            figures["ratio_to_native_confirm"] = round(figures["flows_per_s_with_webhook"] / native_confirm_rps, 3)
        print(f"{face} face: {figures}", flush=True)
        out[f"{face}_face"] = figures
    return out


if __name__ == "__main__":
    sys.exit(main())
