"""Buyers with accounts: balance, card line, daily limit, risk status and BNPL debt persist across
retries and orders (user.accounts); nothing about them is a per-call coin."""

from __future__ import annotations

from collections import defaultdict

from sim.model.model import run_replication
from sim.scenario import Scenario

BASE = {
    "user.abandon_probability": 0.0, "user.retry_probability": 1.0, "user.max_retries": 2,
    "user.retry_delay": "20s",
    "bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0,
    "load.arrival_rate": 1.0, "run.horizon": "15m", "run.warmup": "1m", "run.drain": "2h",
    "user.accounts": 20,
}


def _run(over: dict):
    s = Scenario().with_overrides({**BASE, **over})
    user: dict[str, str] = {}
    amount: dict[str, int] = {}
    charged: dict[str, list] = defaultdict(list)  # user -> [(t, fen)]
    attempts: dict[str, int] = defaultdict(int)
    events: list[dict] = []

    def tap(ev: dict) -> None:
        t = ev["type"]
        if t == "order.created":
            user[ev["order"]], amount[ev["order"]] = ev["user"], ev["amount"]
        elif t == "user.pay":
            attempts[ev["order"]] += 1
        elif t == "ledger.txn" and ev["kind"] == "charge":
            charged[user[ev["order"]]].append((ev["t"], amount[ev["order"]]))
        elif t.startswith("bnpl.") or t == "order.end":
            events.append(ev)

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, user, amount, charged, attempts, events


def test_a_used_up_card_line_is_declined_on_retry_and_on_the_next_order():
    card = {"user.payment_methods": {"card": 1.0}, "user.card_limit": 500}
    r, user, amount, charged, attempts, _ = _run(card)
    assert len(set(user.values())) == 20 and len(user) > 800  # ~45 orders per buyer
    for u, cs in charged.items():
        assert sum(a for _, a in cs) <= 50_000, u  # never more than the line
    declined = [o for o in attempts if attempts[o] == 3]  # first try and both retries refused
    assert len(declined) > 500, len(declined)
    # Off, every card debit goes through: the declines came from the line, not from a coin.
    _r, user_off, _a, charged_off, attempts_off, _ = _run({"user.payment_methods": {"card": 1.0}})
    assert sum(len(c) for c in charged_off.values()) == len([o for o in user_off if attempts_off[o]])


