"""The BNPL (pay after use) provider: credit, finish, deductions, sync lag, compensation, overdue.

Modelled on Alipay 芝麻先享 and WeChat Pay Score (``docs/domain.md``): an authorization at
checkout within the credit limit; after the merchant's *finish*, one deduction (代扣) that may fail on a
low balance and is retried on ``bnpl.deduction_retry_schedule``; the buyer may repay by hand. The
provider's *payment side* knows at once when money arrived; its *credit side*, which marks buyers
overdue, learns it ``bnpl.sync_lag`` later. At ``bnpl.compensation_after`` past the first failed
deduction the provider pays the merchant and reads the credit side: a buyer who already paid but is
not yet synced is marked overdue all the same — a false overdue that emerges from the lag.

An accepted after-sales request (:meth:`BnplProvider.after_sales`) cancels the agreement while nothing
is collected and refunds what was collected otherwise (:func:`sim.domain.after_sales.bnpl_remedy`); a
merchant's finish that reaches a cancelled agreement starts nothing, and its deductions stop.
"""

from __future__ import annotations


from sim.domain import policies
from sim.domain.after_sales import BnplRemedy, bnpl_remedy
from sim.domain.entities import Agreement
from sim.domain.ledger import REFUND, transfer
from sim.domain.population import credit_limit_stream
from sim.domain.states import AgreementState
from sim.model.world import World

A = AgreementState
_UNPAID_AFTER_FINISH = frozenset({A.DEDUCTING, A.COMPENSATED, A.OVERDUE})


