"""Reconciliation (对账): compare the bank's statement with orders and trades, classify, repair.

Runs every ``reconciliation.interval`` (``"1h"``, or ``"1d"`` for a T+1 statement) over the debits
older than ``reconciliation.statement_delay``. Each debit is classified by
:func:`sim.domain.policies.reconcile` — 长款 (money, no paid order), 短款, unknown — and repaired per
``reconciliation.repair``: refund the buyer, fill in the order (reopen it), or only report. An order
holds a reference until its debits have been reconciled, so what reconciliation repairs is seen.
"""

from __future__ import annotations

from collections import deque

from sim.domain import policies
from sim.domain.states import OrderState, TradeState
from sim.model.world import World

O, T = OrderState, TradeState


class Reconciler:
    def __init__(self, w: World, order_service, gateway, bank) -> None:
        self.w = w
        self.os, self.gw, self.bank = order_service, gateway, bank
        self.statement: deque = deque()  # (debited_at, order, trade), in time order
        self.interval = w.p.reconciliation.interval
        if self.interval is not None:
            bank.on_debit.append(self._debited)
            w.env.process(self._run())

    def _debited(self, order: str, trade: str, t: float) -> None:
        self.w.hold(order)
        self.statement.append((t, order, trade))

    def _run(self):
        w = self.w
        while True:
            yield w.env.timeout(self.interval)
            cutoff = w.env.now - w.p.reconciliation.statement_delay
            while self.statement and self.statement[0][0] <= cutoff:
                _t, order_id, trade_id = self.statement.popleft()
                self._reconcile(order_id, trade_id)
                w.release(order_id)

    def _reconcile(self, order_id: str, trade_id: str) -> None:
        w = self.w
        order = w.orders.get(order_id)
        trade = w.trades.get(trade_id)
        if trade is None:
            return
        state = trade.state
        if state in (T.UNKNOWN, T.FAILED):
            self.gw.confirm_debit(trade, "reconciler")  # the bank debited it: the statement is the truth
            state = T.SUCCEEDED
        kind, action = policies.reconcile(order.state if order else None, state, w.p.reconciliation.repair,
                                          debit_returned=trade.refunded > 0)
        if kind is None:
            return
        w.emit("recon.found", "reconciler", order_id, kind=kind.value, trade=trade_id)
        if action == "refund" and state is T.CLOSED:
            # A debit on a closed trade (a late approval the gateway ignored): the statement shows the
            # money, no trade accounts for it; return it to the buyer.
            w.emit("recon.repaired", "reconciler", order_id, action="refund", trade=trade_id)
            self.gw.reverse(trade, "reconciler")
        elif action == "refund":
            w.emit("recon.repaired", "reconciler", order_id, action="refund", trade=trade_id)
            self.os.refund(order, trade)
        elif action == "fill_order" and order is not None and order.state is O.AWAITING_PAYMENT:
            w.emit("recon.repaired", "reconciler", order_id, action="fill_order", trade=trade_id)
            self.os.mark_paid(order, trade_id)
        elif action == "fill_order" and order is not None and order.state is O.CLOSED:
            self.os.reopen_with(order, trade_id, "reconciler")
            w.emit("recon.repaired", "reconciler", order_id, action="fill_order", trade=trade_id)
