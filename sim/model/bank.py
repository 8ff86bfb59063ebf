"""The bank (or wallet balance system): debits with latency, congestion, declines, risk control.

A debit is one job on the bank's channels (``bank.channels``): under a peak the queue in front of them
is where latency grows first, as it did on Double 11 2011-2014. Each call draws its primitive outcome
(declined, blocked by risk control, held for review, approved) and whether its *response* is lost on
the way back. Money moves here, when the bank debits — not when the gateway hears about it — which is
why a lost response or a held debit can leave a buyer charged while every other party thinks
otherwise. With ``bank.deadlines`` a debit that reaches a channel after the gateway stopped waiting for
it (``gateway.timeout``) is not executed at all; without, it is — money moves for a caller long gone.
"""

from __future__ import annotations

from typing import Callable

from sim.domain.ledger import CHARGE, transfer
from sim.model.station import STARTED, Station
from sim.model.world import World

APPROVED, DECLINED, RISK_BLOCKED, LIMIT, HELD = "approved", "declined", "risk_blocked", "limit", "held"
PENDING = "pending"  # a debit request is queued or in progress at the bank
EXPIRED = "expired"  # bank.deadlines: the debit reached a channel after its caller gave up; not executed
BUSY = "busy"  # refused at the door (the channels' queue is full): not executed, answered at once
_FINAL_REFUSALS = (DECLINED, RISK_BLOCKED, LIMIT, EXPIRED)


class Bank:
    def __init__(self, w: World) -> None:
        self.w = w
        self.station = Station(w.env, "bank", w.p.bank.channels, w.warmup, w.horizon)
        self.configure(w.p)
        self.record = w.bank_record  # trade -> the bank's own outcome (what a query returns)
        # who hears of every debit (order, trade, time): the reconciler's statement, customer service's SMS
        self.on_debit: list[Callable[[str, str, float], None]] = []

    def configure(self, p) -> None:
        """The channels and overload policies of ``p`` (a fault window may change them)."""
        self.station.configure(p.bank.channels, p.bank.queue_limit, p.bank.deadlines, margin=p.bank.deadline_margin)

    def debit(self, trade, respond: Callable[[str], None], deadline: float = float("inf")) -> float | None:
        """Try to debit ``trade.amount`` from the buyer; ``respond(outcome)`` unless the response is lost.

        ``deadline``: when the gateway stops waiting (with ``bank.deadlines`` a debit reaching a channel
        after it is not executed). A debit refused at the door (queue full) is answered ``busy`` at once.
        Returns the exact delay until ``respond`` is called when that is already certain (a free
        channel, no earlier attempt on this trade, a response that will not be lost or held), else
        None — so the gateway need only arm its timeout when the timeout can actually fire.
        """
        w = self.w
        p = w.p.bank
        r = w.rng["bank"]
        u = r.random()
        lost = r.random() < p.response_loss
        if trade.amount > p.single_payment_limit * 100:
            outcome = LIMIT
        elif u < p.decline_probability:
            outcome = DECLINED
        elif u < p.decline_probability + p.risk_block_probability:
            outcome = RISK_BLOCKED
        elif u < p.decline_probability + p.risk_block_probability + p.risk_hold_probability:
            outcome = HELD
        else:
            outcome = APPROVED
        earlier = self.record.get(trade.id)
        if earlier is None or earlier in _FINAL_REFUSALS:
            self.record[trade.id] = PENDING  # a query now learns this attempt is still in flight

        def done(_wait: float) -> None:
            previous = self.record.get(trade.id)
            if previous == APPROVED or previous == HELD:
                # The trade number is the idempotency key: a debit already made (or held for
                # review) is not made again; the bank answers with what it knows.
                if previous == APPROVED and not lost:
                    respond(APPROVED)
                return
            if outcome == HELD or (outcome == APPROVED and p.risk_hold_after is not None and self._velocity(trade)):
                # Risk control holds the debit for review, then releases it: the money moves late,
                # and the gateway hears nothing until then (its own timeout will have fired).
                self.record[trade.id] = HELD
                w.hold(trade.order)
                w.at(w.s_risk_hold(), lambda: self._release_hold(trade, respond, lost))
                return
            result = self._account_check(trade, outcome)
            self.record[trade.id] = result
            if result == APPROVED:
                self._move_money(trade)
            if not lost:
                respond(result)

        def dropped() -> None:
            if self.record.get(trade.id) == PENDING:
                self.record[trade.id] = EXPIRED  # what a query learns: nothing was debited

        latency = w.s_bank_latency()
        started = self.station.submit(latency, done, deadline=deadline, dropped=dropped)
        if started < 0:
            if earlier is None:  # as if this attempt never reached the bank
                self.record.pop(trade.id, None)
            elif earlier in _FINAL_REFUSALS:
                self.record[trade.id] = earlier
            respond(BUSY)
            return 0.0
        return latency if started == STARTED and earlier is None and not lost and outcome != HELD else None

    def _velocity(self, trade) -> bool:
        """Risk control's velocity rule (``bank.risk_hold_after``): this buyer's debits refused today
        have reached the limit, so the next one is held for review rather than made."""
        w = self.w
        acct = w.accounts.get(trade.user)
        return acct is not None and acct.frozen(int(w.env.now // 86400.0), w.p.bank.risk_hold_after)

    def _account_check(self, trade, outcome: str) -> str:
        """The buyer's account (when kept): risk status first, then balance or card line and the daily
        limit of a debit the call's own outcome approved. What it finds persists: a wallet too small
        is declined on every retry and every order until topped up."""
        w = self.w
        acct = w.accounts.get(trade.user)
        if acct is None:
            return outcome
        day = int(w.env.now // 86400.0)
        result = outcome
        order = w.orders.get(trade.order)
        instrument = order.method if order is not None else "card"
        if acct.frozen(day, w.p.bank.risk_freeze_after):
            result = RISK_BLOCKED
        elif result == APPROVED:
            result = acct.debit(instrument, trade.amount, day)
            if result == DECLINED and instrument == "wallet":
                w.top_up_later(trade.user)
        if result in _FINAL_REFUSALS:
            acct.declined(day)
        return result

    def _release_hold(self, trade, respond: Callable[[str], None], lost: bool) -> None:
        result = self._account_check(trade, APPROVED)  # the account as it is when the hold ends
        self.record[trade.id] = result
        if result == APPROVED:
            self._move_money(trade)
        if not lost:
            respond(result)
        self.w.release(trade.order)

    def _move_money(self, trade) -> None:
        w = self.w
        txn = transfer(w.next_txn("c"), CHARGE, f"user:{trade.user}", "clearing", trade.amount)
        w.ledger.post(txn)
        w.post(txn, trade.order, "bank", trade=trade.id)
        for listener in self.on_debit:
            listener(trade.order, trade.id, w.env.now)

    def query(self, trade_id: str, respond: Callable[[str | None], None]) -> None:
        """What the bank knows of a trade's latest debit (``None`` or ``pending``: nothing final yet;
        ``busy``: the query was refused at the door)."""
        if self.station.submit(self.w.s_bank_latency(), lambda _w: respond(self.record.get(trade_id))) < 0:
            respond(BUSY)
