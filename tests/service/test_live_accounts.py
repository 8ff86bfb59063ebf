"""Buyer accounts at the live bank (``user.wallet_balance``, ``card_limit``, ``daily_limit``,
``risk_flagged``, ``bank.risk_freeze_after``, ``user.top_up_delay``): what a debit finds persists
across the buyer's retries and orders, as in the simulation — an empty wallet is declined on every
retry, not redrawn. Real processes on loopback; no per-call decline is drawn (QUIET)."""

from __future__ import annotations

from .helpers import http, new_order, start_payment, uid, wait_for


def _pay(s, order: str, trade: str | None = None) -> dict:
    trade = trade or start_payment(s, order)["trade"]
    return {"trade": trade, **http.post(f"{s.provider_url}/trades/{trade}/pay").json()}


def _now(s) -> float:
    return s.admin("provider", "GET", "/admin/stats").json()["now"]


def test_a_wallet_balance_persists_across_retries_and_orders(services):
    s = services
    s.set_faults({"user.wallet_balance": 50.0})
    buyer = uid("w")
    big = new_order(s, amount=8000, user=buyer, method="wallet")["order"]
    first = _pay(s, big)
    assert (first["state"], first["reason"]) == ("failed", "declined"), first
    again = _pay(s, big, first["trade"])  # the same trade paid again: still too little money
    assert (again["state"], again["reason"]) == ("failed", "declined"), again
    assert _pay(s, new_order(s, amount=3000, user=buyer, method="wallet")["order"])["state"] == "succeeded"
    third = _pay(s, new_order(s, amount=3000, user=buyer, method="wallet")["order"])
    assert (third["state"], third["reason"]) == ("failed", "declined"), third  # 20 CNY left
    # A card payment of the same buyer does not touch the wallet (no card line set).
    assert _pay(s, new_order(s, amount=8000, user=buyer, method="card")["order"])["state"] == "succeeded"
    # Another buyer has their own balance.
    assert _pay(s, new_order(s, amount=3000, user=uid("w"), method="wallet")["order"])["state"] == "succeeded"


def test_card_line_daily_limit_and_risk(services):
    s = services
    s.set_faults({"user.card_limit": 100.0, "user.daily_limit": 150.0})
    buyer = uid("c")
    assert _pay(s, new_order(s, amount=6000, user=buyer, method="card")["order"])["state"] == "succeeded"
    used_up = _pay(s, new_order(s, amount=6000, user=buyer, method="card")["order"])
    assert (used_up["state"], used_up["reason"]) == ("failed", "declined"), used_up
    over = _pay(s, new_order(s, amount=9100, user=buyer, method="wallet")["order"])  # 60 + 91 > 150 today
    assert (over["state"], over["reason"]) == ("failed", "limit"), over

    s.set_faults({"user.risk_flagged": 1.0})
    flagged = _pay(s, new_order(s, amount=500, user=uid("r"))["order"])
    assert (flagged["state"], flagged["reason"]) == ("failed", "risk_blocked"), flagged

    s.set_faults({"user.wallet_balance": 10.0, "bank.risk_freeze_after": 2})
    buyer = uid("f")
    for _ in range(2):
        declined = _pay(s, new_order(s, amount=2000, user=buyer, method="wallet")["order"])
        assert declined["reason"] == "declined", declined
    frozen = _pay(s, new_order(s, amount=500, user=buyer, method="wallet")["order"])  # enough money, frozen
    assert (frozen["state"], frozen["reason"]) == ("failed", "risk_blocked"), frozen


def test_a_declined_wallet_is_topped_up_later(services):
    s = services
    s.set_faults({"user.wallet_balance": 50.0, "user.top_up_delay": "30s"})
    buyer = uid("t")
    order = new_order(s, amount=8000, user=buyer, method="wallet")["order"]
    first = _pay(s, order)
    assert first["reason"] == "declined", first
    declined_at = _now(s)
    wait_for(lambda: _now(s) > declined_at + 40, timeout=5, what="the top-up")
    assert _pay(s, order, first["trade"])["state"] == "succeeded"  # 50 + 50 CNY now


def test_with_accounts_the_bank_draws_the_simulations_account_and_its_top_ups(services):
    """``user.accounts``: the live user ``<run>-a3`` is the simulation's account ``a3`` — the same wallet
    balance from the same stream, and the same top-up (amount, then delay) continuing it."""
    from sim.domain.population import account_stream, draw_account, fen
    from sim.scenario import Scenario

    s = services
    over = {"user.accounts": 5, "user.wallet_balance": {"dist": "uniform", "low": 20, "high": 80},
            "user.top_up_delay": "30s"}
    s.set_faults(over)
    u = Scenario().with_overrides(over).user
    r = account_stream(Scenario().run.seed, 0, "a3")
    balance = draw_account(u, r).balance
    top_up = fen(u.wallet_balance.draw(r))
    buyer = uid("run") + "-a3"
    over_by_one = _pay(s, new_order(s, amount=balance + 1, user=buyer, method="wallet")["order"])
    assert (over_by_one["state"], over_by_one["reason"]) == ("failed", "declined"), (balance, over_by_one)
    declined_at = _now(s)
    wait_for(lambda: _now(s) > declined_at + 40, timeout=5, what="the top-up")
    # The wallet now holds exactly balance + top_up: one fen more is declined, the sum is paid.
    more = _pay(s, new_order(s, amount=balance + top_up + 1, user=buyer, method="wallet")["order"])
    assert (more["state"], more["reason"]) == ("failed", "declined"), (balance, top_up, more)
    assert _pay(s, new_order(s, amount=balance + top_up, user=buyer, method="wallet")["order"])["state"] == "succeeded"
