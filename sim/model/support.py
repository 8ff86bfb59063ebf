"""The platform's customer service (平台客服): buyers who were charged for an order they do not have
complain, and agents repair what they still find wrong (seeds 000 and 002).

With ``support.agents`` set, every bank debit is a message to its buyer (the bank's SMS). The buyer
looks at the order ``support.complaint_delay`` later; if the order does not account for the debit
(:func:`sim.domain.policies.support_action`: closed or unpaid, a second charge, a debit on a closed
trade) they file a ticket with ``support.complaint_probability``. Tickets wait in one FIFO queue for
``agents`` agents, each ticket taking ``support.handle_time``; the agent checks the order, the trade
and the bank's record when it finishes and refunds, reverses or fills in what still does not agree —
if the notification, reconciliation or an auto-refund got there first, nothing. Nothing here decides
that an order is inconsistent: the buyer's look and the agent's check read the states the rest of
the model left. After a peak the tickets queue: how long the money is held is the complaint delay
plus the queue plus the handling, and the station's metrics (``metrics.support``) say how busy the
agents were.

With ``support.escalate_probability`` above 0 the desk also hears after-sales escalations (seed 003):
a buyer whose merchant refused to cancel an unshipped order asks the platform, and the agent rules on
the order as it is when the agent finishes — cancelled and refunded if still unshipped and the reason
holds, the refusal standing if the goods shipped while the ticket waited.

Draws come from a stream per debit (per refused order for escalations) (:func:`sim.domain.population.support_stream`), so turning
customer service on changes no other draw; ``"off"`` builds nothing.
"""

from __future__ import annotations

from sim.domain import after_sales, policies
from sim.domain.after_sales import Answer, Ruling
from sim.domain.population import support_stream
from sim.domain.states import OrderState, TradeState
from sim.model.station import Station
from sim.model.world import World

O, T = OrderState, TradeState
_RULING_COUNT = {"cancel_refund": "escalations_refunded", "shipped": "escalations_shipped",
                 "not_upheld": "escalations_not_upheld", "moot": "escalations_moot"}
SUPPORT_COUNTS = ("tickets", "refunded", "reversed", "filled_in", "nothing")
ESCALATION_COUNTS = ("escalations", "escalations_refunded", "escalations_shipped", "escalations_not_upheld",
                     "escalations_moot")


