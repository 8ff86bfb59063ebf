"""Bad input, overload and crashes: 4xx never 5xx (fuzzed), 503 with Retry-After beyond the in-flight
bound, and every acknowledged change still there exactly once after kill -9 and a restart."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .helpers import new_order, order_state, start_payment, uid, wait_for

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_fuzzing_from_openapi_finds_no_server_error(start):
    """schemathesis, driven by each service's /openapi.json (admin routes with the token): no 5xx."""
    s = start(name="fuzz")
    runs = {name: subprocess.Popen(
        [str(SCHEMATHESIS), "run", s.url(name) + "/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "5", "--phases", "coverage,fuzzing", "--generation-deterministic", "--workers", "1",
         "--request-timeout", "10", "-H", f"Authorization: Bearer {s.admin_token}", "--no-color"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("provider", "checkout")}
    for name, run in runs.items():  # both at once: schemathesis itself takes seconds to start
        out, _ = run.communicate(timeout=180)
        assert run.returncode == 0, f"{name}:\n{out[-5000:]}"
        assert "passed" in out and s.alive(name)
    for name in ("provider", "checkout"):
        log = (s.data_dir / f"{name}.log").read_text()
        assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]


def test_overload_answers_503_with_retry_after(start):
    """Beyond live.max_in_flight requests in flight: 503 + Retry-After at once; the rest are served."""
    s = start({"live.max_in_flight": 4, "bank.latency": "5s"}, time_scale=10, name="overload")  # 0.5 s debits
    trades = []
    for _ in range(16):
        body = {"trade": uid("t"), "order": uid("o"), "user": "u1", "amount": 100}
        assert httpx.post(s.provider_url + "/trades", json=body).status_code == 201
        trades.append(body["trade"])
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: httpx.post(f"{s.provider_url}/trades/{t}/pay", timeout=10), trades))
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {200, 503} and statuses[200] >= 4, statuses
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"].startswith("overloaded")
    assert httpx.get(s.provider_url + "/healthz").status_code == 200  # health is never refused
    assert all(r.json()["state"] == "succeeded" for r in answers if r.status_code == 200)


def _load(s, n: int, stop: threading.Event, acked: dict, errors: list) -> None:
    """One buyer after another: order, start payment, pay; every 3rd paid order is cancelled (refund).
    Records only what a service acknowledged with a 2xx."""
    client = httpx.Client(timeout=5)
    for i in range(n):
        if stop.is_set():
            break
        try:
            r = client.post(s.checkout_url + "/orders", json={"user": uid("u"), "amount": 100 + i})
            if r.status_code != 201:
                continue
            order = r.json()["order"]
            acked["orders"].append(order)
            r = client.post(f"{s.checkout_url}/orders/{order}/pay")
            if r.status_code != 200:
                continue
            trade = r.json()["trade"]
            r = client.post(f"{s.provider_url}/trades/{trade}/pay")
            if r.status_code == 200 and r.json()["state"] == "succeeded":
                acked["debits"].append((order, trade))
                if i % 3 == 0:
                    r = client.post(f"{s.provider_url}/trades/{trade}/refund", json={})
                    if r.status_code == 200:
                        acked["refunds"].append(trade)
        except httpx.HTTPError as exc:  # the service is down for a moment: expected; back off a little
            errors.append(exc)
            stop.wait(0.05)
    client.close()


def test_kill_9_and_restart_loses_nothing_acknowledged(start):
    """kill -9 each service in the middle of a load, restart it on the same data directory: every
    acknowledged order, debit and refund is there exactly once, the ledger balances, and the
    notifications pending at the crash are delivered."""
    s = start({"gateway.notify_schedule": ["30s"] * 20, "bank.latency": "5s"}, time_scale=60, name="crash")
    acked: dict[str, list] = {"orders": [], "debits": [], "refunds": []}
    errors: list = []
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(s, 400, stop, acked, errors)) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(acked["debits"]) >= 20, timeout=20, what="some acknowledged debits")
        s.kill("provider")
        s.restart("provider")
        wait_for(lambda: len(acked["debits"]) >= 60, timeout=20, what="more debits after the provider restart")
        s.kill("checkout")
        s.restart("checkout")
        wait_for(lambda: len(acked["debits"]) >= 90, timeout=20, what="more debits after the checkout restart")
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)

    # Exactly once, at the provider: each acknowledged debit is one charge; each refund one refund.
    history = s.history()
    charges = Counter(e["trade"] for e in history if e["type"] == "ledger.txn" and e["kind"] == "charge")
    refunds = Counter(e["trade"] for e in history if e["type"] == "ledger.txn" and e["kind"] == "refund")
    for _, trade in acked["debits"]:
        assert charges[trade] == 1, trade
    for trade in acked["refunds"]:
        assert refunds[trade] == 1, trade
    assert max(charges.values()) == 1 and max(refunds.values()) == 1
    ledger = s.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"] and ledger["total"] == 0
    assert ledger["txns"]["charge"] == len(charges)

    # Every acknowledged order is there; every acknowledged debit's order ends up paid (notifications
    # that were pending, or in flight, when either service died are delivered after the restart).
    created = {e["order"] for e in history if e["type"] == "order.created"}
    assert set(acked["orders"]) <= created
    assert len([e for e in history if e["type"] == "order.created"]) == len(created)  # no duplicates
    refunded = set(acked["refunds"])
    pending = [o for o, t in acked["debits"] if t not in refunded]
    wait_for(lambda: all(order_state(s, o) == "paid" for o in pending),
             timeout=20, what="every acknowledged debit's order paid")
    paid = Counter(e["order"] for e in s.history() if e["type"] == "order.paid")
    assert all(paid[o] == 1 for o in pending)
    assert s.alive("provider") and s.alive("checkout")


def test_debit_made_before_a_crash_is_found_after_restart(start):
    """The bank debited, the gateway had not heard yet, the provider died: after the restart the trade
    is 'unknown', the query finds the debit, the trade succeeds and the order is notified — once."""
    s = start({"bank.response_loss": 1.0, "gateway.timeout": "10m", "gateway.bank_query_schedule": ["20s"]},
              name="lost")
    order = new_order(s)["order"]
    trade = start_payment(s, order)["trade"]
    def confirm() -> None:  # blocks: the gateway waits 10 scenario minutes for an answer that was lost
        try:
            httpx.post(f"{s.provider_url}/trades/{trade}/pay", timeout=30)
        except httpx.HTTPError:
            pass  # the provider is killed under it

    pay = threading.Thread(target=confirm)
    pay.start()
    wait_for(lambda: s.admin("provider", "GET", "/admin/ledger").json()["txns"].get("charge") == 1,
             what="the bank's debit")
    s.kill("provider")
    pay.join(timeout=10)
    s.restart("provider")
    wait_for(lambda: order_state(s, order) == "paid", timeout=15, what="order paid after recovery")
    events = [e for e in s.history() if e.get("trade") == trade]
    types = [e["type"] for e in events]
    assert types.count("ledger.txn") == 1 and types.count("trade.succeeded") == 1
    assert [e for e in events if e["type"] == "trade.unknown"][0]["recovered"] is True
