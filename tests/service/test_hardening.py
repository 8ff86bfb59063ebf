"""The live services never lose, misdirect or invent money — under attack, outage and disk failure.

Each test is one way a probe (an attacker on loopback, or an unlucky operator) once made the services
mishandle money: a trade of another order or amount marking an order paid, one order blocking
another's payment, refunds dropped during an outage, a failed disk write hanging the checkout,
unbounded bodies, empty secrets, slow clients, an ever-growing WAL.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loadtests.service import signing
from loadtests.service.runner import start_services
from loadtests.service.store import Store, StorageError
from sim.check import check_events
from sim.domain import policies
from sim.domain.entities import Order, Trade
from sim.scenario import default_scenario

from .helpers import balance, events_of, http, new_order, new_trade, order_state, start_payment, uid, wait_for

SAFE_POLICIES = ("query_then_close", "close_trade_then_order")


def _paid_trade_at_provider(s, order: str, amount: int = 1, user: str | None = None) -> str:
    """A trade created and paid at the provider for ``order`` (not through the checkout)."""
    trade = new_trade(s, amount=amount, order=order, **({"user": user} if user else {}))["trade"]
    assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
    return trade


def _notify(s, body: dict) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(s.notify_secret.encode(), raw)}
    return http.post(s.checkout_url + "/notify", content=raw, headers=headers)


# -- 1. a trade belongs to one order and one amount ------------------------------------------------


def test_trade_pays_order_policy():
    """The domain policy: the trade's order and its amount, both."""
    order = Order("Z", "u", "m1", 100_000, "wallet", 0.0, 60.0)
    assert policies.trade_pays_order(Trade("Z-t0", "Z", "u", 100_000, 1e9), order)
    assert not policies.trade_pays_order(Trade("cheap-1", "other", "u", 1, 1e9), order)
    assert not policies.trade_pays_order(Trade("Z-t1", "Z", "u", 1, 1e9), order)  # its order, not its amount
    assert not policies.trade_pays_order(Trade("X", "other", "u", 100_000, 1e9), order)
    assert policies.refund_delay((10.0, 30.0), 1) == 10.0 and policies.refund_delay((10.0, 30.0), 3) is None


@pytest.mark.parametrize("close_policy", SAFE_POLICIES)
def test_a_cheap_trade_of_another_order_does_not_pay_an_order(services, close_policy):
    """Z (1,000 yuan) names a 1-fen paid trade of another order: refused, forgotten, and cancel closes Z."""
    s = services
    s.set_faults({"order_service.close_policy": close_policy})
    z = new_order(s, amount=100_000)["order"]
    cheap = _paid_trade_at_provider(s, uid("other"), amount=1)
    r = http.post(f"{s.checkout_url}/orders/{z}/pay", json={"trade": cheap})
    assert r.status_code == 409, r.text
    assert cheap not in http.get(f"{s.checkout_url}/orders/{z}").json()["trades"]
    cancel = http.post(f"{s.checkout_url}/orders/{z}/cancel")
    assert cancel.status_code == 200 and cancel.json()["state"] == "closed", cancel.text
    assert "order.paid" not in [e["type"] for e in events_of(s, z)]


@pytest.mark.parametrize("close_policy", SAFE_POLICIES)
def test_a_cheap_trade_recorded_for_the_order_does_not_pay_it(services, close_policy):
    """Even a trade the provider holds *for this order* pays it only for the full amount: a 1-fen trade
    created at the provider for Z, then named by Z's checkout, does not make Z paid."""
    s = services
    s.set_faults({"order_service.close_policy": close_policy})
    buyer = uid("u")
    z = new_order(s, amount=100_000, user=buyer)["order"]
    cheap = _paid_trade_at_provider(s, z, amount=1, user=buyer)
    assert http.post(f"{s.checkout_url}/orders/{z}/pay", json={"trade": cheap}).status_code == 409
    assert http.post(f"{s.checkout_url}/orders/{z}/cancel").json()["state"] == "closed"


def test_a_signed_notification_for_a_trade_the_order_never_had_does_not_pay_it(services):
    """Signed by the provider, right amount, but naming a trade this order never sent: not paid."""
    s = services
    z = new_order(s, amount=700)["order"]
    body = {"notify_id": uid("n"), "trade": uid("foreign"), "order": z, "amount": 700,
            "trade_status": "TRADE_SUCCESS", "attempt": 1}
    r = _notify(s, body)
    assert r.status_code == 409 and r.json()["code"] == "TRADE_NOT_OF_ORDER", r.text
    assert order_state(s, z) == "awaiting_payment"
    # Its own trade, announced the same way, is acted on.
    own = start_payment(s, z)["trade"]
    assert _notify(s, {**body, "notify_id": uid("n"), "trade": own}).text == "success"
    assert order_state(s, z) == "paid"