def test_the_daily_limit_refuses_until_the_next_day():
    day = {"user.payment_methods": {"wallet": 0.5, "card": 0.5}, "user.daily_limit": 300,
           "load.arrival_rate": 0.02, "run.horizon": "30h", "run.drain": "1h"}
    r, user, amount, charged, attempts, _ = _run(day)
    per_day: dict[tuple, int] = defaultdict(int)
    for u, cs in charged.items():
        for t, a in cs:
            per_day[u, int(t // 86400)] += a
    assert max(per_day.values()) <= 30_000
    assert sum(1 for (u, d) in per_day if d == 1) >= 10  # the limit was back the next day
    assert sum(len(c) for c in charged.values()) < len([o for o in user if attempts[o]])  # some were refused


def test_flagged_buyers_are_blocked_on_every_retry_and_order_and_freezes_follow_declines():
    flagged, user, _a, charged, attempts, _ = _run({"user.payment_methods": {"wallet": 1.0}, "user.risk_flagged": 0.3,
                                                    "user.accounts": 60})
    buyers = set(user.values())
    never = [u for u in buyers if u not in charged]
    assert len(buyers) == 60 and 8 <= len(never) <= 30  # about 30% of 60 accounts: blocked on all ~15 orders each
    for u in never:
        assert all(attempts[o] == 3 for o, uu in user.items() if uu == u and attempts[o])
    # Risk control freezes a buyer after 3 refused debits in a day: the coin declines (40%) add up per
    # buyer, and after the freeze nothing of theirs goes through that day.
    frozen, user_f, _a, charged_f, _att, _ = _run({"user.payment_methods": {"wallet": 1.0},
                                                  "bank.decline_probability": 0.4, "bank.risk_freeze_after": 3})
    loose, user_l, _a, charged_l, _att, _ = _run({"user.payment_methods": {"wallet": 1.0},
                                                 "bank.decline_probability": 0.4})
    assert user_f == user_l
    n_f, n_l = sum(map(len, charged_f.values())), sum(map(len, charged_l.values()))
    assert n_f < 0.2 * n_l, (n_f, n_l)


def test_an_empty_wallet_stays_empty_until_topped_up():
    wallet = {"user.payment_methods": {"wallet": 1.0}, "user.wallet_balance": 200, "run.horizon": "2h",
              "load.arrival_rate": 0.1}
    _r, user, _a, charged, _att, _ = _run(wallet)
    _r, user_t, _a, charged_t, _att, _ = _run({**wallet, "user.top_up_delay": "30m"})
    assert user == user_t
    for u, cs in charged.items():
        assert sum(a for _, a in cs) <= 20_000  # one 200-CNY balance, never topped up
    spent_t = {u: sum(a for _, a in cs) for u, cs in charged_t.items()}
    assert sum(v > 20_000 for v in spent_t.values()) >= 10  # topped up, they pay again
    late = [t for cs in charged_t.values() for t, _ in cs if t > 1800]
    assert late


def test_bnpl_debt_counts_against_the_buyers_credit_limit():
    bnpl = {"user.payment_methods": {"bnpl": 1.0}, "bnpl.credit_limit": 400, "bnpl.deduction_failure": 0.0,
            "merchant.delivery_time": "1h", "merchant.bnpl_finish_delay": "0s", "run.horizon": "3h",
            "load.arrival_rate": 0.1, "run.drain": "3h"}
    _r, user, amount, _c, _att, events = _run(bnpl)
    owed: dict[str, int] = defaultdict(int)
    declined_for_debt = 0
    for ev in events:
        o = ev["order"]
        u = user.get(o)
        if ev["type"] == "bnpl.authorized":
            owed[u] += ev["amount"]
            assert owed[u] <= 40_000
        elif ev["type"] == "bnpl.deduction" and ev["ok"] or ev["type"] in ("bnpl.repaid", "bnpl.expired"):
            owed[u] -= amount[o]
        elif ev["type"] == "bnpl.declined" and amount[o] <= 40_000:
            declined_for_debt += 1
    assert declined_for_debt >= 50
    paid_back_then_more = sum(1 for ev in events if ev["type"] == "bnpl.authorized" and ev["t"] > 3 * 3600 - 1800)
    assert paid_back_then_more >= 5  # deductions freed the limit again


def _bnpl_debts(over: dict):
    """Per buyer: the largest debt an authorization was allowed to reach, the smallest one refused."""
    bnpl = {"user.payment_methods": {"bnpl": 1.0}, "bnpl.deduction_failure": 0.0, "merchant.delivery_time": "1h",
            "merchant.bnpl_finish_delay": "0s", "run.horizon": "3h", "load.arrival_rate": 0.1, "run.drain": "3h",
            **over}
    _r, user, amount, _c, _att, events = _run(bnpl)
    owed: dict[str, int] = defaultdict(int)
    allowed: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = {}
    for ev in events:
        o = ev["order"]
        u = user.get(o)
        if ev["type"] == "bnpl.authorized":
            owed[u] += ev["amount"]
            allowed[u] = max(allowed[u], owed[u])
        elif ev["type"] == "bnpl.deduction" and ev["ok"] or ev["type"] in ("bnpl.repaid", "bnpl.expired"):
            owed[u] -= amount[o]
        elif ev["type"] == "bnpl.declined":
            refused[u] = min(refused.get(u, 1 << 62), owed[u] + amount[o])
    return user, amount, allowed, refused


def test_each_buyer_has_a_credit_limit_of_their_own():
    """bnpl.buyer_credit_limit: a limit drawn once per buyer account. Every buyer is consistent (allowed
    below, refused above their own limit), but some are refused at a debt others are allowed — which
    one limit for everybody (bnpl.credit_limit) can never do. The draw has a stream of its own: the
    buyers and their orders are the same with the feature on or off."""
    user, amount, allowed, refused = _bnpl_debts({"bnpl.credit_limit": 1000,
                                                  "bnpl.buyer_credit_limit": {"dist": "uniform", "low": 150,
                                                                              "high": 2500}})
    assert len(refused) >= 10
    for u in refused:
        assert allowed[u] < refused[u], (u, allowed[u], refused[u])  # one limit per buyer, kept across orders
    assert min(refused.values()) < max(allowed.values()), (min(refused.values()), max(allowed.values()))
    assert sum(1 for u in refused if refused[u] < 100_000) >= 3  # refused below the common limit ...
    assert sum(1 for v in allowed.values() if v > 100_000) >= 3  # ... and allowed above it
    user_c, amount_c, allowed_c, refused_c = _bnpl_debts({"bnpl.credit_limit": 1000})
    assert (user_c, amount_c) == (user, amount)
    assert refused_c and max(allowed_c.values()) <= 100_000 < min(refused_c.values())


def _wallet_story(over: dict):
    """Per account, in time order: +amount for each charge, -amount for each refund (fen)."""
    base = {"user.payment_methods": {"wallet": 1.0}, "user.order_amount": 100, "user.wallet_balance": 100,
            "user.accounts": 40, "user.retry_probability": 0.0, "user.pay_delay": {"dist": "exponential", "mean": "900s"},
            "app.network_latency": "0s", "gateway.notify_latency": {"dist": "exponential", "mean": "600s"},
            "order_service.order_ttl": "15m", "order_service.late_payment": "auto_refund",
            "gateway.refund_latency": "10m", "load.arrival_rate": 0.2, "run.horizon": "1h", "run.drain": "3h", **over}
    s = Scenario().with_overrides({**BASE, **base})
    user: dict[str, str] = {}
    story: dict[str, list[int]] = defaultdict(list)

    def tap(ev: dict) -> None:
        if ev["type"] == "order.created":
            user[ev["order"]] = ev["user"]
        elif ev["type"] == "ledger.txn" and ev["kind"] in ("charge", "refund"):
            moved = sum(p["amount"] for p in ev["postings"] if p["amount"] > 0)
            story[user[ev["order"]]].append(moved if ev["kind"] == "charge" else -moved)

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return user, story


def test_a_refund_gives_the_wallet_back_so_the_buyer_can_pay_again():
    """user.refund_restores: a refunded (late, auto-refunded) payment returns its amount to the wallet it
    came from; a buyer whose one 100-CNY balance it had emptied pays again. Without it the wallet stays
    empty: one charge per account, ever. Either way the wallet never pays more than it holds."""
    user, off = _wallet_story({})
    user_on, on = _wallet_story({"user.refund_restores": True})
    assert user == user_on
    assert all(sum(1 for x in xs if x > 0) == 1 for xs in off.values()), off
    refunded_then_paid = 0
    for xs in on.values():
        balance = 10_000
        for x in xs:
            balance -= x
            assert balance >= 0, xs
        refunded_then_paid += sum(1 for a, b in zip(xs, xs[1:]) if a < 0 < b)
    assert sum(1 for x in sum(off.values(), []) if x < 0) >= 3  # refunds happened without the restore too
    assert refunded_then_paid >= 3, on


def test_a_partial_refund_restores_its_part_of_the_card_line():
    """A partial refund gives back only its part: a 100-CNY line spent on one 100-CNY order, half of it
    returned, leaves room for a 50-CNY order but not for another 100-CNY one."""
    over = {"user.payment_methods": {"card": 1.0}, "user.card_limit": 100, "user.wallet_balance": "off",
            "order_service.late_payment": "ignore", "merchant.delivery_time": "5m", "gateway.refund_latency": "0s",
            "user.partial_refund_probability": 1.0, "user.partial_refund_share": 0.5, "user.partial_refund_delay": "1m",
            "user.refund_restores": True}
    user, story = _wallet_story(over)
    assert story
    for u, xs in story.items():
        assert xs[0] == 10_000 and all(x in (10_000, -5_000) for x in xs), (u, xs)
        assert sum(1 for x in xs if x > 0) == 1  # the 50 CNY back are never enough for another 100-CNY order
    assert sum(1 for xs in story.values() if -5_000 in xs) >= 3
    user_h, story_h = _wallet_story({**over, "user.order_amount": {"dist": "empirical", "values": [100, 50]}})
    assert any(xs[:3] == [10_000, -5_000, 5_000] for xs in story_h.values()), story_h
    _u, story_kept = _wallet_story({**over, "user.order_amount": {"dist": "empirical", "values": [100, 50]},
                                    "user.refund_restores": False})
    assert not any(xs[:3] == [10_000, -5_000, 5_000] for xs in story_kept.values())  # the line stayed used up


# -- BNPL deductions from the buyer's wallet (bnpl.deduction_source = "wallet") ------------------------

WALLET_BNPL = {"user.payment_methods": {"bnpl": 1.0}, "bnpl.deduction_source": "wallet",
               "user.order_amount": 100, "user.wallet_balance": {"dist": "empirical", "values": [50, 100000]},
               "bnpl.deduction_failure": 1.0,  # not read with deduction_source = "wallet"
               "bnpl.deduction_retry_schedule": ["1h", "6h", "24h"], "bnpl.user_repay_delay": "30d",
               "merchant.delivery_time": "1h", "merchant.bnpl_finish_delay": "0s", "run.horizon": "1h",
               "load.arrival_rate": 0.1, "run.drain": "3d", "user.accounts": "off"}


def _attempts(events: list[dict]) -> dict[str, list[tuple[float, bool]]]:
    out: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for ev in events:
        if ev["type"] == "bnpl.deduction":
            out[ev["order"]].append((ev["t"], ev["ok"]))
    return out


def test_a_deduction_from_the_wallet_fails_on_its_balance_until_the_top_up_lands():
    """Half the buyers hold 50 CNY for a 100-CNY order: their deduction fails, the retry 1 h later
    fails again (the balance persists), the top-up (50 more) lands 3 h after the first failure, and the
    retry at +7 h succeeds. The other half pay at the first attempt although deduction_failure is 1:
    whether a deduction fails is the balance, not a coin."""
    _r, _u, _a, _c, _att, events = _run({**WALLET_BNPL, "user.top_up_delay": "3h"})
    attempts = _attempts(events)
    assert len(attempts) > 200
    patterns = {tuple(ok for _t, ok in a) for a in attempts.values()}
    assert patterns == {(True,), (False, False, True)}, patterns
    poor = [a for a in attempts.values() if len(a) == 3]
    assert 0.35 < len(poor) / len(attempts) < 0.65
    for a in poor:
        assert a[2][0] - a[0][0] > 3 * 3600  # paid only by a retry made after the top-up
    # No top-up: the poor buyers' four attempts all fail and the agreement stays failing (repay in 30 d).
    _r, _u, _a, _c, _att, never = _run({**WALLET_BNPL, "user.top_up_delay": "off"})
    kinds = {tuple(ok for _t, ok in a) for a in _attempts(never).values()}
    assert kinds == {(True,), (False,) * 4}, kinds
    assert {o for o, a in _attempts(never).items() if len(a) == 4} == {o for o, a in attempts.items() if len(a) == 3}


def test_wallet_orders_and_deductions_spend_one_balance_so_a_deduction_fails_after_the_buyers_own_orders():
    """Returning buyers with 300 CNY and no top-up pay wallet orders and BNPL deductions from the same
    balance: what one spends the other cannot, so deductions fail that a buyer's first order alone would
    have met, and nobody ever pays more than the balance."""
    shared = {**WALLET_BNPL, "user.payment_methods": {"wallet": 0.5, "bnpl": 0.5}, "user.wallet_balance": 300,
              "user.accounts": 10, "user.top_up_delay": "off", "load.arrival_rate": 0.02, "run.horizon": "6h"}
    _r, user, amount, charged, _att, events = _run(shared)
    spent: dict[str, int] = defaultdict(int)
    for u, cs in charged.items():
        spent[u] += sum(a for _t, a in cs)
    ok = {ev["order"] for ev in events if ev["type"] == "bnpl.deduction" and ev["ok"]}
    for o in ok:
        spent[user[o]] += amount[o]
    assert spent and max(spent.values()) <= 30_000, spent
    failed = {ev["order"] for ev in events if ev["type"] == "bnpl.deduction" and not ev["ok"]}
    assert failed and ok  # 100 CNY each: three payments per buyer go through, the rest fail
    assert all(spent[user[o]] > 30_000 - amount[o] for o in failed)  # failed only for want of balance


def test_a_wallet_deduction_source_without_a_wallet_balance_is_refused_naming_both_keys():
    import pytest

    from sim.scenario import ConfigError, scenario_from_dict

    with pytest.raises(ConfigError) as err:
        scenario_from_dict({"bnpl": {"deduction_source": "wallet"}}, "lb.toml")
    text = str(err.value)
    assert "lb.toml: bnpl.deduction_source" in text and 'user.wallet_balance is "off"' in text


# -- ... then from the card line (bnpl.deduction_source = "wallet_then_card") --------------------------

def test_a_short_wallet_falls_back_on_the_card_line_and_fails_only_when_both_are_short():
    """As WeChat Pay polls a buyer's other payment methods: the buyers of the first test (half hold 50 CNY
    for a 100-CNY order, no top-up) now have a card line too — 1,000 CNY for half of them, 30 CNY for the
    other half. A poor buyer with the big line pays at the first attempt from the card; a poor buyer with
    the small line fails on every attempt, as before (both short); a rich buyer pays from the wallet.
    Which is which follows the two balances, not a draw: with the wallet alone (same seed) the same poor
    buyers fail all four attempts."""
    cards = {**WALLET_BNPL, "user.top_up_delay": "off", "bnpl.deduction_source": "wallet_then_card",
             "user.card_limit": {"dist": "empirical", "values": [30, 1000]}}
    _r, _u, _a, _c, _att, events = _run(cards)
    attempts = _attempts(events)
    sources = {ev["order"]: ev["source"] for ev in events if ev["type"] == "bnpl.deduction" and ev["ok"]}
    assert set(sources.values()) == {"wallet", "card"}
    kinds = {tuple(ok for _t, ok in a) for a in attempts.values()}
    assert kinds == {(True,), (False,) * 4}, kinds
    _r, _u, _a, _c, _att, alone = _run({**WALLET_BNPL, "user.top_up_delay": "off"})
    failing_alone = {o for o, a in _attempts(alone).items() if len(a) == 4}
    failing = {o for o, a in attempts.items() if len(a) == 4}
    by_card = {o for o, s in sources.items() if s == "card"}
    assert failing and by_card
    assert failing | by_card == failing_alone and not failing & by_card  # the poor buyers, split by their card line
    assert 0.3 < len(by_card) / len(failing_alone) < 0.7


def test_the_card_fall_back_without_a_card_line_is_refused_naming_both_keys():
    import pytest

    from sim.scenario import ConfigError, scenario_from_dict

    with pytest.raises(ConfigError) as err:
        scenario_from_dict({"bnpl": {"deduction_source": "wallet_then_card"},
                            "user": {"wallet_balance": 100}}, "lb.toml")
    text = str(err.value)
    assert "lb.toml: bnpl.deduction_source" in text and 'user.card_limit is "off"' in text


def test_the_agreements_unpaid_at_the_end_are_told_apart_by_what_their_buyers_hold():
    """metrics.bnpl_unpaid splits the unpaid agreements (as many as bnpl_deduction_failed counts) by the
    buyer's account at the end. The poor buyers of the first test (50 CNY for a 100-CNY order) with no
    top-up are short on every method; with a top-up that lands 40 h after the first failure — after the
    last retry (+31 h), before the end — every one of them holds the amount (one more attempt would
    collect it); with a top-up 10 d later, every one is waiting for it. Retrying daily to the end, the
    40-h top-ups are collected and nothing is left unpaid."""
    for top_up, where in (("off", "short"), ("40h", "collectable"), ("10d", "top_up_coming")):
        r, *_ = _run({**WALLET_BNPL, "user.top_up_delay": top_up})
        m = r.metrics["bnpl_unpaid"]
        assert m["unpaid"] == r.summary.per_class["bnpl_deduction_failed"].count >= 100, (top_up, m)
        assert m[where] == m["unpaid"], (top_up, m)
        assert m["unpaid_fen"] == 10_000 * m["unpaid"]
    r, *_ = _run({**WALLET_BNPL, "user.top_up_delay": "40h",
                  "bnpl.deduction_retry_schedule": ["1h", "6h", "1d", "1d", "1d"]})
    assert r.metrics["bnpl_unpaid"]["unpaid"] == 0 == r.summary.per_class["bnpl_deduction_failed"].count
    drawn, *_ = _run({**WALLET_BNPL, "bnpl.deduction_source": "draw"})
    assert "bnpl_unpaid" not in drawn.metrics  # deductions drawn: no accounts to tell them apart by
