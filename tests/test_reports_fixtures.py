"""The small synthetic results documents the report tests draw from (``tests/fixtures/results_*.json``).

They follow ``docs/results.md`` by hand: the numbers are made up but shaped like a real run (a midnight
spike, a gateway brownout, paid-but-closed orders whose notifications came after the close job). This
module writes them (``python tests/test_reports_fixtures.py``) and its tests check that the committed
files are what it writes and that they keep the contract.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CLASSES = (
    "paid_but_closed", "success_shown_then_closed", "failure_shown_but_charged", "double_charge",
    "charge_without_order", "order_paid_without_charge", "stuck_pending", "bnpl_stuck_unfinished",
    "bnpl_false_overdue", "bnpl_deduction_failed", "ledger_imbalance",
)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262}  # Student t, 97.5% quantile


def _round(value: Any) -> Any:
    """Floats to 9 significant digits, as results documents are written."""
    if isinstance(value, float):
        return 0.0 if value == 0 else float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _anomaly(counts: list[int], orders: list[int], windows: list[float], amounts: list[float],
             repaired: int = 0) -> dict[str, Any]:
    """One class's entry from per-replication counts, instance windows (s) and amounts (CNY)."""
    reps = len(counts)
    per_rep = [c / n for c, n in zip(counts, orders)]
    total = sum(counts)
    if reps == 1:
        rate, ci, method = per_rep[0], wilson(counts[0], orders[0]), "wilson"
    else:
        rate = sum(per_rep) / reps
        sd = math.sqrt(sum((r - rate) ** 2 for r in per_rep) / (reps - 1))
        half = T95[reps - 1] * sd / math.sqrt(reps)
        ci, method = [max(0.0, rate - half), rate + half], "t"
    window = None
    if windows:
        window = {"median": _quantile(windows, 0.5), "p99": _quantile(windows, 0.99), "max": max(windows),
                  "mean": sum(windows) / len(windows)}
    return {"count": total, "repaired": repaired, "rate": rate, "ci95": ci, "ci_method": method,
            "per_replication": per_rep, "window_s": window, "window_samples": windows[:500],
            "amount": round(sum(amounts), 2)}


def _scenario(name: str, description: str, **overrides: Any) -> dict[str, Any]:
    from sim.scenario import scenario_from_dict

    data = {"name": name, "description": description}
    data.update(overrides)
    return scenario_from_dict(data, name).resolved()


def _ev(t: float, type_: str, actor: str, order: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "type": type_, "actor": actor, "order": order, **fields}


def _charge(t: float, order: str, trade: str, user: str, fen: int, actor: str = "bank") -> dict[str, Any]:
    return _ev(t, "ledger.txn", actor, order, txn=f"x-{trade}", kind="charge", trade=trade,
               postings=[{"account": f"user:{user}", "amount": -fen}, {"account": "clearing", "amount": fen}])


def paid_but_closed_story(order: str, t0: float, fen: int, user: str, *, late_by: float,
                          repaired_at: float | None = None, busy: int = 0) -> list[dict[str, Any]]:
    """The seed story: the buyer pays in the last seconds, the bank call times out, the bank debits
    anyway, the TTL job closes the order, and the gateway's notification arrives to a closed order."""
    trade = f"T{order}-1"
    ttl = 900.0
    exp = t0 + ttl
    ev = [
        _ev(t0, "order.created", "order_service", order, user=user, amount=fen, method="card", expires_at=exp),
        _ev(t0 + 0.12, "app.shown", "app", order, screen="awaiting_payment"),
        _ev(t0 + 0.31, "trade.created", "gateway", order, trade=trade, amount=fen, expires_at=t0 + 15 * 86400),
        _ev(exp - 11.7, "user.pay", "user", order, trade=trade, attempt=1),
        _ev(exp - 11.6, "trade.processing", "gateway", order, trade=trade),
        _ev(exp - 3.6, "trade.unknown", "gateway", order, trade=trade),
        _ev(exp - 3.5, "app.shown", "app", order, screen="payment_unknown"),
        _charge(exp - 1.1, order, trade, user, fen),
        _ev(exp, "order.closed", "order_service", order, reason="ttl", stock_released=True),
        _ev(exp + 0.1, "app.shown", "app", order, screen="order_closed"),
        _ev(exp + late_by, "trade.succeeded", "gateway", order, trade=trade, amount=fen),
    ]
    t = exp + late_by + 0.1
    gaps = [0, 240, 600, 600, 3600]
    for attempt, gap in enumerate(gaps[: 2 + busy], start=1):
        t += gap
        ev.append(_ev(t, "notify.sent", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=attempt))
        if attempt == 1:
            ev.append(_ev(t + 0.01, "notify.lost", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=1))
        else:
            acked = attempt == 2 + busy
            ev.append(_ev(t + 0.35, "notify.received", "order_service", order, trade=trade,
                          notify_id=f"N{order}", attempt=attempt, acked=acked))
    if repaired_at is not None:
        ev += [
            _ev(repaired_at, "recon.found", "reconciler", order, kind="long", trade=trade),
            _ev(repaired_at + 2.0, "recon.repaired", "reconciler", order, action="refund", trade=trade),
            _ev(repaired_at + 2.5, "trade.refunded", "gateway", order, trade=trade, amount=fen),
            _ev(repaired_at + 3.4, "ledger.txn", "bank", order, txn=f"r-{trade}", kind="refund", trade=trade,
                postings=[{"account": "clearing", "amount": -fen}, {"account": f"user:{user}", "amount": fen}]),
            _ev(repaired_at + 3.6, "order.refunded", "order_service", order, trade=trade, amount=fen),
            _ev(repaired_at + 3.7, "app.shown", "app", order, screen="refunded"),
        ]
    return ev


