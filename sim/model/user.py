"""Buyers and the app: arrivals, the choice of payment method, paying, waiting, retrying, polling.

Buyers arrive by a non-homogeneous Poisson process (``load.arrival_rate × load.profile``). Each one
draws what a buyer decides — method, amount, merchant, how long they take to pay, whether they walk
away, whether and after how long they retry — from a stream of their own
(:meth:`~sim.model.world.World.buyer_rng`), so two compared settings meet the same buyers (common
random numbers), however many retries a setting causes for some of them. The app is the buyer's window on the servers: every request crosses the network
(``app.network_latency``), waits at most ``app.request_timeout``, and what the app *shows*
(``app.shown``) is recorded, because what the buyer was told is half of every anomaly.
"""

from __future__ import annotations

from sim.domain import policies
from sim.domain.arrivals import arrival_steps
from sim.domain.population import after_sales_stream, draw_account, draw_after_sales, draw_buyer
from sim.domain.states import ORDER_PAID_STATES, OrderState
from sim.model.world import Answer, World

O = OrderState
_ENDED = frozenset({O.REFUND_PENDING, O.REFUNDED})
_UNSETTLED = frozenset({"payment_failed", "payment_unknown", "order_closed", "refund_pending", "refund_failed"})
_REFUND_SCREENS = frozenset({"refund_pending", "refund_failed", "refunded"})
_SCREEN = {"succeeded": "payment_succeeded", "failed": "payment_failed", "closed": "payment_failed",
           "unknown": "payment_unknown", "in_progress": "payment_unknown", "timeout": "payment_unknown",
           "rejected": "payment_failed", "overloaded": "payment_failed"}  # refused at the door: nothing was done
_RESEND = frozenset({"timeout", "rejected", "overloaded"})
TIMED_OUT = "timeout"  # an order-status read that got no answer in time


def arrivals(w: World, start_buyer):
    """Poisson arrivals following the profile (steps and ramps) until the horizon: the schedule the live
    plan replays too (``sim.domain.arrivals``)."""
    # Run as a process for its first step (as before), then as a chain of bare callbacks: each wait is
    # the queue entry ``timeout(step.delay)`` would be, (now + delay, NORMAL, eid), without the Timeout
    # object and the generator's resumption.
    call_at = w.env.call_at
    steps = arrival_steps(w.p.load.rate_pieces(w.horizon), w.rng["arrivals"].expovariate)

    def arrive() -> None:
        start_buyer()
        go()

    def go() -> None:
        for step in steps:
            call_at(step.delay, arrive if step.arrive else go)
            return

    go()
    return
    yield  # (a generator: started with env.process)


