"""Merchants: fulfilment and the BNPL *finish* call.

For a pay-after-use (BNPL) order the merchant must tell the provider the service was delivered
(*finish*) before the provider deducts the buyer's money. The call comes ``merchant.bnpl_finish_delay``
after delivery, fails with ``merchant.bnpl_finish_failure`` per call and is retried
``merchant.bnpl_finish_retries`` times; with ``merchant.bnpl_finish_forget`` a merchant (small and new
ones above all) never sends it. Wallet and card orders end, for this model, when they are paid:
what happens to them after that cannot change an anomaly of the vocabulary.
"""

from __future__ import annotations

from sim.domain.states import OrderState
from sim.model.world import World

O = OrderState


class Merchant:
    def __init__(self, w: World) -> None:
        self.w = w
        self.bnpl = None

    def fulfil(self, order) -> None:
        """Deliver a paid BNPL order, then call finish."""
        w = self.w
        r = w.order_rng(order.id)
        m = w.p.merchant
        delivery = m.delivery_time.draw(r)
        forgets = r.random() < w.p.merchant.bnpl_finish_forget
        w.hold(order.id)

        def delivered() -> None:
            if order.state is O.PAID:
                order.to(O.SHIPPED)
                order.to(O.DELIVERED)
                w.emit("order.shipped", "merchant", order.id)
                w.emit("order.delivered", "merchant", order.id)
                if not forgets:
                    w.hold(order.id)
                    w.at(m.bnpl_finish_delay.draw(r), lambda: self._finish(order, 1))
            w.release(order.id)

        w.at(delivery, delivered)

    def _finish(self, order, attempt: int) -> None:
        """One finish call (holds the order until it is answered or the merchant gives up)."""
        w = self.w
        m = w.p.merchant
        agreement = self.bnpl.agreement_of(order.id)
        if agreement is None:
            w.release(order.id)
            return
        w.emit("bnpl.finish_sent", "merchant", order.id, agreement=agreement.id, attempt=attempt)
        r = w.order_rng(order.id)
        failed = r.random() < m.bnpl_finish_failure

        def arrive() -> None:
            if failed:
                w.emit("bnpl.finish_failed", "merchant", order.id, agreement=agreement.id, attempt=attempt)
                if attempt <= m.bnpl_finish_retries:
                    w.at(m.bnpl_finish_retry_delay.draw(r), lambda: self._finish(order, attempt + 1))
                    return
                w.release(order.id)
                return
            self.bnpl.finish(agreement)
            if order.state is O.DELIVERED:
                order.to(O.COMPLETED)
                w.emit("order.completed", "merchant", order.id)
            w.release(order.id)

        w.at(w.p.app.network_latency.draw(r), arrive)
