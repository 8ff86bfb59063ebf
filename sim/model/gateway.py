"""The payment gateway: trades, a worker pool, the bank call with its timeout, the notifier.

Requests (pay, query, close, refund) queue for ``gateway.workers`` and take ``gateway.service_time``.
A pay request calls the bank and waits at most ``gateway.timeout``: past it the trade is ``unknown``
and the gateway re-queries the bank on ``gateway.bank_query_schedule``. Once the gateway knows a
trade succeeded, it notifies the order service on ``gateway.notify_schedule`` until acknowledged —
each attempt with its latency, loss and duplication; an attempt made while the order service's
notification endpoint is down (``order_service.notify_outage_every``, :mod:`sim.domain.outages`) fails
and waits for the next one on the schedule. A trade lives ``gateway.trade_ttl``,
independently of the order it pays for: that gap is where paid-but-closed comes from.

A pay request holds its worker for the whole bank call (until the bank answers or ``gateway.timeout``
fires), so a congested bank fills the gateway's pool and the queue in front of it. With
``gateway.deadlines`` a pay whose app has given up by the time a worker takes it is dropped (no bank
call); with ``gateway.load_shedding`` requests beyond ``gateway.shed_limit`` in flight are answered 503
(``overloaded``); a full queue (``gateway.queue_limit``) answers ``rejected``.
"""

from __future__ import annotations

from typing import Callable

from sim.domain import policies
from sim.domain.calendar import working_days_delay
from sim.domain.entities import Trade
from sim.domain.ledger import REFUND, transfer
from sim.domain.outages import Outages
from sim.domain.states import TradeState
from sim.model import bank as B
from sim.model.station import SHED, Station
from sim.model.world import World

T = TradeState
_FAILED_REASON = {B.DECLINED: "declined", B.RISK_BLOCKED: "risk_blocked", B.LIMIT: "limit",
                  B.EXPIRED: "expired", B.BUSY: "error"}
_INF = float("inf")