class Buyers:
    def __init__(self, w: World, order_service, gateway, bnpl) -> None:
        self.w = w
        self.os = order_service
        self.gw = gateway
        self.bnpl = bnpl
        self.seq = 0
        self.offered = 0  # buyers arriving in the measurement window
        self.confirmed = 0  # pay calls answered 'succeeded' within the app's timeout, in the window: goodput
        self.create_failed = 0  # buyers who got no order back
        self.resends = 0  # automatic re-sends of a request (app.request_retry_schedule)
        self.unsettled: set[str] = set()  # orders whose last payment screen said failed, unknown or closed
        w.on_forget.append(self.unsettled.discard)
        self.push_net = w.p.app.network_latency.sampler(w.rng["push"])
        pm = w.p.user.payment_methods
        self.cum = (pm.wallet, pm.wallet + pm.card)
        pop = w.p.merchant.population
        self.merchants = [m.name for m in pop]
        self.profiles = {m.name: m for m in pop}
        self.merchant_cum = []
        acc = 0.0
        for m in pop:
            acc += m.share
            self.merchant_cum.append(acc)

    def start(self) -> None:
        w = self.w
        u = w.p.user
        self.seq += 1
        r = w.buyer_rng(self.seq)  # this buyer's own stream, for every decision of theirs
        (method, amount, pay_delay, walks_away, cancels, retry_draws, merchant, balance, partial,
         account) = draw_buyer(u, r, self.cum, self.merchants, self.merchant_cum)
        user = f"u{self.seq}" if account is None else f"a{account}"  # a returning buyer: one of the accounts
        wish = None
        if u.after_sales_probability > 0:
            wish = draw_after_sales(u, self.profiles[merchant],
                                    after_sales_stream(w.scenario.run.seed, w.replication, self.seq))
        if w.warmup <= w.env.now < w.horizon:
            self.offered += 1
        w.env.process(self.checkout(user, amount, method, merchant, balance, pay_delay, walks_away,
                                    cancels, retry_draws, r, partial, wish))

    def account(self, user: str, method: str, balance: float | None) -> None:
        """Open ``user``'s account the first time they order (when any account setting is on).

        A new buyer of each arrival (``user.accounts`` off) keeps the wallet balance drawn with their
        other decisions; a returning buyer's account is drawn once from the account's own stream.
        """
        w = self.w
        u = w.p.user
        if user in w.accounts or not (u.accounts is not None or u.wallet_balance is not None
                                      or u.card_limit is not None or u.daily_limit is not None
                                      or u.risk_flagged > 0 or w.p.bank.risk_freeze_after is not None
                                      or w.p.bank.risk_hold_after is not None):
            return
        r = w.account_rng(user)
        if u.accounts is None and method != "wallet" and not (method == "bnpl"
                                                              and w.p.bnpl.deduction_source != "draw"):
            balance = None  # a one-order card or BNPL buyer: the wallet is never asked (a BNPL one is when
            # bnpl.deduction_source "wallet" or "wallet_then_card": the deduction takes the money from it)
        # a returning buyer's balance is drawn once from the account's own stream (draw_balance)
        w.accounts[user] = draw_account(u, r, balance=balance, draw_balance=u.accounts is not None)

    def checkout(self, user, amount, method, merchant, balance, pay_delay, walks_away, cancels, retry_draws, r,
                 partial=None, wish=None):
        """The buyer asks the order service for an order, then (with it) goes on to pay."""
        w = self.w
        if w.p.order_service.create_time is None:  # creation free and instant (no request)
            order = self.os.create(user, amount, method, merchant)
            if method != "bnpl" and w.p.gateway.trade_creation == "on_order":
                self.gw.create_trade(policies.retry_trade_no(w.p.app.retry_trade_no, order.id, 0, None),
                                     order, order.user)
        else:
            order = yield from self.create_order(user, amount, method, merchant, r)
        if order is None or order.id not in w.orders:
            self.create_failed += 1  # no order came back: the buyer leaves (one may exist, unseen)
            return
        self.account(order.user, method, balance)
        if partial is not None and method != "bnpl":
            self.os.partial_wishes[order.id] = partial
        if wish is not None:
            self.os.merchant.after_sales_wishes[order.id] = wish  # sent once the order is paid (if it is)
        w.hold(order.id)
        trade_id = None
        if method != "bnpl":
            # The pay link (out_trade_no) exists from now on. With gateway.trade_creation = on_order
            # the gateway trade (prepay) does too (made by the order service's create), living
            # gateway.trade_ttl however long the order lives; with on_open it is created when the
            # buyer opens the page or scans the code.
            trade_id = policies.retry_trade_no(w.p.app.retry_trade_no, order.id, 0, None)
        yield from self.buyer(order, method, trade_id, pay_delay, walks_away, cancels, retry_draws, r)

    def create_order(self, token, amount, method, merchant, r):
        """The create-order request (re-sent on the app's schedule); the order, or None."""
        w = self.w
        app, osp, g = w.p.app, w.p.order_service, w.p.gateway
        net = app.network_latency
        answer = None
        attempt = 0
        while True:
            # This buyer's own draws (their stream): the request's work is the same in every setting.
            sizes = (osp.create_time.draw(r), net.draw(r),
                     g.create_time.draw(r) if g.create_time is not None else None, net.draw(r))
            there, back = net.draw(r), net.draw(r)
            answer = yield from self.request(
                lambda reply, deadline: self.os.request_create(
                    token, token, amount, method, merchant, sizes, deadline, lambda st, o: reply((st, o))),
                there, back)
            status = answer[0] if isinstance(answer, tuple) else answer
            if status == "ok":
                return answer[1]
            attempt += 1
            gap = policies.resend_delay(app.request_retry_schedule.gaps, attempt)
            if gap is None:
                return None
            self.resends += 1
            yield w.env.timeout(gap)

    def request(self, send, there: float, back: float):
        """One request and its answer: ``there`` and ``back`` on the network, at most ``app.request_timeout``.

        ``send(reply, deadline)`` delivers it; ``deadline`` is when the app stops waiting (the server
        may enforce it). Returns the answer, or ``"timeout"``.
        """
        w = self.w
        env = w.env
        done = Answer(env)
        settle = done.settle
        timeout = w.p.app.request_timeout
        deadline = policies.request_deadline(env._now, timeout)

        def reply(outcome) -> None:
            w.at(back, lambda: settle(outcome))

        w.at(there, lambda: send(reply, deadline))
        w.at(timeout, lambda: settle("timeout"))
        outcome = yield done
        return outcome

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

    def push_refund(self, order, screen: str) -> None:
        """A refund of the buyer's payment moved on: the app's push says ``refund_pending``,
        ``refund_failed`` or ``refunded``, whatever the buyer was told before (a payment shown
        'succeeded' whose order was closed is refunded too). Its latency comes from a stream of its
        own, so a refund policy does not shift anyone's payment draws."""
        w = self.w
        w.hold(order.id)
        w.at(self.push_net(), lambda: (self.show(order, screen), w.release(order.id)))

    def buyer(self, order, method, trade_id, pay_delay, walks_away, cancels, retry_draws, r):
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
                    yield env.timeout(u.retry_delay.draw(r))
                state = order.state
                if attempt and app.order_page_request:
                    # The app reloads the order page: what the replica says, when it answers.
                    page = yield from self.read_status(order, r)
                    if page == TIMED_OUT:
                        self.show(order, "payment_unknown")  # the page did not load: this try is spent
                        continue
                    state = O.AWAITING_PAYMENT if page is None else page  # not replicated yet: as created
                if state in _ENDED:
                    state = O.CLOSED  # refund pending or refunded: to the cashier, a closed order
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
                    outcome = yield from self.call(lambda reply, _deadline: self.bnpl.authorize(order, reply))
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
                    outcome = yield from self.call(lambda reply, deadline: self.gw.pay(trade, reply, deadline))
                self.show(order, _SCREEN[outcome])
                if outcome == "succeeded":
                    if w.warmup <= env.now < w.horizon:
                        self.confirmed += 1
                    return
                if outcome in ("unknown", "in_progress", "timeout"):
                    settled = yield from self.poll(order, r)
                    if settled:
                        return
        finally:
            w.release(order.id)
            if order.state in ORDER_PAID_STATES:
                self.unsettled.discard(order.id)  # already paid: nothing more to push

    def call(self, send):
        """One request through the app: network both ways, at most ``app.request_timeout``; re-sent on
        ``app.request_retry_schedule`` while it times out or is refused (the same request again)."""
        w = self.w
        attempt = 0
        while True:
            outcome = yield from self.request(send, w.s_net(), w.s_net())
            if outcome not in _RESEND:
                return outcome
            attempt += 1
            gap = policies.resend_delay(w.p.app.request_retry_schedule.gaps, attempt)
            if gap is None:
                return outcome
            self.resends += 1
            yield w.env.timeout(gap)

    def poll(self, order, r):
        """After 'unknown', the app polls the order page; True once it shows paid or closed.

        Each poll is a request (``app.network_latency`` each way, drawn from the buyer's stream, at most
        ``app.request_timeout``) answered from a read replica ``order_service.read_lag`` behind the
        primary: the page can still say 'awaiting payment' after the order was paid.
        """
        w = self.w
        interval, duration = w.p.user.poll_interval, w.p.user.poll_duration
        waited = 0.0
        while waited < duration:
            yield w.env.timeout(interval)
            waited += interval
            state = yield from self.read_status(order, r)
            if state in _ENDED:  # a late payment being refunded: the order page says so
                self.show(order, "refund_pending" if state is O.REFUND_PENDING else "refunded")
                return True
            if state is O.PAID or state is O.SHIPPED or state is O.DELIVERED or state is O.COMPLETED:
                self.show(order, "order_paid")
                return True
            if state is O.CLOSED:
                self.show(order, "order_closed")
                return True
        return False

    def read_status(self, order, r):
        """One order-status request: the replica's state when it arrives (None: not on the replica
        yet), or ``TIMED_OUT`` when no answer came within ``app.request_timeout``.

        With ``order_service.read_time`` on, the read is served by an order-service worker (queueing
        with creates and notifications) and may be refused or dropped; else it costs the pool nothing.
        """
        w = self.w
        app = w.p.app
        there = app.network_latency.draw(r)
        back = app.network_latency.draw(r)
        read_time = w.p.order_service.read_time
        if read_time is not None:
            lag = w.p.order_service.read_lag.draw(r)
            service = read_time.draw(r)
            answer = yield from self.request(
                lambda reply, deadline: self.os.request_status(order, lag, service, deadline, reply), there, back)
            return TIMED_OUT if answer in _RESEND else answer
        if there + back > app.request_timeout:
            yield w.env.timeout(app.request_timeout)
            return TIMED_OUT
        yield w.env.timeout(there)
        state = w.replica_state(order, w.p.order_service.read_lag.draw(r))
        yield w.env.timeout(back)
        return state