def success_then_closed_story(order: str, t0: float, fen: int, user: str) -> list[dict[str, Any]]:
    """The app shows success from the gateway's synchronous answer; the order service, swamped, never
    processes the notification before the sweep closes the order."""
    trade = f"T{order}-1"
    exp = t0 + 900.0
    return [
        _ev(t0, "order.created", "order_service", order, user=user, amount=fen, method="wallet", expires_at=exp),
        _ev(t0 + 0.1, "app.shown", "app", order, screen="awaiting_payment"),
        _ev(t0 + 0.3, "trade.created", "gateway", order, trade=trade, amount=fen, expires_at=t0 + 86400 * 15),
        _ev(t0 + 62.0, "user.pay", "user", order, trade=trade, attempt=1),
        _ev(t0 + 62.1, "trade.processing", "gateway", order, trade=trade),
        _charge(t0 + 62.9, order, trade, user, fen),
        _ev(t0 + 63.0, "trade.succeeded", "gateway", order, trade=trade, amount=fen),
        _ev(t0 + 63.2, "app.shown", "app", order, screen="payment_succeeded"),
        _ev(t0 + 63.1, "notify.sent", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=1),
        _ev(t0 + 68.1, "notify.received", "order_service", order, trade=trade, notify_id=f"N{order}", attempt=1, acked=False),
        _ev(t0 + 303.1, "notify.sent", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=2),
        _ev(t0 + 303.2, "notify.lost", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=2),
        _ev(exp + 310.0, "order.closed", "order_service", order, reason="ttl", stock_released=True),
        _ev(exp + 420.0, "app.shown", "app", order, screen="order_closed"),
    ]


def bnpl_stuck_story(order: str, t0: float, fen: int, user: str) -> list[dict[str, Any]]:
    """Delivered, but the merchant's finish call fails twice and is never retried: unfinished past 24h."""
    agr = f"A{order}"
    delivered = t0 + 2.5 * 3600
    return [
        _ev(t0, "order.created", "order_service", order, user=user, amount=fen, method="bnpl", expires_at=t0 + 900),
        _ev(t0 + 0.1, "app.shown", "app", order, screen="awaiting_payment"),
        _ev(t0 + 40.0, "user.pay", "user", order, trade=agr, attempt=1),
        _ev(t0 + 40.6, "bnpl.authorized", "bnpl", order, agreement=agr, amount=fen, expires_at=t0 + 28 * 86400),
        _ev(t0 + 41.0, "order.paid", "order_service", order, agreement=agr),
        _ev(t0 + 41.1, "app.shown", "app", order, screen="order_paid"),
        _ev(t0 + 3600.0, "order.shipped", "order_service", order),
        _ev(delivered, "order.delivered", "order_service", order),
        _ev(delivered + 1800.0, "bnpl.finish_sent", "merchant", order, agreement=agr, attempt=1),
        _ev(delivered + 1808.0, "bnpl.finish_failed", "merchant", order, agreement=agr, attempt=1),
        _ev(delivered + 3600.0, "bnpl.finish_sent", "merchant", order, agreement=agr, attempt=2),
        _ev(delivered + 3608.0, "bnpl.finish_failed", "merchant", order, agreement=agr, attempt=2),
    ]