def test_no_order_is_paid_by_another_orders_trade_under_a_race(start):
    """A seeded race: orders paying, naming each other's trade numbers, trades pre-created and paid at
    the provider for other orders, forged-trade notifications and cancels, all at once. Afterwards every
    paid order is paid by a trade the provider holds for that order and its amount, and the ledger
    balances."""
    s = start({"order_service.close_policy": "close_trade_then_order", "order_service.late_payment": "auto_refund"},
              name="race")
    rng = random.Random(16)
    orders = [new_order(s, amount=rng.choice([1, 500, 100_000]))["order"] for _ in range(16)]
    amounts = {o: http.get(f"{s.checkout_url}/orders/{o}").json()["amount"] for o in orders}
    client = httpx.Client(timeout=30)

    def act(step: tuple[str, str, str]) -> None:
        kind, a, b = step
        if kind == "pay":  # the buyer of a pays through the checkout
            r = client.post(f"{s.checkout_url}/orders/{a}/pay")
            if r.status_code == 200:
                client.post(r.json()["pay_url"])
        elif kind == "name":  # a names b's default trade number
            r = client.post(f"{s.checkout_url}/orders/{a}/pay", json={"trade": f"{b}-t0"})
            if r.status_code == 200:
                client.post(r.json()["pay_url"])
        elif kind == "precreate":  # someone creates b's next trade number at the provider, 1 fen, and pays it
            t = client.post(f"{s.provider_url}/trades", json={"trade": f"{b}-t1", "order": a, "user": "mallory",
                                                              "amount": 1})
            if t.status_code == 201:
                client.post(f"{s.provider_url}/trades/{b}-t1/pay")
        elif kind == "forge":  # a signed notice for b naming a trade b never had
            _notify(s, {"notify_id": uid("n"), "trade": f"{a}-t0", "order": b, "amount": amounts[b],
                        "trade_status": "TRADE_SUCCESS", "attempt": 1})
        else:
            client.post(f"{s.checkout_url}/orders/{a}/cancel")

    steps = [(rng.choice(["pay", "pay", "name", "precreate", "forge", "cancel"]), rng.choice(orders),
              rng.choice(orders)) for _ in range(120)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(act, steps))
    time.sleep(2)  # notifications in flight land (100 ms of scenario latency each)
    checked = 0
    for o in orders:
        view = http.get(f"{s.checkout_url}/orders/{o}").json()
        if view["paid_trade"] is not None:
            trade = http.get(f"{s.provider_url}/trades/{view['paid_trade']}").json()
            assert (trade["order"], trade["amount"]) == (o, amounts[o]), (view, trade)
            checked += 1
    assert checked > 0
    ledger = s.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"], ledger


# -- 5. trade numbers scoped to their order --------------------------------------------------------


