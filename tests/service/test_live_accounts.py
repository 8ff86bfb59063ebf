"""Buyer accounts at the live bank (``user.wallet_balance``, ``card_limit``, ``daily_limit``,
``risk_flagged``, ``bank.risk_freeze_after``, ``user.top_up_delay``): what a debit finds persists
across the buyer's retries and orders, as in the simulation — an empty wallet is declined on every
retry, not redrawn. Real processes on loopback; no per-call decline is drawn (QUIET)."""

from __future__ import annotations

from .helpers import balance, events_of, http, new_order, start_payment, uid, wait_for


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


WALLET_BNPL = {"merchant.ship_time": "0s", "merchant.delivery_time": "20s", "merchant.bnpl_finish_delay": "20s",
               "merchant.bnpl_finish_failure": 0.0, "bnpl.sync_lag": "10s", "bnpl.deduction_source": "wallet",
               "bnpl.deduction_failure": 1.0,  # not read: the wallet decides
               "bnpl.deduction_retry_schedule": ["1m", "3m"], "bnpl.user_repay_delay": "30d",
               "bnpl.compensation_after": "30d", "user.wallet_balance": 50.0, "user.top_up_delay": "2m"}


def _deductions(s, order: str) -> list[bool]:
    return [e["ok"] for e in events_of(s, order) if e["type"] == "bnpl.deduction"]


def test_a_bnpl_deduction_from_the_wallet_fails_while_the_buyers_orders_spent_it_and_succeeds_after_the_top_up(services):
    """``bnpl.deduction_source = "wallet"`` live: the buyer's 30-CNY wallet order leaves 20 of 50, so the
    50-CNY deduction fails, fails again on the retry a minute later, and succeeds on the one after the
    top-up (50 more, 2 min after the first failure). Another buyer's deduction succeeds at once though
    ``deduction_failure`` is 1: the balance decides, not a coin."""
    s = services
    s.set_faults(WALLET_BNPL)
    buyer = uid("dw")
    assert _pay(s, new_order(s, amount=3000, user=buyer, method="wallet")["order"])["state"] == "succeeded"
    order = new_order(s, amount=5000, user=buyer, method="bnpl")["order"]
    agreement = start_payment(s, order)["agreement"]
    rich = new_order(s, amount=4000, user=uid("dw"), method="bnpl")["order"]
    rich_agreement = start_payment(s, rich)["agreement"]
    get = lambda a: http.get(f"{s.provider_url}/bnpl/agreements/{a}").json()["state"]  # noqa: E731
    wait_for(lambda: get(rich_agreement) == "settled", timeout=10, what="the other buyer's agreement settled")
    assert _deductions(s, rich) == [True]
    wait_for(lambda: get(agreement) == "settled", timeout=20, what="the agreement settled after the top-up")
    assert _deductions(s, order) == [False, False, True]
    attempts = [e for e in events_of(s, order) if e["type"] == "bnpl.deduction"]
    assert attempts[2]["t"] - attempts[0]["t"] > 120  # paid only after the top-up landed
    assert balance(s, f"user:{buyer}") == -8000  # the wallet order and the deduction, once each


def test_a_refund_gives_the_wallet_back_with_refund_restores(services):
    """``user.refund_restores`` live, as in the simulation: a refunded wallet payment's amount goes back
    to the balance, so the buyer it emptied can pay again; off, the balance stays spent."""
    s = services
    for restores, expected in ((False, "declined"), (True, "succeeded")):
        s.set_faults({"user.wallet_balance": 50.0, "user.refund_restores": restores})
        buyer = uid("rr")
        paid = _pay(s, new_order(s, amount=4000, user=buyer, method="wallet")["order"])
        assert paid["state"] == "succeeded", paid
        refund = http.post(f"{s.provider_url}/trades/{paid['trade']}/refund", json={"refund_id": f"{buyer}-r"})
        assert refund.status_code == 200, refund.text
        again = _pay(s, new_order(s, amount=4000, user=buyer, method="wallet")["order"])
        assert (again["state"] if expected == "succeeded" else again.get("reason")) == expected, (restores, again)


def test_a_short_wallet_deduction_falls_back_on_the_card_line_and_a_refund_goes_back_to_it(services):
    """``bnpl.deduction_source = "wallet_then_card"`` live, as in the simulation (WeChat Pay polls a buyer's
    other payment methods): the buyer's 30-CNY wallet order leaves 20 of 50, so their first 50-CNY
    deduction is taken from the 60-CNY card line at once; the second finds the wallet (20) and the card
    (10) both short, fails, and succeeds from the wallet after the top-up. The first agreement's return
    (``user.refund_restores``) gives its 50 back to the card line it came from, so a 60-CNY card order
    of the buyer then pays."""
    s = services
    s.set_faults({**WALLET_BNPL, "bnpl.deduction_source": "wallet_then_card", "user.card_limit": 60.0,
                  "user.refund_restores": True})
    buyer = uid("dc")
    assert _pay(s, new_order(s, amount=3000, user=buyer, method="wallet")["order"])["state"] == "succeeded"
    get = lambda a: http.get(f"{s.provider_url}/bnpl/agreements/{a}").json()["state"]  # noqa: E731
    first = new_order(s, amount=5000, user=buyer, method="bnpl")["order"]
    first_agreement = start_payment(s, first)["agreement"]
    wait_for(lambda: get(first_agreement) == "settled", timeout=10, what="the first agreement settled")
    [ok] = [e for e in events_of(s, first) if e["type"] == "bnpl.deduction"]
    assert (ok["ok"], ok["source"]) == (True, "card"), ok
    second = new_order(s, amount=5000, user=buyer, method="bnpl")["order"]
    second_agreement = start_payment(s, second)["agreement"]
    wait_for(lambda: get(second_agreement) == "settled", timeout=20, what="the second agreement settled after the top-up")
    attempts = [e for e in events_of(s, second) if e["type"] == "bnpl.deduction"]
    assert [e["ok"] for e in attempts] == [False, False, True] and attempts[2]["source"] == "wallet", attempts
    too_much = _pay(s, new_order(s, amount=6000, user=buyer, method="card")["order"])
    assert (too_much["state"], too_much["reason"]) == ("failed", "declined"), too_much  # 10 CNY left on the line
    back = http.post(f"{s.provider_url}/bnpl/agreements/{first_agreement}/return")
    assert back.status_code == 200, back.text
    assert back.json()["remedy"] == "refund", back.json()
    assert _pay(s, new_order(s, amount=6000, user=buyer, method="card")["order"])["state"] == "succeeded"
