"""The checker's fast path for plain orders (``Checker._judge_plain``) judges exactly as the sweep does.

Every history is judged twice, with the fast path and without (``_plain = False``: the sweep for every
order), and the summaries and instances must be the same. The hand-made cases also say which way each
order went, so a fast path that took an order it must leave to the sweep fails here, not only in a digest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.check import CheckConfig, Checker
from sim.model.model import checker_config, run_replication
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
FULL = {"ledger": True, "gateway": True, "checkout": True, "screens": True, "bnpl": True}


class Counting(Checker):
    """A checker that counts the orders its fast path took."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plain_taken = 0

    def _judge_plain(self, events, counted):
        taken = super()._judge_plain(events, counted)
        self.plain_taken += taken
        return taken


def judge_both(events, config, respect_run_start=True):
    out = []
    for plain in (True, False):
        c = Counting(config, respect_run_start=respect_run_start)
        c._plain = plain
        for e in events:
            c.feed(dict(e))
        s = c.finish()
        out.append((json.dumps(s.to_dict(), sort_keys=True, default=str), s.instances, c.plain_taken))
    (fast, fast_rows, taken), (sweep, sweep_rows, none) = out
    assert none == 0
    assert fast == sweep
    assert fast_rows == sweep_rows
    return taken, json.loads(fast)


@pytest.mark.parametrize("name, overrides", [
    ("baseline", {"run.horizon": "3m", "run.warmup": "20s", "run.drain": "2h"}),
    ("impatient_retry", {"run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m", "load.arrival_rate": 1.0,
                         "gateway.workers": 3,
                         "load.profile": [{"at": "60s", "multiplier": 10.0}, {"at": "105s", "multiplier": 1.0}]}),
    ("notifications_lost", {"run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m"}),
])
def test_simulated_histories_judged_the_same(name, overrides):
    s = load_scenario(ROOT / "scenarios" / f"{name}.toml", overrides)
    events = []
    rep = run_replication(s, 0, tap=events.append)
    taken, summary = judge_both(events, checker_config(s), respect_run_start=False)
    assert 0 < taken < summary["orders_seen"]  # both paths were used
    assert summary == json.loads(json.dumps(rep.summary.to_dict(), sort_keys=True, default=str))


def paid_order(o="o1", amount=5000):
    tr = f"{o}-t"
    return [
        {"t": 0.0, "type": "order.created", "order": o, "user": "u1", "amount": amount, "method": "card",
         "expires_at": 1800.0},
        {"t": 0.0, "type": "trade.created", "order": o, "trade": tr, "amount": amount},
        {"t": 10.0, "type": "user.pay", "order": o, "trade": tr, "attempt": 0},
        {"t": 11.0, "type": "ledger.txn", "order": o, "trade": tr, "txn": f"c-{o}", "kind": "charge",
         "postings": [{"account": "user:u1", "amount": -amount}, {"account": "clearing", "amount": amount}]},
        {"t": 11.0, "type": "trade.succeeded", "order": o, "trade": tr, "amount": amount},
        {"t": 11.0, "type": "notify.sent", "order": o, "trade": tr, "notify_id": "n1", "attempt": 1},
        {"t": 11.5, "type": "app.shown", "order": o, "screen": "payment_succeeded"},
        {"t": 12.0, "type": "order.paid", "order": o, "trade": tr},
        {"t": 12.0, "type": "merchant.fulfilment", "order": o, "shipment": 1},
        {"t": 12.0, "type": "notify.received", "order": o, "trade": tr, "notify_id": "n1", "attempt": 1,
         "acked": True},
        {"t": 900.0, "type": "order.shipped", "order": o},
        {"t": 900.0, "type": "order.delivered", "order": o},
        {"t": 900.0, "type": "order.completed", "order": o},
        {"t": 900.0, "type": "order.end", "order": o},
    ]


def closed_order(o="o1"):
    return [
        {"t": 0.0, "type": "order.created", "order": o, "user": "u1", "amount": 5000, "method": "wallet",
         "expires_at": 1800.0},
        {"t": 0.0, "type": "trade.created", "order": o, "trade": f"{o}-t", "amount": 5000},
        {"t": 30.0, "type": "user.abandon", "order": o},
        {"t": 1800.0, "type": "trade.closed", "order": o, "trade": f"{o}-t"},
        {"t": 1800.0, "type": "order.closed", "order": o, "reason": "ttl", "stock_released": True},
        {"t": 1800.0, "type": "order.end", "order": o},
    ]


def bnpl_order(o="o1", amount=5000):
    ag = f"{o}-a"
    return [
        {"t": 0.0, "type": "order.created", "order": o, "user": "u1", "amount": amount, "method": "bnpl",
         "expires_at": 1800.0},
        {"t": 10.0, "type": "bnpl.authorized", "order": o, "agreement": ag, "amount": amount, "expires_at": 9e5},
        {"t": 10.0, "type": "order.paid", "order": o, "agreement": ag},
        {"t": 10.0, "type": "merchant.fulfilment", "order": o, "shipment": 1},
        {"t": 10.5, "type": "app.shown", "order": o, "screen": "payment_succeeded"},
        {"t": 900.0, "type": "order.shipped", "order": o},
        {"t": 900.0, "type": "order.delivered", "order": o},
        {"t": 1000.0, "type": "bnpl.finish_sent", "order": o, "agreement": ag, "attempt": 1},
        {"t": 1000.1, "type": "bnpl.finish_requested", "order": o, "agreement": ag, "amount": amount},
        {"t": 1000.1, "type": "bnpl.deduction", "order": o, "agreement": ag, "ok": True, "attempt": 1},
        {"t": 1000.1, "type": "ledger.txn", "order": o, "agreement": ag, "txn": f"b1-{o}", "kind": "bnpl_deduction",
         "postings": [{"account": "user:u1", "amount": -amount}, {"account": "bnpl", "amount": amount}]},
        {"t": 1000.1, "type": "ledger.txn", "order": o, "agreement": ag, "txn": f"b2-{o}", "kind": "bnpl_payout",
         "postings": [{"account": "bnpl", "amount": -amount}, {"account": "merchant:m1", "amount": amount}]},
        {"t": 1000.2, "type": "order.completed", "order": o},
        {"t": 1100.0, "type": "bnpl.synced", "order": o, "agreement": ag, "paid": True},
        {"t": 1100.0, "type": "bnpl.settled", "order": o, "agreement": ag},
        {"t": 1100.0, "type": "order.end", "order": o},
    ]


