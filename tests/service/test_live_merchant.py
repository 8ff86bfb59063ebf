"""The reference checkout's merchant, live: every paid order is shipped, delivered and completed, and
each merchant of ``merchant.population`` sends BNPL *finish* its own way — ``sync``, ``batch`` (runs
skipped while the previous one still runs) or ``queue`` (a worker whose restarts lose the messages
it holds, unless ``merchant.finish_outbox``). No per-order coin decides a lost finish: the checker
finds ``bnpl_stuck_unfinished`` where a restart met a held message, and nowhere else."""

from __future__ import annotations

import math

from sim.check import CheckConfig, check_events

from .helpers import events_of, http, new_order, order_state, start_payment, uid, wait_for

FULFIL = {"merchant.ship_time": "30s", "merchant.delivery_time": "60s", "merchant.bnpl_finish_delay": "30s",
          "merchant.bnpl_finish_failure": 0.0, "bnpl.sync_lag": "5s", "bnpl.deduction_failure": 0.0}


def _now(s) -> float:
    return s.admin("checkout", "GET", "/admin/stats").json()["now"]


def _merchant_stats(s, name: str) -> dict:
    return s.admin("checkout", "GET", "/admin/stats").json()["merchants"][name]


def _t(events: list[dict], type_: str) -> float:
    return next(e["t"] for e in events if e["type"] == type_)


def _checked(s, orders: list[str], limit: float):
    wanted = set(orders)
    return check_events((e for e in s.history() if e.get("order") in wanted),
                        CheckConfig(end=_now(s), bnpl_finish_limit=limit))


def _paid_order(s, method: str, **extra) -> str:
    order = new_order(s, amount=2300, method=method, **extra)["order"]
    answer = start_payment(s, order)
    if method == "bnpl":
        assert answer["state"] == "authorized", answer
    else:
        assert http.post(answer["pay_url"]).json()["state"] == "succeeded"
        wait_for(lambda: "order.paid" in [e["type"] for e in events_of(s, order)], timeout=10, what="the notification")
    return order


def test_every_paid_order_is_shipped_delivered_and_completed(services):
    """Wallet, card and BNPL: paid -> shipped ``ship_time`` later -> delivered ``delivery_time`` after
    that -> completed (at delivery; BNPL when its finish is accepted)."""
    s = services
    s.set_faults(FULFIL)
    orders = {m: _paid_order(s, m) for m in ("wallet", "card", "bnpl")}
    for method, order in orders.items():
        wait_for(lambda o=order: order_state(s, o) == "completed", timeout=15, what=f"the {method} order completed")
    for method, order in orders.items():
        ev = events_of(s, order)
        types = [e["type"] for e in ev]
        assert types.count("order.shipped") == types.count("order.delivered") == types.count("order.completed") == 1
        paid, shipped, delivered, completed = (_t(ev, t) for t in ("order.paid", "order.shipped", "order.delivered",
                                                                     "order.completed"))
        assert shipped >= paid + 30 and delivered >= shipped + 60, (method, paid, shipped, delivered)
        if method == "bnpl":
            assert completed >= delivered + 30 and _t(ev, "bnpl.finish_sent") >= delivered + 30
        else:
            assert completed == delivered and "bnpl.finish_sent" not in types
        assert next(e for e in ev if e["type"] == "order.created")["merchant"] == "m1"  # the default population
    summary = _checked(s, list(orders.values()), 86400.0)
    assert summary.end_states == {"paid_open": 2, "bnpl_settled": 1}, summary.end_states  # the checker's names
    assert sum(c.count for c in summary.per_class.values()) == 0


def test_a_paid_order_cancelled_before_it_ships_is_refunded_and_never_shipped(services):
    s = services
    s.set_faults({**FULFIL, "merchant.ship_time": "3m"})
    order = _paid_order(s, "wallet")
    assert http.post(f"{s.checkout_url}/orders/{order}/cancel").status_code == 200
    wait_for(lambda: order_state(s, order) == "refunded", timeout=10,
             what=f"the refund: {[e['type'] for e in events_of(s, order)]}")
    wait_for(lambda: _now(s) > _t(events_of(s, order), "order.paid") + 240, timeout=20, what="past the ship time")
    assert "order.shipped" not in [e["type"] for e in events_of(s, order)]