class BnplProvider:
    def __init__(self, w: World) -> None:
        self.w = w
        self.order_service = None
        self.credit_synced = w.credit_synced  # agreements the credit side believes paid
        # orders whose agreement a deduction from the buyer's account paid (bnpl.deduction_source "wallet" or
        # "wallet_then_card") -> the instrument it took: a refund gives it back with user.refund_restores
        self.deducted_from: dict[str, str] = {}
        w.on_forget.append(lambda order: self.deducted_from.pop(order, None))

    def agreement_of(self, order_id: str) -> Agreement | None:
        return self.w.agreements.get(order_id)

    def authorize(self, order, reply) -> None:
        """Sign the credit order (pay after use): approved within the credit limit."""
        w = self.w
        acct = w.accounts.get(order.user)
        cny = w.p.bnpl.credit_limit if w.p.bnpl.buyer_credit_limit is None else self.buyer_limit(order.user)
        limit = int(round(cny * 100))
        if order.amount > cny * 100 or (acct is not None and not acct.bnpl_room(order.amount, limit)):
            w.emit("bnpl.declined", "bnpl", order.id, reason="credit_limit")
            reply("failed")
            return
        if acct is not None:
            acct.bnpl_outstanding += order.amount  # owed until deducted or repaid
        ag = Agreement(f"{order.id}-a", order.id, order.user, order.merchant, order.amount,
                       w.env.now + w.p.bnpl.authorization_ttl)
        w.agreements[order.id] = ag
        w.emit("bnpl.authorized", "bnpl", order.id, agreement=ag.id, amount=order.amount, expires_at=ag.expires_at)
        self.order_service.mark_paid(order, ag.id, agreement=True)
        reply("succeeded")

    def buyer_limit(self, user: str) -> float:
        """``user``'s own credit limit in CNY (``bnpl.buyer_credit_limit``): the first draw of a stream
        seeded from the root seed, the replication and the buyer account only, so it is the same on
        every authorization of theirs and shifts none of their other draws."""
        w = self.w
        return w.p.bnpl.buyer_credit_limit.draw(credit_limit_stream(w.scenario.run.seed, w.replication, user))

    def finish(self, ag: Agreement) -> None:
        w = self.w
        if ag.state is not A.AUTHORIZED:
            return
        if w.env.now >= ag.expires_at:
            ag.to(A.EXPIRED)
            w.emit("bnpl.expired", "bnpl", ag.order, agreement=ag.id)
            self._settle_debt(ag)
            return
        ag.finish()
        w.emit("bnpl.finish_requested", "bnpl", ag.order, agreement=ag.id, amount=ag.amount)
        w.hold(ag.order)
        self._deduct(ag, 1)

    def after_sales(self, ag: Agreement) -> BnplRemedy:
        """The merchant accepted an after-sales request on ``ag``'s order: cancel the agreement while
        nothing is collected, refund the collected amount otherwise (``bnpl_remedy``). A refund that
        must wait for the buyer's money (``refund_when_paid``) is made when it arrives (:meth:`_paid`)."""
        w = self.w
        remedy = bnpl_remedy(ag.state, ag.paid_by_user)
        if remedy is BnplRemedy.CANCEL:
            ag.to(A.CANCELLED)
            w.emit("bnpl.cancelled", "bnpl", ag.order, agreement=ag.id, reason="after_sales")
            self._settle_debt(ag)
        elif remedy is BnplRemedy.REFUND:
            self._refund(ag)
        elif remedy is BnplRemedy.REFUND_WHEN_PAID:
            ag.refund_due = True
        return remedy

    def _refund(self, ag: Agreement) -> None:
        """Return the collected amount to the buyer (the merchant's money: it was paid out or compensated)."""
        w = self.w
        txn = transfer(w.next_txn("r"), REFUND, f"merchant:{ag.merchant}", f"user:{ag.user}", ag.amount)
        w.ledger.post(txn)
        w.post(txn, ag.order, "bnpl", agreement=ag.id)
        acct = w.accounts.get(ag.user)
        instrument = self.deducted_from.get(ag.order)
        if w.p.user.refund_restores and instrument is not None and acct is not None:
            acct.give_back(instrument, ag.amount)  # where the deduction took it from (a repayment by hand: not modelled)

    def _deduct(self, ag: Agreement, attempt: int) -> None:
        """One deduction attempt; holds the order until the agreement settles or the retries are spent."""
        w = self.w
        b = w.p.bnpl
        if ag.paid_by_user or ag.state is A.CANCELLED:
            w.release(ag.order)
            return
        r = w.order_rng(ag.order)
        paid_from = {}  # from the buyer's account: which method paid (the event's source)
        if b.deduction_source != "draw":
            instrument = self._from_account(ag)
            failed = instrument is None
            if not failed:
                self.deducted_from[ag.order] = instrument
                paid_from = {"source": instrument}
        else:
            failed = r.random() < b.deduction_failure
        w.emit("bnpl.deduction", "bnpl", ag.order, agreement=ag.id, ok=not failed, attempt=attempt, **paid_from)
        if not failed:
            self._paid(ag, by_hand=False)
            w.release(ag.order)
            return
        if attempt == 1:
            # The buyer is told and may repay by hand; the compensation clock starts.
            w.hold(ag.order)
            w.at(b.user_repay_delay.draw(r), lambda: self._repay(ag))
            w.hold(ag.order)
            w.at(b.compensation_after, lambda: self._compensation_check(ag))
        gaps = b.deduction_retry_schedule.gaps
        if attempt - 1 < len(gaps):
            w.at(gaps[attempt - 1], lambda: self._deduct(ag, attempt + 1))
        else:
            w.release(ag.order)

    def _from_account(self, ag: Agreement) -> str | None:
        """``bnpl.deduction_source = "wallet"``: take the amount from the buyer's wallet balance as it is
        now (``BuyerAccount.debit``, as the bank decides a wallet debit); short of it, the deduction
        fails and the buyer tops up ``user.top_up_delay`` later — until then every retry fails again.
        ``"wallet_then_card"``: a short wallet falls back on the buyer's card line
        (``BuyerAccount.deduct``), and the deduction fails only when both are short; the buyer still tops
        the short wallet up. Nothing is drawn: whether it fails is the balances, which the buyer's other
        orders also spend. Returns the instrument that paid, or None."""
        w = self.w
        acct = w.accounts.get(ag.user)
        if acct is None:
            return "wallet"  # no account kept (user.wallet_balance off cannot be: the scenario refuses it)
        sources = policies.DEDUCTION_SOURCES[w.p.bnpl.deduction_source]
        instrument, wallet_short = acct.deduct(sources, ag.amount, int(w.env.now // 86400.0))
        if wallet_short:
            w.top_up_later(ag.user)
        return instrument

    def unpaid_at_end(self) -> dict[str, float] | None:
        """Where the agreements stand whose deduction from the buyer's account failed and that are still
        unpaid at the end of the observation (the orders counted, created between warmup and horizon):
        ``unpaid`` of them (``unpaid_fen``), split by their buyer's account as it is at the end —
        ``collectable``: the methods the provider deducts from (``bnpl.deduction_source``) hold the amount
        now, so one more attempt would collect it (what a longer retry schedule buys); ``top_up_coming``:
        short, a top-up on its way; ``short``: short on every method, nothing coming — no retry can
        collect money that is not there. None when deductions are drawn (no accounts)."""
        w = self.w
        if w.p.bnpl.deduction_source == "draw":
            return None
        sources = policies.DEDUCTION_SOURCES[w.p.bnpl.deduction_source]
        day = int(w.env.now // 86400.0)
        out = {"unpaid": 0.0, "unpaid_fen": 0.0, "collectable": 0.0, "top_up_coming": 0.0, "short": 0.0}
        for ag in w.agreements.values():
            # finished and unpaid: its first deduction runs at the finish, so it failed at least once
            if ag.paid_by_user or ag.state not in _UNPAID_AFTER_FINISH:
                continue
            o = w.orders.get(ag.order)
            if o is None or not w.warmup <= o.created_at < w.horizon:
                continue
            out["unpaid"] += 1
            out["unpaid_fen"] += ag.amount
            acct = w.accounts.get(ag.user)
            if acct is None or acct.could_deduct(sources, ag.amount, day):
                out["collectable"] += 1
            elif acct.topping_up:
                out["top_up_coming"] += 1
            else:
                out["short"] += 1
        return out

    def _repay(self, ag: Agreement) -> None:
        w = self.w
        if not ag.paid_by_user and ag.state is not A.CANCELLED:
            w.emit("bnpl.repaid", "user", ag.order, agreement=ag.id)
            self._paid(ag, by_hand=True)
        w.release(ag.order)

    def _paid(self, ag: Agreement, by_hand: bool) -> None:
        """Money reached the payment side now; the credit side learns it after the sync lag."""
        w = self.w
        for txn in ag.deducted(w.ledger, w.next_txn("b"), by_hand=by_hand):
            w.post(txn, ag.order, "bnpl", agreement=ag.id)
        self._settle_debt(ag)
        if ag.refund_due:  # the merchant accepted a return while the buyer still owed: refund it now
            ag.refund_due = False
            self._refund(ag)
            order = w.orders.get(ag.order)
            if order is not None:
                self.order_service.bnpl_refunded(order, ag)
        w.hold(ag.order)
        w.at(w.p.bnpl.sync_lag.draw(w.order_rng(ag.order)), lambda: self._synced(ag))

    def _settle_debt(self, ag: Agreement) -> None:
        """The buyer owes nothing more on ``ag``: its amount leaves their outstanding BNPL balance."""
        acct = self.w.accounts.get(ag.user)
        if acct is not None:
            acct.bnpl_outstanding = max(0, acct.bnpl_outstanding - ag.amount)

    def _synced(self, ag: Agreement) -> None:
        w = self.w
        self.credit_synced.add(ag.id)
        w.emit("bnpl.synced", "bnpl", ag.order, agreement=ag.id, paid=True)
        if ag.state is A.OVERDUE:
            w.emit("bnpl.overdue_cleared", "bnpl", ag.order, agreement=ag.id)
        if ag.state in (A.DEDUCTING, A.OVERDUE, A.COMPENSATED):
            ag.to(A.SETTLED)
            w.emit("bnpl.settled", "bnpl", ag.order, agreement=ag.id)
        w.release(ag.order)

    def _compensation_check(self, ag: Agreement) -> None:
        w = self.w
        decision = policies.bnpl_overdue_decision(ag.id in self.credit_synced)
        if decision == "overdue" and ag.state is A.DEDUCTING:
            txn = ag.compensate(w.ledger, w.next_txn("k"))
            if txn is not None:
                w.post(txn, ag.order, "bnpl", agreement=ag.id)
            w.emit("bnpl.compensated", "bnpl", ag.order, agreement=ag.id)
            ag.to(A.OVERDUE)
            w.emit("bnpl.overdue", "bnpl", ag.order, agreement=ag.id)
        w.release(ag.order)
