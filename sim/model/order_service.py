"""The platform's order service: orders, the close job, notifications and late payments.

The close job fires at ``order_service.order_ttl`` (a per-order timer) or on a periodic sweep (the
``mall`` pattern) and follows ``order_service.close_policy`` through the functions of
``sim/domain/policies.py`` — asking the gateway, over its queue, when the policy says so. Payment
notifications queue for the service's own workers; when it is too busy to answer within the gateway's
ack timeout, the gateway counts the attempt as failed and retries later, while the service still
processes what it already received.

Both the notification handler and the close job are read-then-write: the handler reads the order when
a worker takes the notification and writes when its work is done (``order_service.service_time``
later); the close job reads the expired order and writes it closed ``order_service.close_write_delay``
(or a gateway round trip) later. With ``order_service.order_lock`` a writer whose order changed since
its read reads it again (:func:`sim.domain.policies.must_reread`); without it, it writes what it
decided from the stale read — the lost update, and a duplicate notification fulfilled twice.

With ``order_service.create_time`` on, creating an order is a request too: it takes a worker that long and, when the
gateway's prepay is a request (``gateway.create_time``), holds that worker until the gateway answers
or ``order_service.gateway_timeout`` passes — a slow gateway fills this pool. The request carries the
buyer's checkout token, so a re-sent create returns the order already made. ``queue_limit``,
``deadlines`` and ``load_shedding`` act as on the gateway (:class:`~sim.model.station.Station`).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from sim.domain import policies
from sim.domain.after_sales import BnplRemedy
from sim.domain.entities import Order, Trade
from sim.domain.policies import NotifyAction, Step
from sim.domain.states import OrderState, TradeState
from sim.model.station import SHED, Station
from sim.model.world import World

O, T = OrderState, TradeState
RETRY_CLOSE_AFTER = 60.0  # an expired order whose payment is in flight is looked at again after this


class OrderService:
    def __init__(self, w: World) -> None:
        self.w = w
        self.station = Station(w.env, "order_service", w.p.order_service.workers, w.warmup, w.horizon)
        self.configure(w.p)
        self.partial_wishes: dict[str, float] = {}  # order -> delay after completion of its buyer's partial refund
        w.on_forget.append(lambda oid: self.partial_wishes.pop(oid, None))
        self.tokens: dict[str, Order] = {}  # buyer's checkout token -> the order a create made for it
        self.token_of: dict[str, str] = {}  # order -> token (dropped with the order)
        w.on_forget.append(self._drop_token)
        self.gateway = None
        self.merchant = None
        self.bnpl = None  # the BNPL provider: after-sales of pay-after-use orders (refund_order)
        self.app = None  # pushes to the buyer's app
        # (expires_at, order id) of every order whose close job has not run yet, in creation order.
        # Orders paid meanwhile are skipped when they come up (a deque: popping the front is O(1)).
        self.due: deque[tuple[float, str]] = deque()
        self.unpaid: set[str] = set()  # orders holding their 'awaiting payment' reference
        self.seq = 0
        self._wake = None  # the close-timer process sleeps on this while no order awaits payment
        if w.p.order_service.close_mode == "sweep":
            w.env.process(self._sweeper())
        else:
            w.env.process(self._timers())

    def configure(self, p) -> None:
        """The pool and overload policies of ``p`` (a fault window may change them)."""
        o = p.order_service
        self.station.configure(o.workers, o.queue_limit, o.deadlines, o.load_shedding, o.shed_limit)

    def _drop_token(self, order_id: str) -> None:
        token = self.token_of.pop(order_id, None)
        if token is not None:
            self.tokens.pop(token, None)

    def request_create(self, token: str, user: str, amount: int, method: str, merchant: str, sizes: tuple,
                       deadline: float, reply: Callable[[str, Order | None], None]) -> None:
        """A create-order request from the app: ``reply(status, order)`` with status ``ok``, ``rejected``
        (queue full) or ``overloaded`` (503); a request dropped past its deadline is never answered.

        ``sizes`` = (create time, network to the gateway, prepay time, network back), drawn from the
        buyer's own stream so the buyer's work is the same in every compared setting.
        """
        w = self.w
        create_time, there, prepay_time, back = sizes

        def serve(_wait: float, release: Callable[[], None]) -> None:
            order = self.tokens.get(token)
            if order is not None:  # a re-sent request: the order exists already
                release()
                reply("ok", order)
                return
            order = self.create(user, amount, method, merchant)
            self.tokens[token] = order
            self.token_of[order.id] = token
            if method == "bnpl" or w.p.gateway.trade_creation != "on_order":
                release()
                reply("ok", order)
                return
            trade_id = policies.retry_trade_no(w.p.app.retry_trade_no, order.id, 0, None)
            if prepay_time is None:
                self.gateway.create_trade(trade_id, order, order.user)  # instant, no worker
                release()
                reply("ok", order)
                return
            # The prepay call: this worker waits for the gateway, at most gateway_timeout.
            w.hold(order.id)
            answered = [False]
            timeout = w.p.order_service.gateway_timeout

            def finish() -> None:
                if answered[0]:
                    return
                answered[0] = True
                release()
                reply("ok", order)  # without a trade (timeout, refused), it is created when the buyer pays
                w.release(order.id)

            def answer(_status: str) -> None:
                w.at(back, finish)

            w.at(there, lambda: self.gateway.prepay(trade_id, order, prepay_time, answer, w.env.now - there + timeout))
            w.at(timeout, finish)

        res = self.station.submit(create_time, serve, deadline=deadline, held=True)
        if res < 0:
            reply("overloaded" if res == SHED else "rejected", None)

    def create(self, user: str, amount: int, method: str, merchant: str = "m1") -> Order:
        w = self.w
        self.seq += 1
        oid = f"r{w.replication}-o{self.seq}"
        now = w.env.now
        ttl = w.p.order_service.order_ttl
        order = Order(oid, user, merchant, amount, method, now, now + ttl)
        w.orders[oid] = order
        w.emit("order.created", "order_service", oid, user=user, amount=amount, method=method,
               expires_at=order.expires_at, merchant=merchant)
        w.hold(oid)  # released when the order leaves awaiting_payment
        self.unpaid.add(oid)
        self.due.append((order.expires_at, oid))
        if self._wake is not None:
            self._wake.succeed()
            self._wake = None
        return order

    def _leave_awaiting(self, order: Order) -> None:
        if order.id in self.unpaid:
            self.unpaid.discard(order.id)
            self.w.release(order.id)

    # -- closing -----------------------------------------------------------------------------------
    def _timers(self):
        """Per-order close timers, as one process: each order expires at its own ``expires_at``.

        Equivalent to arming one timer per order at creation, but orders paid in time never cost a
        timer event: ``due`` is in creation order, so the next order to expire is always first.
        (A TTL shortened by a fault window lets later orders expire before earlier ones; they are then
        closed when the earlier ones are, at most one old TTL late.)
        """
        w = self.w
        env = w.env
        while True:
            due = self.due
            if not due:
                self._wake = env.event()
                yield self._wake
                continue
            expires_at, oid = due[0]
            if oid not in self.unpaid:
                due.popleft()
                continue
            if expires_at > env.now:
                yield env.timeout(expires_at - env.now)
                continue
            due.popleft()
            self.expire(w.orders[oid])

    def _sweeper(self):
        w = self.w
        interval = w.p.order_service.sweep_interval
        while True:
            yield w.env.timeout(interval)
            now = w.env.now
            due = self.due
            while due and due[0][0] <= now:
                _expires_at, oid = due.popleft()
                if oid in self.unpaid:
                    self.expire(w.orders[oid])

    def expire(self, order: Order) -> None:
        """The close job reached ``order``: read it, follow the close policy, write."""
        w = self.w
        if order.state is not O.AWAITING_PAYMENT or order.id not in w.orders:
            return
        read = order.version  # the close job's read: 'awaiting payment' at this version
        step = policies.on_order_expiry(w.p.order_service.close_policy, order.state)
        if step is Step.CLOSE_ORDER:
            delay = w.s_close_write()
            if delay <= 0.0:
                self._commit(order, read, step)
            else:
                w.hold(order.id)
                w.at(delay, lambda: (self._commit(order, read, step), w.release(order.id)))
        elif step is Step.QUERY_TRADE:
            self._via_gateway(order, self.gateway.query,
                              lambda states: self._after_query(order, states, read))
        elif step is Step.CLOSE_TRADE:
            self._via_gateway(order, self.gateway.close,
                              lambda results: self._after_close_trade(order, results, read))

    def _still_awaiting(self, order: Order, read: int) -> bool:
        """The close job's view at its write: re-read under the lock, else what it read (awaiting)."""
        if policies.must_reread(self.w.p.order_service.order_lock, read, order.version):
            return order.state is O.AWAITING_PAYMENT
        return True

    def _commit(self, order: Order, read: int, step: Step) -> None:
        if self._still_awaiting(order, read):
            self._apply(order, step)

    def _via_gateway(self, order: Order, call: Callable, then: Callable) -> None:
        """A job's call to the gateway (the close job's query or close, a refund): ``then(answer)`` when
        the answer is back. With ``order_service.job_calls_take_worker`` the call holds one of the
        service's workers for the round trip (no service time of its own: the worker waits on the
        gateway); refused at the door (queue full, shed), the job tries again ``RETRY_CLOSE_AFTER`` later."""
        w = self.w
        w.hold(order.id)
        if not w.p.order_service.job_calls_take_worker:
            def back(answer) -> None:
                w.at(w.s_os_net(), lambda: (then(answer), w.release(order.id)))

            w.at(w.s_os_net(), lambda: call(list(order.trades), back))
            return

        def serve(_wait: float, release: Callable[[], None]) -> None:
            def back(answer) -> None:
                w.at(w.s_os_net(), lambda: (release(), then(answer), w.release(order.id)))

            w.at(w.s_os_net(), lambda: call(list(order.trades), back))

        if self.station.submit(0.0, serve, held=True) < 0:
            w.at(RETRY_CLOSE_AFTER, lambda: (self._via_gateway(order, call, then), w.release(order.id)))

    def _after_query(self, order: Order, states: list[TradeState] | None, read: int) -> None:
        if not self._still_awaiting(order, read):
            return
        if states is None:  # the gateway refused the query (overloaded): look again later
            self._apply(order, Step.RETRY_LATER)
            return
        # Several trades (retries with new numbers): any paid one pays the order; any in flight waits.
        if any(s is T.SUCCEEDED for s in states):
            step = Step.MARK_PAID
        elif any(s in (T.PROCESSING, T.UNKNOWN) for s in states):
            step = Step.RETRY_LATER
        else:
            step = policies.after_trade_query(states[0] if states else None)
        self._apply(order, step)

    def _after_close_trade(self, order: Order, results: list[str] | None, read: int) -> None:
        if not self._still_awaiting(order, read):
            return
        if results is None:  # the gateway refused the close (overloaded): try again later
            self._apply(order, Step.RETRY_LATER)
            return
        if "already_paid" in results:
            step = Step.MARK_PAID
        elif "in_progress" in results or "too_early" in results:
            step = Step.RETRY_LATER
        else:
            step = policies.after_trade_close("closed" if results else "no_trade")
        self._apply(order, step)

    def _apply(self, order: Order, step: Step) -> None:
        w = self.w
        if step is Step.MARK_PAID:
            paid = next((t for t in order.trades if w.trades[t].state is T.SUCCEEDED), order.trades[0])
            self.mark_paid(order, paid)
        elif step is Step.RETRY_LATER:
            w.hold(order.id)
            w.at(RETRY_CLOSE_AFTER, lambda: (self.expire(order), w.release(order.id)))
        elif step is Step.CLOSE_ORDER:
            self.close(order, "ttl")
        elif step is Step.CLOSE_ORDER_THEN_TRADE:
            self.close(order, "ttl")
            # The buyer can still pay between the query's answer and this close reaching the gateway.
            self._via_gateway(order, self.gateway.close, lambda _results: None)

    def close(self, order: Order, reason: str) -> None:
        w = self.w
        blind = not w.p.order_service.order_lock
        order.close(reason, w.p.order_service.release_stock_on_close, blind=blind)
        w.emit("order.closed", "order_service", order.id, reason=reason, stock_released=order.stock_released)
        self._leave_awaiting(order)

    def mark_paid(self, order: Order, trade: str, agreement: bool = False) -> None:
        w = self.w
        order.mark_paid(trade, blind=not w.p.order_service.order_lock)
        if agreement:
            w.emit("order.paid", "order_service", order.id, agreement=trade)
        else:
            w.emit("order.paid", "order_service", order.id, trade=trade)
        self._leave_awaiting(order)
        self.app.push(order, "order_paid")
        self.merchant.fulfil(order)  # every 'order paid' the merchant hears starts a fulfilment

    def reopen_with(self, order: Order, trade: str, actor: str) -> None:
        """A closed order filled in with the debit that paid it (reconciliation, customer service)."""
        order.mark_paid(trade)
        self.w.emit("order.reopened", actor, order.id, trade=trade, stock_released=order.stock_released)

    # -- notifications -------------------------------------------------------------------------------
    def receive_notification(self, trade: Trade, handled: Callable[[float], None],
                             deadline: float = float("inf"), refused: Callable[[], None] | None = None) -> None:
        """A 'payment succeeded' notification arrived; ``handled(now)`` when it has been processed.

        The handler reads the order when a worker takes it and writes when its work is done.
        ``deadline``: when the gateway stops waiting for the acknowledgement (with deadlines on, a
        notification taken later is dropped: ``refused()`` then runs, as it does when it is refused).
        """
        w = self.w
        read: list = [None]

        def started() -> None:
            order = w.orders.get(trade.order)
            if order is not None:
                read[0] = (order.state, order.version, order.paid_trade)

        if refused is None:
            refused = lambda: handled(float("inf"))  # noqa: E731  (never acknowledged)
        if self.station.submit(w.s_os_service(), lambda _wait: self._on_notification(trade, handled, read[0]), started,
                               deadline=deadline, dropped=refused) < 0:
            refused()

    def _on_notification(self, trade: Trade, handled: Callable[[float], None], read) -> None:
        w = self.w
        order = w.orders.get(trade.order)
        if order is not None and read is not None:
            state, version, paid_trade = read
            if policies.must_reread(w.p.order_service.order_lock, version, order.version):
                state, paid_trade = order.state, order.paid_trade
            other = paid_trade is not None and paid_trade != trade.id
            action = policies.on_payment_notification(state, w.p.order_service.late_payment, other)
            if action is NotifyAction.MARK_PAID:
                self.mark_paid(order, trade.id)
            elif action is NotifyAction.REOPEN:
                order.mark_paid(trade.id, blind=not w.p.order_service.order_lock)  # closed -> paid: revived
                w.emit("order.reopened", "order_service", order.id, trade=trade.id,
                       stock_released=order.stock_released)
                self.app.push(order, "order_paid")
                self.merchant.fulfil(order)
            elif action in (NotifyAction.REFUND_LATE, NotifyAction.REFUND_EXTRA):
                self.refund(order, trade)
        handled(w.env.now)

    def refund(self, order: Order, trade: Trade, attempt: int = 1) -> None:
        """Refund one trade of ``order`` through the gateway; retried on ``order_service.refund_retry_schedule``.

        A closed order goes to ``refund_pending`` (``order.refund_pending``) and, once the money is back
        with the buyer, to ``refunded`` (``order.refunded``); an order paid by another trade keeps its state.
        """
        w = self.w
        if trade.state is not T.SUCCEEDED:
            return
        if order.state is O.CLOSED:
            order.to(O.REFUND_PENDING)
            w.emit("order.refund_pending", "order_service", order.id, trade=trade.id, amount=trade.amount)
            self.app.push_refund(order, "refund_pending")

        def after(result: str) -> None:
            if result == "done" and order.state is O.REFUND_PENDING:
                order.to(O.REFUNDED)
                w.emit("order.refunded", "order_service", order.id, trade=trade.id, amount=trade.amount)
                self.app.push_refund(order, "refunded")
            elif result == "failed":
                gap = policies.refund_delay(w.p.order_service.refund_retry_schedule.gaps, attempt)
                if gap is not None:
                    w.hold(order.id)
                    w.at(gap, lambda: (self.refund(order, trade, attempt + 1), w.release(order.id)))
                elif trade.state is T.SUCCEEDED:
                    # The schedule is spent and the money is still with the platform: a person must act.
                    w.emit("order.refund_failed", "order_service", order.id, trade=trade.id, amount=trade.amount,
                           attempts=attempt, error="refund_failed")
                    self.app.push_refund(order, "refund_failed")

        self._via_gateway(order, lambda _ids, back: self.gateway.refund(trade, back), after)

    def refund_order(self, order: Order, reason: str) -> None:
        """Refund a paid order in full because its after-sales request was accepted (seed 003): the
        order goes to ``refund_pending`` now (cancelled, or refunded for a defect; fulfilment stops at
        its next step) and to ``refunded`` when the money is back, through :meth:`refund` (its latency,
        failures and retries). A pay-after-use order's agreement is cancelled or its collected amount
        refunded by the BNPL provider instead (:meth:`sim.model.bnpl.BnplProvider.after_sales`)."""
        w = self.w
        if order.method == "bnpl":
            self._refund_bnpl(order, reason)
            return
        trade = w.trades.get(order.paid_trade) if order.paid_trade is not None else None
        if trade is None or trade.state is not T.SUCCEEDED:
            return
        order.to(O.REFUND_PENDING)
        w.emit("order.refund_pending", "order_service", order.id, trade=trade.id, amount=trade.amount, reason=reason)
        self.app.push_refund(order, "refund_pending")
        self.refund(order, trade)

    def _refund_bnpl(self, order: Order, reason: str) -> None:
        w = self.w
        ag = w.agreements.get(order.id)
        if ag is None or order.state is O.REFUND_PENDING or order.state is O.REFUNDED:
            return
        remedy = self.bnpl.after_sales(ag)
        if remedy is BnplRemedy.NOTHING:
            return
        order.to(O.REFUND_PENDING)
        w.emit("order.refund_pending", "order_service", order.id, agreement=ag.id, amount=ag.amount, reason=reason,
               remedy=remedy.value)
        self.app.push_refund(order, "refund_pending")
        if remedy is not BnplRemedy.REFUND_WHEN_PAID:
            self.bnpl_refunded(order, ag)

    def bnpl_refunded(self, order: Order, ag) -> None:
        """A pay-after-use order's agreement was cancelled (nothing to return) or its collected amount
        refunded: the order is ``refunded``."""
        if order.state is O.REFUND_PENDING:
            order.to(O.REFUNDED)
            self.w.emit("order.refunded", "order_service", order.id, agreement=ag.id, amount=ag.amount)
            self.app.push_refund(order, "refunded")

    def request_status(self, order: Order, lag: float, service: float, deadline: float,
                       reply: Callable[[object], None]) -> None:
        """An order-status read from the app (``order_service.read_time`` on): a worker takes it for
        ``service`` seconds and answers with the state the replica, ``lag`` behind, holds then
        (None: not there yet); ``rejected`` / ``overloaded`` when refused at the door."""
        w = self.w
        res = self.station.submit(service, lambda _wait: reply(w.replica_state(order, lag)), deadline=deadline)
        if res < 0:
            reply("overloaded" if res == SHED else "rejected")

    def completed(self, order: Order) -> None:
        """The merchant completed ``order``: a buyer who returns part of it asks for that part back."""
        delay = self.partial_wishes.pop(order.id, None)
        if delay is None or order.paid_trade is None:
            return
        w = self.w
        trade = w.trades.get(order.paid_trade)
        if trade is None:
            return
        part = max(1, int(order.amount * w.p.user.partial_refund_share))
        w.hold(order.id)
        w.at(delay, lambda: (self.refund_part(order, trade, part), w.release(order.id)))

    def refund_part(self, order: Order, trade: Trade, part: int, attempt: int = 1) -> None:
        """Refund ``part`` of a completed order's trade (its own refund request number): the order stays
        completed, the trade succeeded with ``refunded`` growing; retried on the refund schedule."""
        w = self.w
        if attempt == 1:
            self.app.push_refund(order, "refund_pending")

        def after(result: str) -> None:
            if result == "done":
                self.app.push_refund(order, "refunded")
            elif result == "failed":
                gap = policies.refund_delay(w.p.order_service.refund_retry_schedule.gaps, attempt)
                if gap is not None:
                    w.hold(order.id)
                    w.at(gap, lambda: (self.refund_part(order, trade, part, attempt + 1), w.release(order.id)))
                else:
                    w.emit("order.refund_failed", "order_service", order.id, trade=trade.id, amount=part,
                           attempts=attempt, error="refund_failed")
                    self.app.push_refund(order, "refund_failed")

        self._via_gateway(order, lambda _ids, back: self.gateway.refund(trade, back, part), after)

    def status(self, order_id: str) -> OrderState | None:
        order = self.w.orders.get(order_id)
        return order.state if order is not None else None