class Gateway:
    def __init__(self, w: World, bank: B.Bank) -> None:
        self.w = w
        self.bank = bank
        self.station = Station(w.env, "gateway", w.p.gateway.workers, w.warmup, w.horizon)
        self.configure(w.p)
        self.order_service = None  # wired by the model (notifications go there)
        self.notify_seq = 0
        self.refunding: set[str] = set()  # trades whose accepted refund has not landed yet
        # The order service's notification endpoint's outages (order_service.notify_outage_every), drawn
        # once for the run from a stream of their own; None when off.
        self.outages = Outages.of(w.scenario.order_service, w.scenario.run.seed, w.replication, w.end)
        self.refused_by_outage = 0  # delivery attempts that met the endpoint down (orders of the window)

    def configure(self, p) -> None:
        """The pool and overload policies of ``p`` (a fault window may change them)."""
        g = p.gateway
        self.station.configure(g.workers, g.queue_limit, g.deadlines, g.load_shedding, g.shed_limit)

    # -- trades --------------------------------------------------------------------------------------
    def create_trade(self, trade_id: str, order, user: str) -> Trade:
        """Create (or, for a reused trade number, return) the gateway trade; instantaneous.

        The trade lives ``gateway.trade_ttl`` from its creation — or, when the order service passes
        ``time_expire`` (``order_service.pass_time_expire``), until the order's own expiry.
        """
        w = self.w
        trade = w.trades.get(trade_id)
        if trade is None:
            now = w.env.now
            expires_at = order.expires_at if w.p.order_service.pass_time_expire else now + w.p.gateway.trade_ttl
            trade = Trade(trade_id, order.id, user, order.amount, expires_at, now)
            w.trades[trade_id] = trade
            order.trades.append(trade_id)
            w.emit("trade.created", "gateway", order.id, trade=trade_id, amount=order.amount,
                   expires_at=trade.expires_at)
        return trade

    def prepay(self, trade_id: str, order, service_time: float, reply: Callable[[str], None],
               deadline: float = _INF) -> None:
        """The order service asks for the trade (prepay, ``gateway.create_time``): ``reply('ok')`` once it
        exists; ``rejected`` / ``overloaded`` when refused. A request dropped past its deadline is never
        answered (its caller has stopped waiting)."""
        w = self.w
        w.hold(order.id)

        def serve(_wait: float) -> None:
            if order.id in w.orders:
                self.create_trade(trade_id, order, order.user)
            reply("ok")
            w.release(order.id)

        res = self.station.submit(service_time, serve, deadline=deadline, dropped=lambda: w.release(order.id))
        if res < 0:
            w.release(order.id)
            reply("overloaded" if res == SHED else "rejected")

    def pay(self, trade: Trade, reply: Callable[[str], None], deadline: float = _INF) -> None:
        """A buyer's pay request reached the gateway; ``reply`` gets the synchronous answer.

        ``deadline``: when the app stops waiting. The worker that takes the request is held until the
        answer is known (the bank's, or the timeout's).
        """
        w = self.w
        w.hold(trade.order)  # a queued pay request can still debit the buyer, whatever the app does meanwhile

        def serve(_wait: float, release: Callable[[], None]) -> None:
            self._pay(trade, reply, release)
            w.release(trade.order)

        res = self.station.submit(w.s_gw_service(), serve, deadline=deadline, held=True,
                                  dropped=lambda: w.release(trade.order))
        if res < 0:
            w.release(trade.order)
            reply("overloaded" if res == SHED else "rejected")

    def _pay(self, trade: Trade, reply: Callable[[str], None], release: Callable[[], None]) -> None:
        w = self.w
        s = trade.state
        if s is T.SUCCEEDED or s is T.REFUNDED:
            release()
            reply("succeeded")  # same trade number: idempotent, no second debit
            return
        if s is T.PROCESSING or s is T.UNKNOWN:
            release()
            reply("in_progress")
            return
        if s is T.CLOSED:
            release()
            reply("closed")
            return
        if w.env.now >= trade.expires_at:
            release()
            trade.to(T.CLOSED)
            w.emit("trade.closed", "gateway", trade.order, trade=trade.id)
            reply("closed")
            return
        trade.to(T.PROCESSING)
        order = trade.order
        w.hold(order)
        call = [False]  # answered (by the bank or by the timeout)

        def on_bank(outcome: str) -> None:
            if call[0]:
                # A late response after the timeout: it still tells the gateway what happened, unless
                # the timeout closed the connection it would come back on (late_response = dropped).
                if w.p.gateway.late_response == "dropped":
                    return
                if outcome == B.APPROVED:
                    self._late_approval(trade)
                elif trade.state in (T.UNKNOWN, T.FAILED):
                    self._resolve(trade, outcome)
                return
            call[0] = True
            release()
            self._resolve(trade, outcome)
            reply("succeeded" if outcome == B.APPROVED else "failed")
            w.release(order)

        def on_timeout() -> None:
            if call[0]:
                return
            call[0] = True
            release()
            self.station.timeouts += 1
            trade.to(T.UNKNOWN)
            w.emit("trade.unknown", "gateway", order, trade=trade.id)
            reply("unknown")
            self._query_bank(trade, 0)  # holds the order while it queries
            w.release(order)

        timeout = w.p.gateway.timeout
        eta = self.bank.debit(trade, on_bank, w.env.now + timeout)
        if eta is None or eta >= timeout:
            w.at(timeout, on_timeout)

    def _resolve(self, trade: Trade, outcome: str) -> None:
        """Apply what the bank said about ``trade`` (from a response, a late response or a query)."""
        w = self.w
        if outcome == B.APPROVED:
            if trade.state is T.SUCCEEDED or trade.state is T.REFUNDED:
                return
            trade.to(T.SUCCEEDED)
            w.emit("trade.succeeded", "gateway", trade.order, trade=trade.id, amount=trade.amount)
            self.notify(trade)
        elif outcome in _FAILED_REASON and trade.state is not T.FAILED:
            trade.to(T.FAILED)
            w.emit("trade.failed", "gateway", trade.order, trade=trade.id, reason=_FAILED_REASON[outcome])

    def _late_approval(self, trade: Trade) -> None:
        """The bank approved a debit after the gateway stopped waiting (``gateway.late_approval``)."""
        action = policies.on_late_approval(trade.state, self.w.p.gateway.late_approval)
        if action == "apply":
            self._resolve(trade, B.APPROVED)
        elif action == "reverse":
            self.reverse(trade, "gateway")

    def confirm_debit(self, trade: Trade, actor: str) -> None:
        """The bank's record shows a debit the gateway has as failed or unknown: correct it (succeeded)."""
        trade.to(T.SUCCEEDED)
        self.w.emit("trade.succeeded", actor, trade.order, trade=trade.id, amount=trade.amount)

    def reverse(self, trade: Trade, actor: str) -> bool:
        """Return a debit made on a trade that is closed: money back to the buyer, the trade stays closed."""
        w = self.w
        if trade.state is not T.CLOSED or trade.refunded:
            return False
        trade.refunded = trade.amount
        txn = transfer(w.next_txn("v"), REFUND, "clearing", f"user:{trade.user}", trade.amount)
        w.ledger.post(txn)
        w.emit("trade.reversed", actor, trade.order, trade=trade.id, amount=trade.amount)
        w.post(txn, trade.order, actor, trade=trade.id)
        if w.p.user.refund_restores:
            self._give_back(trade, trade.amount)
        return True

    def _query_bank(self, trade: Trade, k: int) -> None:
        """Re-query an ``unknown`` debit on the bank-query schedule; give up (failed) when it is spent."""
        w = self.w
        gaps = w.p.gateway.bank_query_schedule.gaps
        if trade.state is not T.UNKNOWN:
            return
        if k >= len(gaps):
            trade.to(T.FAILED)
            w.emit("trade.failed", "gateway", trade.order, trade=trade.id, reason="error")
            return
        w.hold(trade.order)

        def ask() -> None:
            def answered(record: str | None) -> None:
                if trade.state is T.UNKNOWN:
                    if record is not None and record != B.HELD and record != B.PENDING and record != B.BUSY:
                        self._resolve(trade, record)
                    else:
                        self._query_bank(trade, k + 1)
                w.release(trade.order)

            self.bank.query(trade.id, answered)

        w.at(gaps[k], ask)

    # -- requests from the order service and the reconciler -----------------------------------------
    def query(self, trade_ids: list[str], reply: Callable[[list[TradeState]], None]) -> None:
        """The states of trades, as the gateway sees them when the request is served."""
        w = self.w
        if self.station.submit(w.s_gw_service(), lambda _w: reply([w.trades[t].state for t in trade_ids if t in w.trades])) < 0:
            reply(None)  # refused (503 / queue full): the caller looks again later

    def close(self, trade_ids: list[str], reply: Callable[[list[str]], None]) -> None:
        """Close unpaid trades (``alipay.trade.close``): per trade ``closed``, ``already_paid`` or ``in_progress``."""
        w = self.w

        def serve(_wait: float) -> None:
            results = []
            min_age = w.p.gateway.min_close_age
            for tid in trade_ids:
                trade = w.trades.get(tid)
                res = policies.gateway_close_result(trade.state if trade else None,
                                                    w.env.now - trade.created_at if trade else 0.0, min_age)
                if trade is not None and res == "closed" and trade.state is not T.CLOSED:
                    trade.to(T.CLOSED)
                    w.emit("trade.closed", "gateway", trade.order, trade=tid)
                elif res == "already_paid":
                    w.emit("trade.close_refused", "gateway", trade.order, trade=tid)
                results.append(res)
            reply(results)

        if self.station.submit(w.s_gw_service(), serve) < 0:
            reply(None)  # refused (503 / queue full): the caller looks again later

    def refund(self, trade: Trade, reply: Callable[[str], None], part: int | None = None) -> None:
        """Refund a succeeded trade in full (WeChat v3: accepted, then PROCESSING -> SUCCESS / ABNORMAL).

        ``reply`` gets ``done`` once the money is back with the buyer (``gateway.refund_latency`` after
        acceptance), ``failed`` when this attempt failed (``gateway.refund_failure``), ``refused`` when
        the trade is not refundable, ``pending`` when a refund of it is already under way (the request
        number makes a repeat idempotent). ``part``: a partial refund of that many fen (Alipay: its own
        ``out_request_no``), refused when it would pass what is left; the trade stays succeeded.
        """
        w = self.w
        key = trade.id if part is None else f"{trade.id}/part"

        def serve(_wait: float) -> None:
            if key in self.refunding:
                reply("pending")
                return
            if trade.state is not T.SUCCEEDED or (part is not None and trade.refunded + part > trade.amount):
                reply("refused")
                return
            g = w.p.gateway
            r = w.order_rng(trade.order)  # the order's own stream: refunds do not shift other draws
            if g.refund_failure > 0 and r.random() < g.refund_failure:
                w.emit("trade.refund_failed", "gateway", trade.order, trade=trade.id, amount=trade.amount)
                reply("failed")
                return
            latency = g.refund_latency.draw(r) if g.refund_working_days is None else self._working_days(r)
            if latency <= 0.0:
                self._refunded(trade, reply, part)
                return
            self.refunding.add(key)
            w.hold(trade.order)

            def land() -> None:
                self.refunding.discard(key)
                self._refunded(trade, reply, part)
                w.release(trade.order)

            w.at(latency, land)

        if self.station.submit(w.s_gw_service(), serve) < 0:
            reply("failed")  # refused (503 / queue full): retried on the refund schedule

    def _working_days(self, r) -> float:
        """Seconds from now until ``gateway.refund_working_days`` (drawn with ``r``) working days have
        passed on the calendar that starts at ``run.start`` (weekends and ``run.holidays`` skipped, ``run.workdays`` counted)."""
        w = self.w
        run = w.scenario.run
        return working_days_delay(run.start, w.env.now, w.p.gateway.refund_working_days.draw(r),
                                  frozenset(run.holidays), frozenset(run.workdays))

    def _give_back(self, trade: Trade, amount: int) -> None:
        """``user.refund_restores``: ``amount`` returned to the buyer goes back to the wallet balance or
        card line the debit took it from (when the buyer's account keeps one)."""
        w = self.w
        acct = w.accounts.get(trade.user)
        order = w.orders.get(trade.order)
        if acct is None or order is None or not w.p.user.refund_restores:
            return
        acct.give_back(order.method, amount)

    def _refunded(self, trade: Trade, reply: Callable[[str], None], part: int | None = None) -> None:
        w = self.w
        if trade.state is not T.SUCCEEDED:
            reply("refused")
            return
        if part is not None:
            if trade.refunded + part > trade.amount:
                reply("refused")
                return
            trade.refunded += part  # partially refunded: the trade stays succeeded
            self._pay_back(trade, part)
            reply("done")
            return
        trade.to(T.REFUNDED)
        left = trade.amount - trade.refunded  # what partial refunds have not returned yet
        trade.refunded = trade.amount
        w.emit("trade.refunded", "gateway", trade.order, trade=trade.id, amount=trade.amount)
        if left > 0:
            self._pay_back(trade, left)
        reply("done")

    def _pay_back(self, trade: Trade, amount: float) -> None:
        """A refund's money: clearing back to the buyer, posted and recorded (and given back to the
        buyer's wallet or card line with ``user.refund_restores``)."""
        w = self.w
        txn = transfer(w.next_txn("r"), REFUND, "clearing", f"user:{trade.user}", amount)
        w.ledger.post(txn)
        w.post(txn, trade.order, "gateway", trade=trade.id)
        if w.p.user.refund_restores:
            self._give_back(trade, amount)

    # -- the notifier ----------------------------------------------------------------------------------
    def notify(self, trade: Trade) -> None:
        """Tell the order service the trade succeeded, retrying on the schedule until acknowledged."""
        self.notify_seq += 1
        nid = f"n{self.notify_seq}"
        self.w.hold(trade.order)
        self._attempt(trade, nid, 1)

    def _attempt(self, trade: Trade, nid: str, attempt: int) -> None:
        w = self.w
        g = w.p.gateway
        r = w.rng["notify"]
        order = trade.order
        w.emit("notify.sent", "gateway", order, trade=trade.id, notify_id=nid, attempt=attempt)
        lost = r.random() < g.notify_loss
        duplicate = r.random() < g.notify_duplicate
        latency = w.s_notify_latency()
        outages = self.outages
        if outages is not None and outages.down_at(w.env.now):
            # The endpoint is down: the attempt fails at once (connection refused, a 502 from its ingress).
            # The coins above were still drawn, so the notify stream is where it would be without outages.
            w.emit("notify.lost", "gateway", order, trade=trade.id, notify_id=nid, attempt=attempt,
                   cause="endpoint_down")
            o = w.orders.get(order)
            if o is not None and w.warmup <= o.created_at < w.horizon:
                self.refused_by_outage += 1
            self._next(trade, nid, attempt, w.env.now)
            return
        if lost:
            w.emit("notify.lost", "gateway", order, trade=trade.id, notify_id=nid, attempt=attempt)
            self._next(trade, nid, attempt, w.env.now)
            return

        def arrive() -> None:
            arrived = w.env.now

            def handled(done_at: float) -> None:
                acked = done_at - arrived <= g.notify_ack_timeout
                w.emit("notify.received", "order_service", order, trade=trade.id, notify_id=nid,
                       attempt=attempt, acked=acked)
                if acked:
                    w.release(order)
                else:
                    self._next(trade, nid, attempt, arrived + g.notify_ack_timeout)

            def refused() -> None:  # 503, queue full, or dropped past its ack deadline: not acknowledged
                self._next(trade, nid, attempt, arrived + g.notify_ack_timeout)

            self.order_service.receive_notification(trade, handled, arrived + g.notify_ack_timeout, refused)

        w.at(latency, arrive)
        if duplicate:
            w.hold(order)

            def arrive_again() -> None:
                arrived = w.env.now
                self.order_service.receive_notification(trade, lambda _t: w.release(order),
                                                        arrived + g.notify_ack_timeout)

            w.at(latency + w.s_notify_latency(), arrive_again)

    def _next(self, trade: Trade, nid: str, attempt: int, failed_at: float) -> None:
        w = self.w
        gap = policies.notify_delay(w.p.gateway.notify_schedule.gaps, attempt)
        if gap is None:
            w.release(trade.order)  # schedule spent: the gateway stops trying
            return
        w.at(max(0.0, failed_at + gap - w.env.now), lambda: self._attempt(trade, nid, attempt + 1))