def _edit(events, k, **fields):
    out = [dict(e) for e in events]
    out[k].update(fields)
    return out


def _without(events, k):
    return [dict(e) for i, e in enumerate(events) if i != k]


PAID = paid_order()
CLOSED = closed_order()
BNPL = bnpl_order()
LATE = 900.0 + 86_400.0 + 5.0  # past bnpl_finish_limit after delivery
# (history, taken by the fast path, an end state or anomaly class the sweep finds)
CASES = {
    "plain paid": (PAID, True, "paid_open"),
    "plain closed": (CLOSED, True, "unpaid_closed"),
    "closed, trade still payable": (_without(CLOSED, 3), True, "unpaid_closed_trade_payable"),
    "paid before the charge": (_edit(PAID, 7, t=10.5), False, "order_paid_without_charge"),
    "charge of another amount": (_edit(PAID, 3, postings=[{"account": "user:u1", "amount": -4000},
                                                          {"account": "clearing", "amount": 4000}]),
                                 False, "amount_mismatch"),
    "unbalanced charge": (_edit(PAID, 3, postings=[{"account": "user:u1", "amount": -5000},
                                                   {"account": "clearing", "amount": 4000}]),
                          False, "ledger_imbalance"),
    "failure shown, charged": (_edit(PAID, 6, screen="payment_failed", t=11.2) [:7], False,
                               "failure_shown_but_charged"),
    "paid past the stuck deadline": (_edit(_edit(PAID, 7, t=5500.0), 8, t=5500.0)[:8], False, "stuck_pending"),
    "paid twice": (PAID[:8] + [dict(PAID[7], t=12.5)] + PAID[8:], False, "duplicate_fulfilment"),
    "second shipment": (PAID[:9] + [dict(PAID[8], shipment=2, t=13.0)] + PAID[9:], False, "duplicate_fulfilment"),
    "closed after success shown": (CLOSED[:3] + [dict(PAID[6], t=40.0)] + CLOSED[3:], False,
                                   "success_shown_then_closed"),
    "closed past the deadline": (_edit(_edit(CLOSED, 3, t=5500.0), 4, t=5500.0), False, "stuck_pending"),
    "out of time order": ([PAID[0], PAID[2], PAID[1]] + PAID[3:], False, "paid_open"),
    "an event with an id": (_edit(PAID, 4, id="e4"), False, "paid_open"),
    "an event without a type": (PAID[:5] + [{"t": 11.0, "order": "o1"}] + PAID[5:], False, "paid_open"),
    "card order paid by an agreement": (_edit(PAID, 7, agreement="x", trade=None), False, None),
    "plain bnpl": (BNPL, True, "bnpl_settled"),
    "bnpl not finished yet": (BNPL[:7] + [dict(BNPL[-1], t=1200.0)], False, "bnpl_unfinished"),
    "bnpl finish past the limit": ([dict(e, t=e["t"] + (LATE - 1000.0 if e["t"] >= 1000.0 else 0.0))
                                    for e in BNPL], False, "bnpl_stuck_unfinished"),
    "bnpl deduction failed once": (BNPL[:9] + [dict(BNPL[9], ok=False), dict(BNPL[9], t=1000.15, attempt=2)]
                                   + BNPL[10:], False, "bnpl_deduction_failed"),
    "bnpl deducted twice": (BNPL[:10] + [dict(BNPL[9], t=1000.15, attempt=2)] + BNPL[10:], False,
                            "bnpl_double_deduction"),
    "bnpl ledger unbalanced": (_edit(BNPL, 11, postings=[{"account": "bnpl", "amount": -5000}]), False,
                               "ledger_imbalance"),
    "bnpl txn recorded twice": (BNPL[:11] + [dict(BNPL[10], t=1000.1)] + BNPL[11:], False, "bnpl_settled"),
    "never paid": (PAID[:3] + [dict(PAID[-1], t=600.0)], False, "awaiting_payment"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_made_orders(case):
    events, taken, expect = CASES[case]
    config = CheckConfig(end=10_000.0, observed=FULL)
    got, summary = judge_both(events, config)
    assert got == int(taken)
    if expect in summary["end_states"]:
        assert summary["end_states"][expect] == 1
    elif expect is not None:
        assert summary["per_class"][expect]["count"] + summary["per_class"][expect]["repaired"] >= 1


def test_many_orders_interleaved():
    """Plain and swept orders fed interleaved (as a run feeds them) give the sweep's summary."""
    events = []
    for k in range(40):
        case = list(CASES.values())[k % len(CASES)][0]
        o = f"o{k}"
        events += [dict(e, order=o, t=e["t"] + k) for e in case]
    events.sort(key=lambda e: e["t"])
    got, summary = judge_both(events, CheckConfig(end=10_000.0, observed=FULL))
    assert 0 < got < 40
