"""Per-face rates for ``service_throughput.py``: a PSP's own "create + pay + notify" flow, through its
face, measured as a whole (requests in a closed loop, until the last notification is acknowledged).

Each function takes the running services and returns a dict of figures; the caller puts it on the
last JSON line under ``<face>_face``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Receiver:
    """A webhook/notification endpoint on loopback counting what it was sent."""

    def __init__(self, answer: bytes = b"", status: int = 200) -> None:
        self.count = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    receiver.count += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= n


def stripe_face(services: Any, n: int = 1500, connections: int = 32) -> dict[str, Any]:
    """PaymentIntent create+confirm (pm_card_visa) with a webhook endpoint for payment_intent.succeeded."""
    import httpx

    keys = services.data_dir / "psp" / "stripe"
    sk = "sk_test_" + (keys / "secret_key").read_text().strip()
    base = services.provider_url
    headers = {"Authorization": f"Bearer {sk}", "Content-Type": "application/x-www-form-urlencoded"}
    receiver = _Receiver()
    httpx.post(base + "/v1/webhook_endpoints", headers=headers, timeout=10,
               content=f"url={receiver.url}&enabled_events[0]=payment_intent.succeeded".encode())
    body = b"amount=8900&currency=cny&payment_method=pm_card_visa&confirm=true"
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def run() -> float:
        # the services' own client (aiohttp): httpx would cost the generator several times the CPU
        # (benchmarks/http_client.py) and limit the figure on a 2-core machine
        from loadtests.service.httpclient import HttpClient

        client = HttpClient(max_per_origin=connections)
        it = iter(range(n))

        async def worker() -> None:
            for _ in it:
                t0 = time.perf_counter()
                r = await client.request("POST", base + "/v1/payment_intents", body, headers, timeout=30)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
        await client.aclose()
        return elapsed

    t0 = time.perf_counter()
    requests_s = asyncio.run(run())
    delivered = receiver.wait(statuses.get(200, 0), timeout=120)
    total_s = time.perf_counter() - t0
    receiver.server.shutdown()
    latencies.sort()
    return {"flows": n, "rps_requests": round(n / requests_s, 1), "flows_per_s_with_webhook": round(n / total_s, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 2),
            "statuses": statuses, "webhooks_delivered": receiver.count, "all_delivered": delivered}


if __name__ == "__main__":  # quick look: python benchmarks/_faces.py
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from loadtests.service.runner import start_services

    no_faults = {"bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0,
                 "bank.risk_hold_probability": 0.0, "bank.response_loss": 0.0, "gateway.notify_loss": 0.0,
                 "gateway.notify_duplicate": 0.0}
    with start_services(None, tempfile.mkdtemp(prefix="cc-faces-"), 60.0, no_faults, faces=("stripe",)) as s:
        print(json.dumps({"stripe_face": stripe_face(s)}))