def test_an_order_of_a_merchant_outside_the_population_is_refused(services):
    s = services
    r = http.post(f"{s.checkout_url}/orders", json={"user": uid("u"), "amount": 100, "merchant": "nobody"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "merchant" and r.json()["code"] == "MERCHANT_UNKNOWN"
    assert "nobody" in r.json()["error"] and "m1" in r.json()["error"]
    assert new_order(s)["merchant"] == "m1"  # none named: the population's first


QUEUE = {"merchant.population": [{"name": "q1", "share": 1.0, "finish": "queue", "restart_every": "40s"}],
         "merchant.ship_time": "0s", "merchant.delivery_time": "10s", "merchant.bnpl_finish_delay": "2m",
         "merchant.bnpl_finish_failure": 0.0, "bnpl.deduction_failure": 0.0}


def test_a_queue_worker_restart_loses_the_finishes_it_holds_unless_the_outbox_keeps_them(start):
    """The worker holds each finish message 2 min; it restarts every 40 s, so every message is in its
    memory at a restart: all lost (``bnpl_stuck_unfinished`` for each) — and none with the outbox."""
    s = start(QUEUE)
    lost = [_paid_order(s, "bnpl") for _ in range(3)]
    for order in lost:
        wait_for(lambda o=order: any(e["type"] == "merchant.worker_restarted" for e in events_of(s, o)),
                 timeout=10, what="a restart while the message was held")
    last_delivered = max(_t(events_of(s, o), "order.delivered") for o in lost)
    wait_for(lambda: _now(s) > last_delivered + 200, timeout=20, what="past the hold and the finish limit")
    for order in lost:
        ev = events_of(s, order)
        restarted = [e for e in ev if e["type"] == "merchant.worker_restarted"]
        assert restarted[0]["merchant"] == "q1" and restarted[0]["lost"] is True
        assert restarted[0]["t"] < _t(ev, "order.delivered") + 120  # inside the hold
        assert "bnpl.finish_sent" not in [e["type"] for e in ev] and order_state(s, order) == "delivered"
    summary = _checked(s, lost, 180.0)
    assert summary.per_class["bnpl_stuck_unfinished"].count == 3, summary.end_states
    assert summary.end_states == {"bnpl_unfinished": 3}, summary.end_states
    stats = _merchant_stats(s, "q1")
    assert stats["restarts"] >= 1 and stats["lost"] == 3 and stats["held"] == 0

    s.set_faults({"merchant.finish_outbox": True})
    kept = [_paid_order(s, "bnpl") for _ in range(3)]
    for order in kept:
        wait_for(lambda o=order: order_state(s, o) == "completed", timeout=15, what="the finish sent again")
    last_delivered = max(_t(events_of(s, o), "order.delivered") for o in kept)
    wait_for(lambda: _now(s) > last_delivered + 200, timeout=20, what="past the finish limit")
    for order in kept:
        ev = events_of(s, order)
        restarted = [e for e in ev if e["type"] == "merchant.worker_restarted"]
        assert restarted and restarted[0]["lost"] is False
        assert _t(ev, "bnpl.finish_sent") >= restarted[0]["t"]  # sent by the restarted worker
    summary = _checked(s, kept, 180.0)
    assert summary.per_class["bnpl_stuck_unfinished"].count == 0, summary.end_states
    assert summary.end_states == {"bnpl_settled": 3}, summary.end_states


BATCH = {"merchant.population": [{"name": "b1", "share": 1.0, "finish": "batch", "batch_interval": "2m",
                                  "batch_item_time": "100s"}],
         "merchant.ship_time": "0s", "merchant.delivery_time": "10s", "merchant.bnpl_finish_failure": 0.0,
         "bnpl.deduction_failure": 0.0}


def test_a_batch_merchant_sends_finishes_in_runs_and_skips_a_run_while_one_runs(start):
    """Every 2 min a run sends finish for what was delivered since, one call per 100 s: three orders
    take a run 300 s, so the runs due meanwhile are skipped and a fourth order waits for a later run."""
    s = start(BATCH)
    # Early in an interval, so that the three are delivered before the same run (10 s after payment).
    wait_for(lambda: 5 <= _now(s) % 120 < 60, timeout=5, what="the start of an interval")
    first = [_paid_order(s, "bnpl") for _ in range(3)]
    for order in first:
        wait_for(lambda o=order: order_state(s, o) == "delivered", timeout=10, what="delivered")
    run = math.ceil(max(_t(events_of(s, o), "order.delivered") for o in first) / 120) * 120
    wait_for(lambda: _merchant_stats(s, "b1").get("batch_runs", 0) >= 1, timeout=10, what="the first run")
    late = _paid_order(s, "bnpl")  # delivered while the first run still sends
    for order in first + [late]:
        wait_for(lambda o=order: order_state(s, o) == "completed", timeout=25, what="finished by a run")
    sent = sorted(_t(events_of(s, o), "bnpl.finish_sent") for o in first)
    assert sent[0] >= run + 100 and sent[1] >= sent[0] + 100 and sent[2] >= sent[1] + 100, (run, sent)
    late_delivered = _t(events_of(s, late), "order.delivered")
    # Delivered while the first run still sends (it ends near run + 300), before the run at run + 240.
    assert late_delivered <= run + 240, (run, late_delivered)
    # The run due after its delivery found the first still running: skipped; a later run sent it.
    assert _t(events_of(s, late), "bnpl.finish_sent") >= math.ceil(late_delivered / 120) * 120 + 120 + 100
    assert _merchant_stats(s, "b1")["batch_skipped"] >= 1
    summary = _checked(s, first + [late], 86400.0)
    assert summary.end_states == {"bnpl_settled": 4}, summary.end_states


def test_a_paused_batch_job_skips_its_runs_until_the_pause_ends(start):
    """merchant.batch_paused (the big-promotion plan pausing lower-priority jobs; a fault window or, here,
    a run-time override): the runs due while it is on are skipped, counted as ``batch_paused``, and the
    delivered agreement waits; the first run after the pause sends its finish."""
    s = start({**BATCH, "merchant.population": [{"name": "b1", "share": 1.0, "finish": "batch",
                                                 "batch_interval": "2m", "batch_item_time": "1s"}]})
    s.set_faults({"merchant.batch_paused": True})
    order = _paid_order(s, "bnpl")
    wait_for(lambda: order_state(s, order) == "delivered", timeout=10, what="delivered")
    wait_for(lambda: _merchant_stats(s, "b1").get("batch_paused", 0) >= 2, timeout=15, what="two paused runs")
    assert order_state(s, order) == "delivered"
    assert _merchant_stats(s, "b1").get("batch_runs", 0) == 0
    resumed = _now(s)
    s.set_faults({})
    wait_for(lambda: order_state(s, order) == "completed", timeout=10, what="finished by the run after the pause")
    assert _t(events_of(s, order), "bnpl.finish_sent") >= resumed
    assert _merchant_stats(s, "b1")["batch_runs"] == 1


HELD = {"merchant.population": [{"name": "q1", "share": 1.0, "finish": "queue"}], "merchant.ship_time": "0s",
        "merchant.delivery_time": "10s", "merchant.bnpl_finish_delay": "3m", "merchant.bnpl_finish_failure": 0.0,
        "bnpl.deduction_failure": 0.0}


def test_a_checkout_crash_empties_the_queue_workers_memory_and_the_outbox_survives_it(start):
    """The worker's memory is the process's: a crash while it holds finishes loses them (nothing says
    so but the order that never completes); with the outbox the restarted checkout sends them again."""
    for outbox in (False, True):
        s = start({**HELD, "merchant.finish_outbox": outbox}, name=f"outbox-{outbox}")
        orders = [_paid_order(s, "bnpl") for _ in range(2)]
        for order in orders:
            wait_for(lambda o=order: order_state(s, o) == "delivered", timeout=10, what="delivered")
        assert _merchant_stats(s, "q1")["held"] == 2
        killed_at = _now(s)
        s.kill("checkout")
        s.restart("checkout")
        if outbox:
            for order in orders:
                wait_for(lambda o=order: order_state(s, o) == "completed", timeout=10, what="sent again at start")
                # sent by the restarted process (the dead one's timers died with it), from its outbox
                assert killed_at < _t(events_of(s, order), "bnpl.finish_sent")
        else:
            last_delivered = max(_t(events_of(s, o), "order.delivered") for o in orders)
            wait_for(lambda: _now(s) > last_delivered + 240, timeout=15, what="past the hold")
            for order in orders:
                assert order_state(s, order) == "delivered"
                assert "bnpl.finish_sent" not in [e["type"] for e in events_of(s, order)]
            assert _checked(s, orders, 200.0).per_class["bnpl_stuck_unfinished"].count == 2
