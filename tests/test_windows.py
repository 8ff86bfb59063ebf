"""Judged from outside, with windows: order-page samples become ``order.observed`` events, bounded and
counted; the checker starts a window at the first observation; docs/checker.md's black-box table agrees
with the checker's observability."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_check import END, Order

from sim.check import CLASS_NEEDS, NEEDS_OWN_EVENTS, CheckConfig, check_events
from sim.vocabulary import ANOMALY_CLASSES, EVENT_TYPES

from loadtests.adapter import load_adapter
from loadtests.buyer import OK, TIMEOUT, Reply
from loadtests.sampler import SAMPLE_NAME, OrderSampler

ROOT = Path(__file__).parents[1]
STRIPE_ADAPTER = ROOT / "loadtests" / "adapters" / "stripe_shop.toml"


# --------------------------------------------------------------------------------------------------
# The checker: a window starts when the state was first seen from outside


def _black_box_order(samples: list[tuple[float, str]], final_t: float = 900.0) -> Order:
    """A target's order as the harness sees it: created (the client's record), charged at the PSP at
    100 (the shop's close job closed it at 140, unseen), its page sampled, and read once after the drain."""
    o = Order()
    o.add(0.0, "order.created", user="u1", amount=5000, method="wallet", expires_at=120.0, observed_by="client")
    o.add(90.0, "trade.created", trade="A", amount=5000)
    o.charge(100.0).add(100.0, "trade.succeeded", trade="A", amount=5000)
    for i, (t, state) in enumerate(samples, 1):
        o.add(t, "order.observed", state=state, sample=i, observed_by="adapter")
    o.add(final_t, "order.observed", state="closed", final=True, observed_by="adapter")
    return o


def _pbc_start(o: Order, **cfg) -> float:
    s = check_events(o.events, CheckConfig(end=END, instances=True, **cfg))
    rows = [r for r in s.instances if r.cls == "paid_but_closed"]
    assert len(rows) == 1, rows
    assert rows[0].stop is None and s.per_class["paid_but_closed"].count == 1
    return rows[0].start


def test_a_window_starts_at_the_first_observation_not_at_the_final_read():
    sampled = _black_box_order([(60.0, "awaiting_payment"), (120.0, "awaiting_payment"), (180.0, "closed"),
                                (240.0, "closed")])
    assert _pbc_start(sampled) == 180.0  # first seen closed (the charge came earlier)
    assert _pbc_start(_black_box_order([])) == 900.0  # without samples: only the final read shows it
    # the repeated observations of the same state are one transition: no other class arises
    s = check_events(sampled.events, CheckConfig(end=END))
    assert {c for c, st in s.per_class.items() if st.n_windows} == {"paid_but_closed"}


def test_observed_paid_then_final_paid_is_one_payment_and_a_revival_from_closed_is_seen():
    o = Order()
    o.add(0.0, "order.created", user="u1", amount=5000, method="wallet", expires_at=120.0, observed_by="client")
    o.charge(50.0).add(50.0, "trade.succeeded", trade="A", amount=5000)
    o.add(40.0, "order.observed", state="closed", sample=1, observed_by="adapter")
    o.add(70.0, "order.observed", state="paid", sample=2, observed_by="adapter")  # the shop revived it
    o.add(900.0, "order.observed", state="paid", final=True, observed_by="adapter")
    s = check_events(o.events, CheckConfig(end=END, instances=True))
    pbc = [r for r in s.instances if r.cls == "paid_but_closed"]
    assert [(r.start, r.stop) for r in pbc] == [(50.0, 70.0)]  # closed and charged from 50, revived at 70
    assert s.per_class["duplicate_fulfilment"].n_windows == 0  # paid seen twice is not paid twice
    assert s.end_states.get("paid_open") == 1


def test_the_checkouts_own_events_win_over_observations():
    """With the reference checkout the history has its own order.closed: a sample that read the page a
    moment later (or earlier, through clock skew) moves nothing."""
    o = Order().created(expires_at=120.0).add(90.0, "trade.created", trade="A", amount=5000)
    o.charge(100.0).add(100.0, "trade.succeeded", trade="A", amount=5000)
    o.add(140.0, "order.closed", reason="ttl").add(141.0, "order.observed", state="closed", observed_by="adapter")
    o.add(130.0, "order.observed", state="paid", observed_by="adapter")  # ignored: the checkout says otherwise
    assert _pbc_start(o) == 140.0


# --------------------------------------------------------------------------------------------------
# docs/checker.md: which classes a black-box history decides, and the checker agrees


def _black_box_table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "checker.md").read_text(encoding="utf-8")
    section = text.split("## Judged from outside", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`([a-z_]+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_every_class_has_a_row_in_the_black_box_table_and_the_checker_agrees():
    rows = _black_box_table()
    assert set(rows) == set(ANOMALY_CLASSES)
    own = {cls for cls, (how, _) in rows.items() if how.startswith("only with the checkout's own events")}
    black_box = {cls for cls, (how, _) in rows.items() if how.startswith("black box")}
    assert own | black_box == set(ANOMALY_CLASSES) and not own & black_box
    assert own == set(NEEDS_OWN_EVENTS)
    # a black-box history that saw every source decides exactly the black-box classes
    o = _black_box_order([(180.0, "closed")])
    o.screen(100.5, "payment_succeeded")
    s = check_events(o.events, CheckConfig(end=END, black_box=True,
                                           observed={src: True for src in ("ledger", "gateway", "checkout",
                                                                           "screens", "bnpl")}))
    assert set(s.not_observable) == own
    assert s.observed_how["checkout"] == "order pages only (black box)"
    # the same history with the checkout's own events decides them all
    assert check_events(o.events, CheckConfig(end=END, observed={src: True for src in (
        "ledger", "gateway", "checkout", "screens", "bnpl")})).not_observable == []
    # every class the table calls black box needs only sources a black-box history has
    for cls in black_box:
        assert all(n in ("checkout", "money", "screens", "bnpl", "ledger", "checkout|gateway")
                   for n in CLASS_NEEDS[cls])


def test_run_start_declares_a_black_box_history():
    o = _black_box_order([(180.0, "closed")])
    events = [{"t": 0.0, "type": "run.start", "black_box": True}] + o.events
    assert set(check_events(events, CheckConfig(end=END)).not_observable) >= set(NEEDS_OWN_EVENTS)
    assert "order.observed" in EVENT_TYPES


# --------------------------------------------------------------------------------------------------
# The sampler, on a fake clock and a fake checkout


class FakeShop:
    """A transport whose clock only moves when someone sleeps; the page shows ``states[order]`` from a time."""

    def __init__(self, changes: dict[str, list[tuple[float, str]]], latency: float = 0.01) -> None:
        self.now = 1000.0
        self.changes, self.latency = changes, latency
        self.sent: list[tuple[float, str]] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)

    def send(self, method, url, body, timeout, name) -> Reply:
        assert name == SAMPLE_NAME and method == "GET"
        order = url.rsplit("/", 1)[1]
        self.sent.append((self.now, order))
        self.now += self.latency
        if order == "down":
            return Reply(TIMEOUT, error="timeout")
        state = "awaiting_payment"
        for since, s in self.changes.get(order, ()):
            if self.now >= since:
                state = s
        return Reply(OK, 200, {"order": order, "state": state})


def _sampler(shop: FakeShop, events: list, **kw) -> OrderSampler:
    args = dict(base_url="http://127.0.0.1:1", epoch=1000.0, time_scale=60.0, interval=60.0, rate=20.0,
                max_per_order=5, end=1030.0, timeout=1.0)
    args.update(kw)
    return OrderSampler(load_adapter(STRIPE_ADAPTER), shop, events.append, **args)


def test_samples_become_observations_until_the_page_settles():
    shop = FakeShop({"a": [(1003.5, "paid")], "b": [(1002.2, "closed")]})
    events: list[dict] = []
    s = _sampler(shop, events)
    s.add("a"), s.add("b"), s.add("down")
    s.loop()
    a = [e for e in events if e["order"] == "a"]
    assert [e["state"] for e in a] == ["awaiting_payment"] * 3 + ["paid"]  # then no more: paid is settled
    assert all(e["type"] == "order.observed" and e["observed_by"] == "adapter" for e in events)
    b = [e["state"] for e in events if e["order"] == "b"]
    assert b[:2] == ["awaiting_payment", "awaiting_payment"] and set(b[2:]) == {"closed"} and len(b) == 5
    first_paid = next(e for e in a if e["state"] == "paid")
    assert 3.5 * 60 <= first_paid["t"] <= 4.6 * 60  # scenario seconds since the epoch, within one interval
    c = s.counters
    assert c.sample_requests == len(shop.sent) == 4 + 5 + 5  # a settles; b and down stop at the cap of 5
    assert c.sample_errors == 5 and c.sample_capped_orders == 2 and c.sampled_orders == 3
    assert not [e for e in events if e["order"] == "down"]


def test_samples_per_second_and_per_order_are_bounded():
    shop = FakeShop({}, latency=0.001)
    events: list[dict] = []
    s = _sampler(shop, events, interval=6.0, rate=10.0, max_per_order=4, end=1020.0)  # every 0.1 s wall
    for i in range(200):
        s.add(f"o{i}")
    s.loop()
    starts = [t for t, _ in shop.sent]
    per_order: dict[str, int] = {}
    for _, order in shop.sent:
        per_order[order] = per_order.get(order, 0) + 1
    assert max(per_order.values()) <= 4
    # 10 a second: never more than 11 starts in any one-second span, about 10 × 19.9 s in all
    assert all(sum(1 for u in starts if t <= u < t + 1.0) <= 11 for t in starts)
    assert 150 <= len(starts) <= 200
    assert s.counters.sample_late > 0 and s.counters.sample_lag_max > 1.0  # the budget made samples wait
    assert len(events) == len(starts)


# --------------------------------------------------------------------------------------------------
# A short live run against an SDK-built shop (loopback, well under a minute)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _naive_stripe_shop_run(tmp_path: Path, *sets: str) -> tuple[dict, list[dict]]:
    import json
    import os
    import subprocess
    import sys
    import time

    import httpx

    from sim.cli import main

    provider_port, shop_port = _free_port(), _free_port()
    out, shop_url = tmp_path / "run", f"http://127.0.0.1:{shop_port}"
    env = {**os.environ, "STRIPE_API_BASE": f"http://127.0.0.1:{provider_port}",
           "STRIPE_KEY_FILE": str(out / "services" / "psp" / "stripe" / "secret_key"),
           "SHOP_CLOSE": "naive", "SHOP_ORDER_TTL": "2", "SHOP_CLOSE_EVERY": "0.25",
           "SHOP_DB": str(tmp_path / "shop.db"), "SHOP_PORT": str(shop_port), "SHOP_PUBLIC_URL": shop_url}
    with open(tmp_path / "shop.log", "wb") as log:
        shop = subprocess.Popen([sys.executable, str(ROOT / "tests" / "shops" / "stripe_shop.py")], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(shop_url + "/orders/none", timeout=1).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            assert shop.poll() is None and time.monotonic() < deadline, (tmp_path / "shop.log").read_text()
            time.sleep(0.1)
        argv = ["load", str(ROOT / "tests" / "fixtures" / "live_mall.toml"), "--out", str(out), "-q", "--psp", "stripe",
                "--target", shop_url, "--target-config", str(STRIPE_ADAPTER), "--provider-port", str(provider_port),
                "--set", "user.payment_methods={wallet = 0.0, card = 1.0, bnpl = 0.0}"]
        for s in sets:
            argv += ["--set", s]
        main(argv)
    finally:
        shop.terminate()
        shop.wait(timeout=10)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return json.loads((out / "results.json").read_text()), history


@pytest.mark.slow
def test_a_live_run_samples_order_pages_and_windows_start_at_the_first_observation(tmp_path):
    """The naive Stripe shop (close job ignores the Checkout Session; a late payment stays on a closed
    order), 15 buyers a wall second, sampled every 10 s of scenario time: the pages are read within the caps, counted apart
    from the buyers' calls, and paid_but_closed windows start at a sample, before the read after the drain."""
    doc, history = _naive_stripe_shop_run(tmp_path, "live.order_sample_interval=10s", "live.order_sample_max=12",
                                          "live.order_sample_rate=20", "load.arrival_rate=0.25")
    live = doc["live"]
    samples = live["order_samples"]
    seen = [e for e in history if e["type"] == "order.observed" and not e.get("final")]
    final = [e for e in history if e["type"] == "order.observed" and e.get("final")]
    assert samples["interval_s"] == 10.0 and samples["requests"] >= len(seen) > 0 and final
    assert samples["observations"] == len(seen) and samples["final_reads"] == len(final)
    per_order: dict[str, int] = {}
    for e in seen:
        per_order[e["order"]] = per_order.get(e["order"], 0) + 1
    assert max(per_order.values()) <= 12
    assert samples["requests"] <= 20 * (live["load_wall_s"] + live["drain_wall_s"]) + 20  # the rate cap
    # not buyer traffic: no client.* event is a sample, and Locust counts them under their own name
    assert not [e for e in history if e["type"].startswith("client.") and e.get("op") == "order_status"
                and e.get("name") == "order page (sample)"]
    assert any(r["name"] == "order page (sample)" for r in live["locust"]["requests"])
    # windows: every paid_but_closed instance starts at the first time its order was seen closed
    summary = check_events(history, CheckConfig(instances=True))  # the run.start of the history configures it
    rows = [r for r in summary.instances if r.cls == "paid_but_closed"]
    assert rows and doc["anomalies"]["paid_but_closed"]["count"] == len([r for r in rows if r.stop is None
                                                                         and r.counted])
    end_read = min(e["t"] for e in final)
    first_closed: dict[str, float] = {}
    for e in sorted(seen + final, key=lambda e: e["t"]):
        if e["state"] == "closed":
            first_closed.setdefault(e["order"], e["t"])
    assert [r for r in rows if r.start < end_read], "no window started before the read after the drain"
    for r in rows:
        assert r.start >= first_closed[r.order] - 1e-6  # never before the shop's close was visible
    # a black-box history: the classes that need the checkout's own events are not observable
    assert set(summary.not_observable) >= set(NEEDS_OWN_EVENTS)
    assert doc["anomalies"]["oversold"].get("observable") is False


def test_a_slow_checkout_gets_fewer_samples():
    fast, slow = FakeShop({}, latency=0.001), FakeShop({}, latency=0.4)  # 0.4 s > a quarter of the 1 s timeout
    counts = []
    for shop in (fast, slow):
        s = _sampler(shop, [], interval=6.0, rate=10.0, max_per_order=100, end=1010.0)
        for i in range(100):
            s.add(f"o{i}")
        s.loop()
        counts.append(len(shop.sent))
        assert (s.counters.sample_backoffs > 0) == (shop is slow)
    assert counts[0] >= 90 and counts[1] <= 12  # 10/s for 9.9 s; backing off to one a second