class Support:
    def __init__(self, w: World, order_service, gateway, bank, merchant) -> None:
        self.w = w
        self.os, self.gw = order_service, gateway
        self.counts = dict.fromkeys(SUPPORT_COUNTS, 0)
        self.station: Station | None = None
        agents = w.p.support.agents
        if agents is None:
            return
        # The whole observation: tickets come hours after the orders
        self.station = Station(w.env, "support", agents, w.warmup, w.end)
        bank.on_debit.append(lambda order, trade, _t: self._debited(order, trade))
        if w.p.support.escalate_probability > 0:
            # (the counts only when escalations are on: every other run's results are as they were)
            self.counts.update(dict.fromkeys(ESCALATION_COUNTS, 0))
            merchant.on_refused.append(self._refused)

    def _counted(self, order_id: str) -> bool:
        o = self.w.orders.get(order_id)
        return o is not None and self.w.warmup <= o.created_at < self.w.horizon

    def _action(self, order_id: str, trade_id: str) -> str | None:
        w = self.w
        order, trade = w.orders.get(order_id), w.trades.get(trade_id)
        if order is None or trade is None:
            return None
        if trade.state is T.PROCESSING:
            return None  # the gateway still waits for the bank's answer: nothing to tell yet
        state = T.SUCCEEDED if trade.state in (T.UNKNOWN, T.FAILED) else trade.state  # the bank debited it
        return policies.support_action(order.state, state, order.paid_trade == trade_id, trade.refunded > 0,
                                       w.p.support.repair)

    def _debited(self, order_id: str, trade_id: str) -> None:
        w = self.w
        sp = w.p.support
        r = support_stream(w.scenario.run.seed, w.replication, trade_id)
        delay, complains, handle = sp.complaint_delay.draw(r), r.random() < sp.complaint_probability, sp.handle_time.draw(r)
        w.hold(order_id)
        w.at(delay, lambda: self._look(order_id, trade_id, complains, handle))

    def _look(self, order_id: str, trade_id: str, complains: bool, handle: float) -> None:
        """The buyer compares the bank's message with the order page and, if they disagree, may complain."""
        w = self.w
        if not complains or self._action(order_id, trade_id) is None:
            w.release(order_id)
            return
        trade = w.trades[trade_id]
        w.emit("support.ticket", "user", order_id, trade=trade_id, amount=trade.amount)
        if self._counted(order_id):
            self.counts["tickets"] += 1
        self.station.submit(handle, lambda _wait: self._resolve(order_id, trade_id))

    def _resolve(self, order_id: str, trade_id: str) -> None:
        """The agent's check, at the end of its work on the ticket: repair what still does not agree."""
        w = self.w
        action = self._action(order_id, trade_id)
        order, trade = w.orders.get(order_id), w.trades.get(trade_id)
        counted = self._counted(order_id)
        if action is not None and trade.state in (T.UNKNOWN, T.FAILED):
            self.gw.confirm_debit(trade, "support")  # the bank's record is the truth
        w.emit("support.resolved", "support", order_id, trade=trade_id, action=action or "nothing")
        if action == "reverse":
            self.gw.reverse(trade, "support")
        elif action == "refund":
            self.os.refund(order, trade)
        elif action == "fill_order" and order.state is O.AWAITING_PAYMENT:
            self.os.mark_paid(order, trade_id)
        elif action == "fill_order":
            self.os.reopen_with(order, trade_id, "support")
        if counted:
            key = {"reverse": "reversed", "refund": "refunded", "fill_order": "filled_in"}.get(action, "nothing")
            self.counts[key] += 1
        w.release(order_id)

    # -- after-sales escalations (seed 003: the merchant refused, the buyer asks the platform) --------------
    def _refused(self, order, answer: Answer) -> None:
        """A merchant refused to cancel an unshipped order: its buyer may take it to customer service."""
        if answer is not Answer.REFUSED_DECLINED:
            return  # shipped (a cancel is no longer possible) or no defect: the refusal stands
        w = self.w
        sp = w.p.support
        r = support_stream(w.scenario.run.seed, w.replication, "escalation:" + order.id)
        if r.random() >= sp.escalate_probability:
            return
        delay, upheld, handle = sp.escalation_delay.draw(r), r.random() < sp.escalation_upheld, sp.handle_time.draw(r)
        w.hold(order.id)
        w.at(delay, lambda: self._escalate(order, upheld, handle))

    def _escalate(self, order, upheld: bool, handle: float) -> None:
        w = self.w
        w.emit("support.ticket", "user", order.id, trade=order.paid_trade, amount=order.amount, about="after_sales")
        if self._counted(order.id):
            self.counts["escalations"] += 1
        self.station.submit(handle, lambda _wait: self._rule(order, upheld))

    def _rule(self, order, upheld: bool) -> None:
        """The agent's ruling, on the order as it is when the agent acts (:func:`sim.domain.after_sales.platform_ruling`)."""
        w = self.w
        ruling = after_sales.platform_ruling(order.state, upheld)
        w.emit("support.resolved", "support", order.id, trade=order.paid_trade, about="after_sales",
               action="refund" if ruling is Ruling.CANCEL_REFUND else "nothing", ruling=ruling.value)
        if ruling is Ruling.CANCEL_REFUND:
            self.os.refund_order(order, "support_after_sales")
        if self._counted(order.id):
            self.counts[_RULING_COUNT[ruling.value]] += 1
        w.release(order.id)
