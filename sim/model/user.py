"""Buyers and the app: arrivals, the choice of payment method, paying, waiting, retrying, polling.

Buyers arrive by a non-homogeneous Poisson process (``load.arrival_rate × load.profile``). Each one
draws what a buyer decides — method, amount, how long they take to pay, whether they walk away —
up front from the ``user`` stream, so two compared policies meet the same buyers (common random
numbers). The app is the buyer's window on the servers: every request crosses the network
(``app.network_latency``), waits at most ``app.request_timeout``, and what the app *shows*
(``app.shown``) is recorded, because what the buyer was told is half of every anomaly.
"""

from __future__ import annotations

from sim.domain import policies
from sim.domain.arrivals import arrival_steps
from sim.domain.states import ORDER_PAID_STATES, OrderState
from sim.model.world import World

O = OrderState
_UNSETTLED = frozenset({"payment_failed", "payment_unknown", "order_closed"})
_SCREEN = {"succeeded": "payment_succeeded", "failed": "payment_failed", "closed": "payment_failed",
           "unknown": "payment_unknown", "in_progress": "payment_unknown", "timeout": "payment_unknown"}


def arrivals(w: World, start_buyer):
    """Poisson arrivals following the profile (steps and ramps) until the horizon: the schedule the live
    plan replays too (``sim.domain.arrivals``)."""
    env = w.env
    for step in arrival_steps(w.p.load.rate_pieces(w.horizon), w.rng["arrivals"].expovariate):
        yield env.timeout(step.delay)
        if step.arrive:
            start_buyer()


class Buyers:
    def __init__(self, w: World, order_service, gateway, bnpl) -> None:
        self.w = w
        self.os = order_service
        self.gw = gateway
        self.bnpl = bnpl
        self.seq = 0
        self.unsettled: set[str] = set()  # orders whose last payment screen said failed, unknown or closed
        w.on_forget.append(self.unsettled.discard)
        pm = w.p.user.payment_methods
        self.cum = (pm.wallet, pm.wallet + pm.card)

    def start(self) -> None:
        w = self.w
        u = w.p.user
        r = w.rng["user"]
        self.seq += 1
        m = r.random()
        method = "wallet" if m < self.cum[0] else ("card" if m < self.cum[1] else "bnpl")
        amount = max(1, int(round(w.s_amount() * 100)))
        pay_delay = w.s_pay_delay()
        walks_away = r.random() < u.abandon_probability
        cancels = r.random() < u.cancel_probability
        retry_draws = [r.random() for _ in range(u.max_retries)]
        order = self.os.create(f"u{self.seq}", amount, method)
        w.hold(order.id)
        trade_id = None
        if method != "bnpl":
            # The cashier opens with the order: the gateway trade (prepay) exists from now on and
            # lives gateway.trade_ttl, however long the order lives.
            trade_id = policies.retry_trade_no(w.p.app.retry_trade_no, order.id, 0, None)
            self.gw.create_trade(trade_id, order, order.user)
        w.env.process(self.buyer(order, method, trade_id, pay_delay, walks_away, cancels, retry_draws))

    def show(self, order, screen: str) -> None:
        self.w.emit("app.shown", "app", order.id, screen=screen)
        if screen in _UNSETTLED:
            self.unsettled.add(order.id)
        else:
            self.unsettled.discard(order.id)

    def push(self, order, screen: str) -> None:
        """The order changed after the buyer was told 'failed', 'unknown' or 'closed': the app's push.

        Real apps send "支付成功" / "订单已关闭" pushes; without this a buyer who stopped polling would
        be told nothing more, whatever happened to their money.
        """
        if order.id in self.unsettled:
            w = self.w
            w.hold(order.id)
            w.at(w.s_net(), lambda: (self.show(order, screen), w.release(order.id)))

    def buyer(self, order, method, trade_id, pay_delay, walks_away, cancels, retry_draws):
        w = self.w
        env = w.env
        u, app = w.p.user, w.p.app
        yield env.timeout(pay_delay)
        try:
            if walks_away:
                if cancels and order.state is O.AWAITING_PAYMENT:
                    w.emit("user.cancel", "user", order.id)
                    self.os.close(order, "user_cancel")
                else:
                    w.emit("user.abandon", "user", order.id)
                return
            for attempt in range(u.max_retries + 1):
                if attempt:
                    if retry_draws[attempt - 1] >= u.retry_probability:
                        return
                    yield env.timeout(w.s_retry_delay())
                state = order.state
                if app.cashier_closes_at_expiry and (env.now >= order.expires_at or state is O.CLOSED):
                    self.show(order, "order_closed")  # the cashier's countdown ran out
                    return
                if state is not O.AWAITING_PAYMENT and state is not O.CLOSED:
                    if order.id in self.unsettled:
                        self.show(order, "order_paid")  # paid meanwhile: the app shows it
                    return
                if method == "bnpl":
                    if state is O.CLOSED:
                        self.show(order, "order_closed")
                        return
                    outcome = yield from self.call(lambda reply: self.bnpl.authorize(order, reply))
                else:
                    previous = trade_id
                    trade_id = policies.retry_trade_no(app.retry_trade_no, order.id, attempt, trade_id)
                    if state is O.CLOSED and trade_id != previous:
                        # A new trade needs the order service, which refuses a closed order; an open
                        # cashier page (or QR code) still pays the trade it was opened with.
                        self.show(order, "order_closed")
                        return
                    trade = self.gw.create_trade(trade_id, order, order.user)
                    if attempt:
                        w.emit("user.retry", "user", order.id, trade=trade_id, attempt=attempt)
                    w.emit("user.pay", "user", order.id, trade=trade_id, attempt=attempt)
                    outcome = yield from self.call(lambda reply: self.gw.pay(trade, reply))
                self.show(order, _SCREEN[outcome])
                if outcome == "succeeded":
                    return
                if outcome in ("unknown", "in_progress", "timeout"):
                    settled = yield from self.poll(order)
                    if settled:
                        return
        finally:
            w.release(order.id)
            if order.state in ORDER_PAID_STATES:
                self.unsettled.discard(order.id)  # already paid: nothing more to push

    def call(self, send):
        """One request through the app: network both ways, at most ``app.request_timeout``."""
        w = self.w
        env = w.env
        done = env.event()

        def reply(outcome: str) -> None:
            w.at(w.s_net(), lambda: done.triggered or done.succeed(outcome))

        w.at(w.s_net(), lambda: send(reply))
        w.at(w.p.app.request_timeout, lambda: done.triggered or done.succeed("timeout"))
        outcome = yield done
        return outcome

    def poll(self, order):
        """After 'unknown', the app polls the order page; True once it shows paid or closed."""
        w = self.w
        interval, duration = w.p.user.poll_interval, w.p.user.poll_duration
        waited = 0.0
        while waited < duration:
            yield w.env.timeout(interval)
            waited += interval
            state = order.state
            if state is O.PAID or state is O.SHIPPED or state is O.DELIVERED or state is O.COMPLETED:
                self.show(order, "order_paid")
                return True
            if state is O.CLOSED:
                self.show(order, "order_closed")
                return True
        return False