def test_one_order_cannot_block_another_by_naming_its_trade_number(services):
    s = services
    x, y = new_order(s, amount=300)["order"], new_order(s, amount=400)["order"]
    named = http.post(f"{s.checkout_url}/orders/{x}/pay", json={"trade": f"{y}-t0"})
    assert named.status_code == 200, named.text  # x's own trade now, under that number
    started = start_payment(s, y)
    assert started["trade"] != f"{y}-t0"
    assert http.post(started["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, y) == "paid", what="y paid")
    assert http.get(f"{s.provider_url}/trades/{started['trade']}").json()["order"] == y


def test_a_trade_number_pre_created_at_the_provider_cannot_block_an_order(services):
    s = services
    z = new_order(s, amount=900)["order"]
    new_trade(s, amount=1, trade=f"{z}-t0")  # someone else's trade under z's first number
    started = start_payment(s, z)
    assert started["trade"] != f"{z}-t0"
    assert http.post(started["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, z) == "paid", what="z paid")


# -- 2. refunds retry until they succeed or a person is told --------------------------------------


def _paid_order(s, amount: int = 1000) -> tuple[str, str]:
    order = new_order(s, amount=amount)["order"]
    started = start_payment(s, order)
    assert http.post(started["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, order) == "paid", what="order paid")
    return order, started["trade"]


def test_refunds_survive_a_provider_outage(start):
    """Cancelled paid orders while the provider is down: the checkout keeps retrying, every buyer gets
    the money back, and no screen says "refunded" before the money is."""
    s = start(time_scale=600, name="outage")  # 10 retries of the old job runner = 1 s: the outage is 3 s
    paid = [_paid_order(s) for _ in range(6)]
    s.kill("provider")
    for order, _ in paid:
        view = http.post(f"{s.checkout_url}/orders/{order}/cancel").json()
        assert view["state"] == "refund_pending" and view["screen"] == "refund_pending", view
        again = http.post(f"{s.checkout_url}/orders/{order}/cancel")
        assert again.status_code == 200, again.text  # asking twice is not an error
    time.sleep(3)
    s.restart("provider")
    for order, _ in paid:
        wait_for(lambda: order_state(s, order) == "refunded", timeout=20, what=f"{order} refunded")
    for order, trade in paid:
        assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "refunded"


def test_a_refund_that_keeps_failing_becomes_refund_failed_then_can_be_retried(start):
    """Retries spent: a durable refund_failed the buyer's screen, the history and the checker show;
    cancelling again retries it."""
    s = start({"order_service.refund_retry_schedule": ["30s", "30s"]}, name="refund_failed")
    order, trade = _paid_order(s, amount=1234)
    s.kill("provider")
    http.post(f"{s.checkout_url}/orders/{order}/cancel")
    view = wait_for(lambda: (v := http.get(f"{s.checkout_url}/orders/{order}").json())["refund_failed"] and v,
                    timeout=15, what="refund_failed")
    assert view["state"] == "refund_failed" and view["screen"] == "refund_failed"
    s.restart("checkout")  # durable
    assert http.get(f"{s.checkout_url}/orders/{order}").json()["state"] == "refund_failed"
    s.restart("provider")
    failed = [e for e in s.history() if e["type"] == "order.refund_failed" and e["order"] == order]
    assert len(failed) == 1 and failed[0]["attempts"] == 3 and failed[0]["amount"] == 1234
    summary = check_events(e for e in s.history() if e.get("order") == order)
    assert summary.end_states == {"paid_refund_failed": 1}, summary.end_states
    assert "refund of" in (s.data_dir / "checkout.log").read_text()
    again = http.post(f"{s.checkout_url}/orders/{order}/cancel")
    assert again.status_code == 200
    wait_for(lambda: order_state(s, order) == "refunded", timeout=15, what="refunded on the second request")
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "refunded"


# -- 3. storage failures --------------------------------------------------------------------------


class _FailingCommit:
    """A connection whose next COMMIT fails the way a disk I/O error does: SQLite rolls back itself."""

    def __init__(self, conn) -> None:
        self._conn, self.fail = conn, 1

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.fail:
            self.fail -= 1
            self._conn.execute("ROLLBACK")
            raise __import__("sqlite3").OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def test_a_failed_commit_fails_its_waiters_and_the_store_never_hangs(tmp_path):
    told: list[str] = []

    async def scenario() -> None:
        store = Store(tmp_path / "s.db", "CREATE TABLE IF NOT EXISTS t (x INTEGER);", on_fatal=told.append)
        real = store.conn
        store.conn = _FailingCommit(real)
        with store.tx() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(StorageError):
            await asyncio.wait_for(store.durable(), 2)
        assert not real.in_transaction
        with pytest.raises(StorageError):  # no more writes once storage failed: the service stops
            with store.tx():
                pass
        with pytest.raises(StorageError):  # answers at once, never waits for ever
            await asyncio.wait_for(store.durable(), 2)
        store.conn = real
        store.close()

    asyncio.run(scenario())
    assert told and "disk I/O error" in told[0]


def test_a_disk_failure_stops_the_checkout_loudly(start):
    """The checkout's files may not grow any more (RLIMIT_FSIZE): its next commits fail. It answers 503
    (never hangs, /healthz included), exits 75, logs why, and the runner says which service died and why."""
    s = start(name="disk")
    for _ in range(5):
        new_order(s)
    pid = s.pid("checkout")
    files = [s.data_dir / n for n in ("checkout.db", "checkout.db-wal", "checkout.log")]
    limit = max(f.stat().st_size for f in files if f.exists()) + 64 * 1024
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
    client = httpx.Client(timeout=10)
    statuses = []

    def one(i: int) -> int:
        try:
            return client.post(f"{s.checkout_url}/orders", json={"user": uid("u"), "amount": 100 + i}).status_code
        except httpx.TransportError:
            return 0  # the service has already exited

    deadline = time.monotonic() + 20
    while s.alive("checkout") and time.monotonic() < deadline:
        with ThreadPoolExecutor(16) as pool:
            statuses += list(pool.map(one, range(200)))
    wait_for(lambda: not s.alive("checkout"), timeout=5, what="the checkout to exit")
    assert s._children["checkout"].proc.returncode == 75
    assert 503 in statuses and 500 not in statuses, sorted(set(statuses))
    why = s.failure("checkout")
    assert why.startswith("checkout exited with 75") and "storage failure" in why, why
    assert s.alive("provider")


# -- 4. body limits and deep JSON -----------------------------------------------------------------


def _chunks(prefix: bytes, size: int, suffix: bytes = b""):
    yield prefix
    block = b" " * 65536
    for _ in range(size // len(block)):
        yield block
    yield suffix


def test_a_chunked_body_over_the_limit_is_refused(services):
    """No Content-Length: the limit applies to the bytes read, before any work."""
    s = services
    body = _chunks(b'{"user": "big", "amount": 100', 2 << 20, b"}")
    r = http.post(f"{s.checkout_url}/orders", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    r = http.post(f"{s.checkout_url}/notify", content=_chunks(b"{", 4 << 20, b"}"))
    assert r.status_code == 413, r.text
    r = http.post(f"{s.provider_url}/trades", content=_chunks(b"{", 2 << 20, b"}"))
    assert r.status_code == 413, r.text
    small = http.post(f"{s.checkout_url}/orders", content=_chunks(b'{"user": "u1", "amount": 100', 1000, b"}"),
                      headers={"Content-Type": "application/json"})
    assert small.status_code == 201, small.text  # chunked bodies within the limit still work


def test_deeply_nested_json_is_a_4xx(services):
    s = services
    deep = {"notify_id": "n", "trade": "t", "order": "o", "amount": 1, "trade_status": "TRADE_SUCCESS",
            "attempt": 1}
    raw = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(s.notify_secret.encode(), raw)}
    r = http.post(s.checkout_url + "/notify", content=raw, headers=headers)
    assert r.status_code == 400, r.text
    for url in (s.checkout_url + "/orders", s.provider_url + "/trades"):
        r = http.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text[:200])
    assert _notify(s, deep).status_code == 404  # still serving


# -- 6. secrets ------------------------------------------------------------------------------------


def test_no_service_starts_without_its_secrets(tmp_path):
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(default_scenario().resolved()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_CHAOS_")}
    for name in ("provider", "checkout"):
        argv = [sys.executable, "-m", f"loadtests.service.{name}", "--scenario-json", str(scenario),
                "--data", str(tmp_path / name), "--start-epoch", repr(time.time()), "--time-scale", "60"]
        if name == "checkout":
            argv += ["--provider-url", "http://127.0.0.1:9"]
        for extra in ({}, {"CHECKOUT_CHAOS_ADMIN_TOKEN": "t", "CHECKOUT_CHAOS_NOTIFY_SECRET": "  "},
                      {"CHECKOUT_CHAOS_ADMIN_TOKEN": ""}):
            run = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=30)
            assert run.returncode == 2, (name, extra, run.stderr[-2000:])
            assert "CHECKOUT_CHAOS_" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_secrets_are_never_shown(start):
    s = start(name="secrets", notify_secret="n0t-the-default-secret")
    assert s.admin_token not in repr(s) and s.notify_secret not in repr(s)
    for name in ("provider", "checkout"):
        cmdline = Path(f"/proc/{s.pid(name)}/cmdline").read_bytes()
        assert s.admin_token.encode() not in cmdline and s.notify_secret.encode() not in cmdline
    assert oct((s.data_dir / "admin_token").stat().st_mode & 0o777) == "0o600"
    from loadtests.service import cli

    import argparse

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    flags = {a for action in parser._actions for a in action.option_strings}
    assert "--admin-token" not in flags and "--notify-secret" not in flags


# -- 7. slow clients and the WAL ------------------------------------------------------------------


def test_a_client_that_never_finishes_its_headers_is_disconnected(start, monkeypatch):
    monkeypatch.setenv("CHECKOUT_CHAOS_HEADER_TIMEOUT", "1")
    s = start(name="slow")
    host, port = s.checkout_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as idle, \
            socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert idle.recv(1) == b"" and slow.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 5
    assert httpx.get(s.checkout_url + "/healthz").status_code == 200


def test_the_wal_stays_bounded_under_continuous_writes(tmp_path):
    """Writes that never pause starve PASSIVE checkpoints; past the limit the WAL is truncated."""
    limit = 256 * 1024

    async def scenario() -> int:
        store = Store(tmp_path / "w.db", "CREATE TABLE IF NOT EXISTS t (x TEXT);", wal_limit=limit)
        biggest = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with store.tx() as conn:
                conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 50)
            await store.durable()
            biggest = max(biggest, store.wal_size())
            await asyncio.sleep(0)
        store.close()
        return biggest

    biggest = asyncio.run(scenario())
    assert biggest < 8 * limit, biggest


def test_a_body_that_never_arrives_gets_408_and_the_app_never_runs():
    """InFlightLimit's body deadline (asyncio.timeout around the read): 408, the app not called, the
    request no longer counted in flight."""
    from loadtests.service.web import InFlightLimit

    called: list = []

    async def app(scope, receive, send):
        called.append(scope["path"])

    async def scenario() -> list:
        limit = InFlightLimit(app, limit=4, body_timeout=0.05)
        sent: list = []

        async def receive():
            await asyncio.sleep(3600)  # the body never comes

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/trades", "headers": [(b"content-length", b"10")]}
        await asyncio.wait_for(limit(scope, receive, send), 5)
        assert limit.in_flight == 0
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 408 and b"not received" in sent[1]["body"]
    assert called == []
