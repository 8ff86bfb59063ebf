"""Signed notifications: verification at the checkout, delivery and retries from the provider's outbox."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from loadtests.service import signing

from .helpers import http, new_order, new_trade, order_state, start_payment, wait_for


def _post_notify(services, body: dict, signature: str | None) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[signing.HEADER] = signature
    return http.post(services.checkout_url + "/notify", content=raw, headers=headers)


def test_signature_is_verified(services):
    """No signature, a wrong one, a stale one: 401; a good one is acted on and answered 'success'."""
    order = new_order(services, amount=700)["order"]
    trade = start_payment(services, order)["trade"]  # a trade of this order (unpaid: only the notice says so)
    body = {"notify_id": "n-1", "trade": trade, "order": order, "amount": 700,
            "trade_status": "TRADE_SUCCESS", "attempt": 1}
    raw = json.dumps(body).encode()
    secret = services.notify_secret.encode()
    assert _post_notify(services, body, None).status_code == 401
    assert _post_notify(services, body, signing.sign(b"not-the-secret", raw)).status_code == 401
    stale = _post_notify(services, body, signing.sign(secret, raw, timestamp=1_000_000_000))
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    tampered = _post_notify(services, {**body, "amount": 1}, signing.sign(secret, raw))
    assert tampered.status_code == 401 and tampered.json()["field"] == signing.HEADER
    assert order_state(services, order) == "awaiting_payment"
    ok = _post_notify(services, body, signing.sign(secret, raw))
    assert ok.status_code == 200 and ok.text == "success"
    assert order_state(services, order) == "paid"
    unknown = {**body, "order": "nobody"}
    r = _post_notify(services, unknown, signing.sign(secret, json.dumps(unknown).encode()))
    assert r.status_code == 404


def test_signing_round_trip():
    """verify() accepts what sign() produced and names what is wrong otherwise."""
    body = b'{"a":1}'
    header = signing.sign(b"k", body)
    assert signing.verify(b"k", body, header) is None
    assert "does not match" in signing.verify(b"k", body + b" ", header)
    assert "malformed" in signing.verify(b"k", body, "v1=abc")
    assert "missing" in signing.verify(b"k", body, None)


class _Receiver:
    """A stand-in staging checkout: verifies signatures, fails the first ``fail`` deliveries."""

    def __init__(self, secret: bytes, fail: int) -> None:
        self.secret, self.fail = secret, fail
        self.received: list[dict] = []
        self.bad_signatures = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if signing.verify(outer.secret, raw, self.headers.get(signing.HEADER)):
                    outer.bad_signatures += 1
                    self._answer(401, b"bad signature")
                    return
                outer.received.append(json.loads(raw))
                if len(outer.received) <= outer.fail:
                    self._answer(500, b"fail")
                else:
                    self._answer(200, b"success")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made: list[_Receiver] = []

    def make(secret: str, fail: int) -> _Receiver:
        r = _Receiver(secret.encode(), fail)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _notify_events(s, trade: str) -> list[dict]:
    return [e for e in s.history() if e.get("trade") == trade and e["type"].startswith("notify.")]


def test_notification_retried_until_acknowledged(start, receiver_factory):
    """A receiver that fails twice gets attempts 1, 2, 3 on the notify schedule, then no more.

    At a time scale of 15 (not the suite's 60) the 6 s of slack allowed past the schedule are 400 ms of
    wall time: at 60 they were 100 ms, which a loaded CI machine's scheduling delay once took (13.1 s)."""
    services = start(time_scale=15.0)
    services.set_faults({"gateway.notify_schedule": ["6s", "6s", "6s", "6s"]})
    rx = receiver_factory(services.notify_secret, fail=2)
    trade = new_trade(services, amount=900, notify_url=rx.url)["trade"]
    assert http.post(f"{services.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
    wait_for(lambda: len(rx.received) >= 3, timeout=10, what="the third attempt")
    assert [m["attempt"] for m in rx.received] == [1, 2, 3]
    assert {m["notify_id"] for m in rx.received} == {f"{trade}-n"}  # stable across retries
    assert rx.bad_signatures == 0
    sent = wait_for(lambda: [e for e in _notify_events(services, trade) if e["type"] == "notify.sent"][2:] and
                    [e for e in _notify_events(services, trade) if e["type"] == "notify.sent"], what="3 sends")
    assert [e["attempt"] for e in sent] == [1, 2, 3]
    gaps = [b["t"] - a["t"] for a, b in zip(sent, sent[1:])]
    assert all(5.9 <= g <= 12.0 for g in gaps), gaps  # scenario seconds, on the 6s schedule


def test_notification_given_up_when_schedule_spent(services, receiver_factory):
    """A receiver that never acknowledges gets 1 + len(schedule) attempts, then none."""
    services.set_faults({"gateway.notify_schedule": ["3s", "3s"]})
    rx = receiver_factory(services.notify_secret, fail=99)
    trade = new_trade(services, amount=100, notify_url=rx.url)["trade"]
    http.post(f"{services.provider_url}/trades/{trade}/pay")
    wait_for(lambda: len(rx.received) >= 3, timeout=10, what="three attempts")
    sent = wait_for(lambda: len([e for e in _notify_events(services, trade) if e["type"] == "notify.sent"]) == 3,
                    what="three notify.sent")
    assert sent and len(rx.received) == 3


def test_lost_and_duplicated_notifications_are_recorded(services):
    """notify_loss and notify_duplicate act per attempt; the checkout treats a duplicate as a no-op."""
    services.set_faults({"gateway.notify_schedule": ["3s"] * 6, "gateway.notify_loss": 0.5,
                         "gateway.notify_duplicate": 1.0})
    orders = [new_order(services, amount=100 + i)["order"] for i in range(6)]
    for o in orders:
        http.post(start_payment(services, o)["pay_url"])
    wait_for(lambda: all(order_state(services, o) == "paid" for o in orders), timeout=15,
             what="every order paid despite losses")
    history = [e for e in services.history() if e.get("order") in orders]
    lost = [e for e in history if e["type"] == "notify.lost"]
    paid = [e for e in history if e["type"] == "order.paid"]
    assert len(paid) == 6  # duplicates never mark an order paid twice
    wait_for(lambda: len([e for e in services.history() if e.get("order") in orders and e["type"] == "notify.received"])
             > len(paid), what="duplicate deliveries")
    assert lost, "with notify_loss=0.5 over >= 6 attempts at least one is lost"


def test_outbox_row_is_the_job_and_survives_a_kill_9(start, receiver_factory):
    """A notification is one outbox row and no jobs row; after a failed attempt the row holds the next
    attempt's due time, and a provider killed then restarted makes that attempt from the row."""
    import sqlite3

    s = start({"gateway.notify_schedule": ["150s", "6s"]}, name="outbox")  # 2.5 s wall to the retry
    rx = receiver_factory(s.notify_secret, fail=1)
    trade = new_trade(s, amount=500, notify_url=rx.url)["trade"]
    assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
    wait_for(lambda: len(rx.received) >= 1, timeout=10, what="the first attempt")
    db = sqlite3.connect(s.data_dir / "provider.db")

    def row() -> tuple:
        return db.execute("SELECT state, attempts, due FROM notifications WHERE notify_id = ?", (f"{trade}-n",)).fetchone()

    wait_for(lambda: row()[1] == 1, timeout=10, what="the failed attempt counted")
    state, attempts, due = row()
    assert state == "pending" and due is not None
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'notify'").fetchone()[0] == 0
    db.close()
    s.kill("provider")
    s.restart("provider")
    wait_for(lambda: len(rx.received) >= 2, timeout=15, what="the second attempt, after the restart")
    assert [m["attempt"] for m in rx.received] == [1, 2]
    wait_for(lambda: s.admin("provider", "GET", "/admin/stats").json()["notifications"] == {"acked": 1},
             timeout=10, what="the notification acknowledged")


def _scheduler(s) -> dict:
    return s.admin("provider", "GET", "/admin/stats").json()["scheduler"]


def test_notification_latency_holds_no_scheduler_slot(start, receiver_factory):
    """``gateway.notify_latency`` is the network's, modelled: a notification waiting it out holds none of
    the provider's 128 job slots (which capped notifications at 128 per latency), so more notifications
    than slots wait at once, and each is posted once its latency is over."""
    from concurrent.futures import ThreadPoolExecutor

    n = 150  # more notifications waiting at once than the scheduler has slots
    # 15 s of wall time at x60; the ack timeout at 10 min (10 s of wall time), not 5 s (83 ms), so that 150
    # posts landing at once on the test's receiver are not retried for its slowness (this test is about slots)
    s = start({"gateway.notify_latency": "900s", "gateway.notify_ack_timeout": "600s"}, name="latency")
    rx = receiver_factory(s.notify_secret, fail=0)
    trades = [new_trade(s, amount=100 + i, notify_url=rx.url)["trade"] for i in range(n)]
    with ThreadPoolExecutor(16) as pool:  # all paid within a few seconds, well inside the latency
        states = list(pool.map(lambda t: httpx.post(f"{s.provider_url}/trades/{t}/pay", timeout=30).json()["state"],
                               trades))
    assert states == ["succeeded"] * n
    waiting = wait_for(lambda: (c := _scheduler(s))["modelled_waits"] == n and c, timeout=10,
                       what=f"all {n} notifications in their latency at once")
    assert waiting["in_slots"] == 0, waiting  # none of them holds a slot while it waits
    assert not rx.received  # and none has been posted before its latency
    wait_for(lambda: len(rx.received) >= n, timeout=60, what="every notification, after its latency")
    assert sorted(m["notify_id"] for m in rx.received) == sorted(f"{t}-n" for t in trades)
    assert {m["attempt"] for m in rx.received} == {1}
    wait_for(lambda: s.admin("provider", "GET", "/admin/stats").json()["notifications"] == {"acked": n},
             timeout=15, what="every notification acknowledged")
    after = _scheduler(s)
    assert after["in_slots"] == 0 and after["modelled_waits"] == 0, after


def test_restart_during_notification_latency_still_delivers(start, receiver_factory):
    """A provider killed while notifications wait out their latency makes those attempts after its
    restart, from the outbox rows: each notification is delivered once, as the same attempt 1 (the
    interrupted attempt left no record: no notify.sent, no attempt counted)."""
    # 8 s of wall time at x60; the ack timeout at 10 min (10 s of wall time), not 5 s (83 ms): a receiver slowed
    # by a loaded host would otherwise see attempt 2 of a delivery it did answer (this test is about the restart)
    s = start({"gateway.notify_latency": "480s", "gateway.notify_ack_timeout": "600s"}, name="latency-restart")
    rx = receiver_factory(s.notify_secret, fail=0)
    trades = [new_trade(s, amount=300 + i, notify_url=rx.url)["trade"] for i in range(3)]
    for trade in trades:
        assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
    wait_for(lambda: _scheduler(s)["modelled_waits"] == 3, timeout=5, what="the notifications in their latency")
    s.kill("provider")
    assert not rx.received
    s.restart("provider")
    wait_for(lambda: len(rx.received) >= 3, timeout=30, what="the notifications, after the restart")
    assert sorted(m["notify_id"] for m in rx.received) == sorted(f"{t}-n" for t in trades)
    assert [m["attempt"] for m in rx.received] == [1, 1, 1]
    wait_for(lambda: s.admin("provider", "GET", "/admin/stats").json()["notifications"] == {"acked": 3},
             timeout=15, what="the notifications acknowledged")
    sent = [e for e in s.history() if e["type"] == "notify.sent" and e.get("trade") in trades]
    assert sorted((e["trade"], e["attempt"]) for e in sent) == sorted((t, 1) for t in trades)


def test_an_attempt_during_a_notify_endpoint_outage_is_not_posted(start):
    """order_service.notify_outage_every: the provider draws the simulation's outage windows (replication
    0) and does not post an attempt due inside one: it is recorded lost with cause endpoint_down and the
    order stays unpaid at the checkout until an attempt falls outside the outage."""
    services = start({"order_service.notify_outage_every": {"dist": "constant", "value": "1s"},
                      "order_service.notify_outage_duration": {"dist": "constant", "value": "2h"}})
    order = new_order(services, amount=321)["order"]
    http.post(start_payment(services, order)["pay_url"])
    lost = wait_for(lambda: [e for e in services.history() if e.get("order") == order and e["type"] == "notify.lost"],
                    timeout=10, what="the first attempt recorded lost")
    assert lost[0]["cause"] == "endpoint_down" and lost[0]["attempt"] == 1
    assert not [e for e in services.history() if e.get("order") == order and e["type"] == "notify.received"]
    assert order_state(services, order) == "awaiting_payment"