def failure_shown_story(order: str, t0: float, fen: int, user: str) -> list[dict[str, Any]]:
    """Live run: the client's pay call times out, the app says failed, the mock bank debited anyway."""
    trade = f"T{order}-1"
    return [
        _ev(t0, "client.invoke", "client", order, op="create_order", call="c1"),
        _ev(t0 + 0.05, "order.created", "order_service", order, user=user, amount=fen, method="card", expires_at=t0 + 900),
        _ev(t0 + 0.06, "client.ok", "client", order, op="create_order", call="c1", status=201, latency=0.06),
        _ev(t0 + 12.0, "user.pay", "user", order, trade=trade, attempt=1),
        _ev(t0 + 12.0, "client.invoke", "client", order, op="pay", call="c2"),
        _ev(t0 + 12.1, "trade.created", "gateway", order, trade=trade, amount=fen, expires_at=t0 + 86400),
        _ev(t0 + 12.2, "trade.processing", "gateway", order, trade=trade),
        _charge(t0 + 25.9, order, trade, user, fen),
        _ev(t0 + 27.0, "client.unknown", "client", order, op="pay", call="c2", latency=15.0),
        _ev(t0 + 27.1, "app.shown", "app", order, screen="payment_failed"),
        _ev(t0 + 27.4, "trade.succeeded", "gateway", order, trade=trade, amount=fen),
        _ev(t0 + 27.5, "notify.sent", "gateway", order, trade=trade, notify_id=f"N{order}", attempt=1),
        _ev(t0 + 27.9, "notify.received", "order_service", order, trade=trade, notify_id=f"N{order}", attempt=1, acked=True),
        _ev(t0 + 28.0, "order.paid", "order_service", order, trade=trade),
        _ev(t0 + 31.0, "user.abandon", "user", order),
    ]


def _timeline(rng: random.Random, horizon: float, end_view: float, bucket: float, spike: tuple[float, float],
              base_rate: float, instances: dict[str, list[tuple[float, float, float]]]) -> dict[str, Any]:
    """A first-replication timeline from a crude order-level model (states are counts at bucket start)."""
    import numpy as np

    nb = int(end_view / bucket)
    t = [i * bucket for i in range(nb)]
    created, paid_at, closed_at, refunded_at, done_at = [], [], [], [], []
    now = 0.0
    while True:
        rate = base_rate * (4.0 if spike[0] <= now < spike[1] else 1.0)
        now += rng.expovariate(rate)
        if now >= horizon:
            break
        created.append(now)
        inf = math.inf
        if rng.random() < 0.1:
            paid_at.append(inf); closed_at.append(now + 900); refunded_at.append(inf); done_at.append(inf)
            continue
        d = rng.lognormvariate(math.log(45), 1.0)
        if d >= 900:
            paid_at.append(inf); closed_at.append(now + 900); refunded_at.append(inf); done_at.append(inf)
            continue
        p = now + d
        paid_at.append(p); closed_at.append(inf)
        r = p + 1200 if rng.random() < 0.01 else inf
        refunded_at.append(r)
        done_at.append(p + rng.lognormvariate(math.log(1800), 0.6) if r == inf else inf)
    c, pa, cl, rf, dn = (np.array(x) for x in (created, paid_at, closed_at, refunded_at, done_at))
    tt = np.array(t)

    def alive(start: Any, end: Any) -> list[int]:
        s = np.sort(start[np.isfinite(start)])
        e = np.sort(np.minimum(end, np.inf)[np.isfinite(end)])
        return (np.searchsorted(s, tt, "right") - np.searchsorted(e, tt, "right")).tolist()

    states = {
        "awaiting_payment": alive(c, np.minimum(pa, cl)),
        "paid": alive(pa, np.minimum(rf, dn)),
        "completed": alive(dn, np.full(len(dn), np.inf)),
        "refunded": alive(rf, np.full(len(rf), np.inf)),
        "closed": alive(cl, np.full(len(cl), np.inf)),
    }
    arrivals = np.histogram(c, bins=nb, range=(0, end_view))[0].tolist()
    starts = {cls: [0] * nb for cls in CLASSES}
    money = [0.0] * nb
    for cls, items in instances.items():
        for start, window, amount in items:
            b = int(start // bucket)
            if b < nb:
                starts[cls][b] += 1
            for i, ti in enumerate(t):
                if start <= ti < start + window:
                    money[i] += amount
    return {"bucket_s": bucket, "t": t, "arrivals": arrivals, "states": states, "anomaly_starts": starts,
            "money_at_risk": [round(m, 2) for m in money]}


def _windows(rng: random.Random, n: int, median: float, sigma: float, cap: float) -> list[float]:
    return [min(cap, rng.lognormvariate(math.log(median), sigma)) for _ in range(n)]


def _amounts(rng: random.Random, n: int) -> list[float]:
    return [round(min(2000.0, rng.lognormvariate(math.log(89), 1.2)), 2) for _ in range(n)]


def _run_info(command: list[str]) -> dict[str, Any]:
    return {"wall_s": 3.2, "host": "fixture", "python": "3.11", "versions": {"checkout-chaos": "0.1.0"},
            "started_at": "2026-11-11T00:00:00+08:00", "command": command}


def simulation_doc(*, replications: int = 10, seed: int = 20261111, kind: str = "simulation",
                   scale: float = 1.0) -> dict[str, Any]:
    """The main fixture: Double-11 midnight with a gateway brownout, ten replications."""
    rng = random.Random(seed)
    scenario = _scenario(
        "double11_midnight",
        "Midnight on Double 11: arrivals jump fourfold and the gateway browns out for ten minutes. "
        "Orders whose bank call timed out are closed by the TTL job before the late notification arrives.",
        run={"seed": seed, "replications": replications, "horizon": "1h", "warmup": "5m", "drain": "26h"},
        order_service={"order_ttl": "15m"},
        faults=[{"start": "20m", "end": "30m", "label": "gateway brownout",
                 "set": {"gateway.timeout": "8s"}}],
    )
    orders = [rng.randint(100_500, 103_500) for _ in range(replications)]
    mean_counts = {"paid_but_closed": 3.7 * scale, "success_shown_then_closed": 2.1 * scale,
                   "failure_shown_but_charged": 0.9, "double_charge": 0.2, "stuck_pending": 0.4,
                   "bnpl_stuck_unfinished": 1.5}
    windows = {"paid_but_closed": (3700, 1.4, 95000), "success_shown_then_closed": (3000, 1.2, 95000),
               "failure_shown_but_charged": (200, 1.0, 3600), "double_charge": (7200, 0.8, 95000),
               "stuck_pending": (5400, 0.5, 95000), "bnpl_stuck_unfinished": (30000, 0.6, 95000)}
    anomalies = {}
    for cls in CLASSES:
        if cls not in mean_counts:
            anomalies[cls] = _anomaly([0] * replications, orders, [], [])
            continue
        counts = [sum(1 for _ in range(40) if rng.random() < mean_counts[cls] / 40) for _ in range(replications)]
        median, sigma, cap = windows[cls]
        n = sum(counts)
        anomalies[cls] = _anomaly(counts, orders, _windows(rng, n, median, sigma, cap), _amounts(rng, n),
                                  repaired=rng.randint(0, 3) if n else 0)
    first = {"paid_but_closed": [(950.2, 3700.0, 88.0), (1500.0, 86000.0, 1299.0), (2400.0, 3600.0, 45.5),
                                 (1800.0, 7000.0, 230.0)],
             "success_shown_then_closed": [(1310.0, 5000.0, 129.0), (1900.0, 4000.0, 59.9)],
             "failure_shown_but_charged": [(1250.0, 300.0, 19.9)],
             "bnpl_stuck_unfinished": [(99000.0, 30000.0, 399.0)]}
    horizon = 3600.0
    timeline = _timeline(random.Random(seed + 1), horizon, 4500.0, 30.0, (600.0, 1200.0), 20.0, first)
    examples = {
        "paid_but_closed": [
            {"role": "first", "order": "r0-o4211", "start": 950.2, "window_s": 3700.0, "amount": 88.0,
             "resolved": False, "events": paid_but_closed_story("r0-o4211", 50.2, 8800, "u1837", late_by=56.4)},
            {"role": "worst", "order": "r3-o29120", "start": 1500.0, "window_s": 86000.0, "amount": 1299.0,
             "resolved": False, "events": paid_but_closed_story("r3-o29120", 600.0, 129900, "u77", late_by=61.0, busy=3)},
            {"role": "last", "order": "r9-o98001", "start": 2400.0, "window_s": 3600.0, "amount": 45.5,
             "resolved": True, "events": paid_but_closed_story("r9-o98001", 1500.0, 4550, "u5120", late_by=58.0,
                                                              repaired_at=6000.0)},
        ],
        "success_shown_then_closed": [
            {"role": "first", "order": "r0-o7310", "start": 1310.0, "window_s": 5000.0, "amount": 129.0,
             "resolved": False, "events": success_then_closed_story("r0-o7310", 100.0, 12900, "u2044")},
        ],
        "bnpl_stuck_unfinished": [
            {"role": "first", "order": "r1-o333", "start": 99000.0, "window_s": 30000.0, "amount": 399.0,
             "resolved": False, "events": bnpl_stuck_story("r1-o333", 300.0, 39900, "u901")},
        ],
    }
    return _round({
        "schema_version": 1, "kind": kind, "scenario": scenario, "scenario_name": "double11_midnight",
        "seed": seed, "replications": replications, "orders": sum(orders), "orders_per_replication": orders,
        "horizon_s": horizon, "warmup_s": 300.0, "end_s": 97200.0, "anomalies": anomalies,
        "end_states": {"completed": 95120, "unpaid_closed": 10050, "paid_closed": 4, "refunded": 980, "paid_open": 211},
        "metrics": {
            "gateway": {"utilization": 0.71, "wait_mean_s": 0.012, "wait_p99_s": 0.2, "queue_mean": 0.8, "timeouts": 31},
            "bank": {"utilization": 0.93, "wait_mean_s": 0.4, "wait_p99_s": 6.1, "queue_mean": 12.5, "timeouts": 0},
            "order_service": {"utilization": 0.55, "wait_mean_s": 0.003, "wait_p99_s": 0.05, "queue_mean": 0.1, "timeouts": 2},
        },
        "timeline": timeline,
        "faults": [{"from": 1200.0, "to": 1800.0, "label": "gateway brownout"}],
        "examples": examples,
        "run_info": _run_info(["checkout-chaos", "simulate", "scenarios/double11_midnight.toml"]),
    })


def single_doc() -> dict[str, Any]:
    """One replication (Wilson intervals), no timeline, no examples, no faults."""
    doc = simulation_doc(replications=1, seed=7)
    doc.update(timeline=None, examples={}, faults=[], metrics={})
    doc["scenario"]["faults"] = []
    return doc


def zero_doc() -> dict[str, Any]:
    """Three replications in which nothing went wrong: every class zero."""
    orders = [20_010, 19_950, 20_102]
    anomalies = {cls: _anomaly([0, 0, 0], orders, [], []) for cls in CLASSES}
    nb = 130
    t = [i * 30.0 for i in range(nb)]
    arrivals = [600 if ti < 3600 else 0 for ti in t]
    timeline = {"bucket_s": 30.0, "t": t, "arrivals": arrivals,
                "states": {"awaiting_payment": [min(i, 30) * 20 for i in range(nb)],
                           "paid": [min(i, 60) * 30 for i in range(nb)],
                           "closed": [max(0, i - 30) * 60 for i in range(nb)]},
                "anomaly_starts": {cls: [0] * nb for cls in CLASSES}, "money_at_risk": [0.0] * nb}
    return _round({
        "schema_version": 1, "kind": "simulation", "scenario": _scenario("calm_tuesday", "An ordinary afternoon."),
        "scenario_name": "calm_tuesday", "seed": 1, "replications": 3, "orders": sum(orders),
        "orders_per_replication": orders, "horizon_s": 3600.0, "warmup_s": 300.0, "end_s": 3900.0,
        "anomalies": anomalies, "end_states": {"completed": 54000, "unpaid_closed": 6062},
        "metrics": {"gateway": {"utilization": 0.2}}, "timeline": timeline, "faults": [], "examples": {},
        "run_info": _run_info(["checkout-chaos", "simulate", "scenarios/calm_tuesday.toml"]),
    })


def live_doc() -> dict[str, Any]:
    """The same scenario replayed live against the reference service (one run, Wilson intervals)."""
    doc = simulation_doc(replications=1, seed=99, kind="live", scale=8.0)
    rng = random.Random(5)
    orders = doc["orders"]
    for cls, a in doc["anomalies"].items():  # measured: fewer orders, so wider intervals
        a["ci95"] = _round(wilson(int(a["count"]), orders))
        a["ci_method"] = "wilson"
    doc["anomalies"]["double_charge"] = _anomaly([2], [orders], [rng.uniform(100, 900) for _ in range(2)], [59.0, 12.5])
    doc["examples"]["failure_shown_but_charged"] = [
        {"role": "first", "order": "live-u12-o3", "start": 1277.1, "window_s": 240.0, "amount": 19.9,
         "resolved": True, "events": failure_shown_story("live-u12-o3", 1250.0, 1990, "u12")}]
    doc["live"] = {"time_scale": 60.0, "target": "reference", "requests": 48211, "failures": 1022,
                   "p50_latency_s": 0.041, "p99_latency_s": 14.8, "achieved_arrival_ratio": 0.97}
    doc["run_info"] = _run_info(["checkout-chaos", "load", "scenarios/double11_midnight.toml"])
    return _round(doc)


def sweep_doc() -> dict[str, Any]:
    """order_ttl × close_policy: naive closes paid orders, close_trade_then_order never does."""
    ttls = ["5m", "15m", "30m", "1h"]
    policies = ["naive", "query_then_close", "close_trade_then_order"]
    rng = random.Random(11)
    base = {"paid_but_closed": {"5m": 3.1e-3, "15m": 6.0e-4, "30m": 1.5e-4, "1h": 3e-5},
            "success_shown_then_closed": {"5m": 1.2e-3, "15m": 2.5e-4, "30m": 6e-5, "1h": 1e-5},
            "stuck_pending": {"5m": 2e-5, "15m": 2e-5, "30m": 3e-5, "1h": 3e-5}}
    factor = {"naive": 1.0, "query_then_close": 0.05, "close_trade_then_order": 0.0}
    points = []
    reps, per_rep_orders = 5, 50_000
    for ttl in ttls:
        for policy in policies:
            orders = [per_rep_orders + rng.randint(-300, 300) for _ in range(reps)]
            anomalies = {}
            for cls in CLASSES:
                mean = base.get(cls, {}).get(ttl, 0.0)
                if cls != "stuck_pending":
                    mean *= factor[policy]
                counts = []
                for n in orders:
                    lam = mean * n
                    counts.append(max(0, round(rng.gauss(lam, math.sqrt(lam)))) if lam > 0 else 0)
                k = sum(counts)
                anomalies[cls] = _anomaly(counts, orders, _windows(rng, min(k, 40), 2000, 1.0, 90000),
                                          _amounts(rng, k))
            results = {
                "schema_version": 1, "kind": "sweep_point", "scenario": None, "scenario_name": "mall_pattern",
                "seed": 20261111, "replications": reps, "orders": sum(orders), "orders_per_replication": orders,
                "horizon_s": 3600.0, "warmup_s": 300.0, "end_s": 97200.0, "anomalies": anomalies,
                "end_states": {}, "metrics": {}, "timeline": None, "faults": [], "examples": {},
                "run_info": _run_info(["checkout-chaos", "sweep"]),
            }
            points.append({"params": {"order_service.order_ttl": ttl, "order_service.close_policy": policy},
                           "results": results})
    return _round({"schema_version": 1, "kind": "sweep", "scenario_name": "mall_pattern",
                   "vary": {"order_service.order_ttl": ttls},
                   "compare": {"order_service.close_policy": policies}, "points": points})


BUILDERS = {
    "results_simulation.json": simulation_doc,
    "results_single.json": single_doc,
    "results_zero.json": zero_doc,
    "results_live.json": live_doc,
    "results_sweep.json": sweep_doc,
}


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_fixtures() -> list[Path]:
    FIXTURES.mkdir(exist_ok=True)
    paths = []
    for name, build in BUILDERS.items():
        path = FIXTURES / name
        path.write_text(_dumps(build()), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_is_what_the_builder_writes(name: str) -> None:
    """The committed fixture equals the builder's output (regenerate with python tests/test_reports_fixtures.py)."""
    assert json.loads((FIXTURES / name).read_text(encoding="utf-8")) == json.loads(_dumps(BUILDERS[name]()))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_keeps_the_results_contract(name: str) -> None:
    """Each fixture passes the report's document check and names every anomaly class."""
    from reports.documents import check_document, is_sweep

    doc = check_document(json.loads((FIXTURES / name).read_text(encoding="utf-8")), name)
    results = [p["results"] for p in doc["points"]] if is_sweep(doc) else [doc]
    for r in results:
        assert set(r["anomalies"]) == set(CLASSES)
        assert r["replications"] == len(r["orders_per_replication"])


if __name__ == "__main__":
    for p in write_fixtures():
        print(p, f"{p.stat().st_size:,} bytes")
    sys.exit(0)
