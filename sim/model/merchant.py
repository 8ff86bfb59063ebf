"""Merchants: a population with shares, fulfilment of every paid order, and how each sends BNPL *finish*.

Every order belongs to one merchant of ``merchant.population`` (drawn by share). Each paid order is
fulfilled: a ``merchant.fulfilment`` request per 'order paid' the merchant receives (two, if the order
service marked the order paid twice), shipped ``merchant.ship_time`` after 'paid' (the default ``0s``:
at once, with no event of its own) and delivered ``merchant.delivery_time`` after shipping.
For a pay-after-use (BNPL) order the merchant must then call *finish* so the provider deducts the
buyer's money; how it does that is its integration quality (``finish`` of its profile):

* ``sync`` — from the delivery event itself, ``merchant.bnpl_finish_delay`` later;
* ``batch`` — a job every ``batch_interval`` sends finish for everything delivered since, one call
  per ``batch_item_time``; a run that finds the previous one still running is skipped (a cron job
  under a lock), so under load finishes wait interval after interval; so is a run due while
  ``merchant.batch_paused`` is on (a big-promotion plan pausing lower-priority jobs for the peak,
  set in a fault window) — ``metrics.merchant_batch`` counts them when the key is used;
* ``queue`` — a message queue consumed by the merchant's worker, which holds each message
  ``bnpl_finish_delay`` before sending it; the worker restarts every ``restart_every`` (exponential)
  and loses what it holds in memory — unless ``merchant.finish_outbox`` (a durable outbox it re-reads
  on start).

A finish call fails with ``merchant.bnpl_finish_failure`` and is retried ``bnpl_finish_retries``
times. Nothing decides per order that a finish is forgotten: a finish is lost when a restart meets it
in the worker's memory, and late when batch runs are skipped.

After-sales (seed 003, :mod:`sim.domain.after_sales`): a paying buyer (any method) with an after-sales
request (``user.after_sales_probability``, drawn on arrival from the buyer's own after-sales stream,
with the answer's draws) sends it ``user.after_sales_delay`` after 'paid'. It is routed by the
order's state then; the merchant (or customer service) answers ``answer_time`` (its profile's) later,
on the state its ``cancel_check`` reads. The shipment does not wait for the answer: a request sent
before shipping can be answered after it, and a stale check then refunds goods already gone. An
accepted request of a pay-after-use order cancels or refunds its agreement at the BNPL provider
(``bnpl_remedy``) instead of refunding a trade.
"""

from __future__ import annotations

import random
import zlib
from typing import Callable

import numpy as np

from sim.domain import after_sales, policies
from sim.domain.after_sales import Answer, Route
from sim.domain.states import OrderState
from sim.model.world import World

O = OrderState
AFTER_SALES_COUNTS = ("requested", "accepted", "refused_shipped", "refused_declined", "refused_no_defect",
                      "nothing", "defect_refunds", "complaints", "refunded_and_shipped", "refunded_and_shipped_fen")


def _stream(seed: int, replication: int, name: str) -> random.Random:
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(replication, zlib.crc32(f"merchant:{name}".encode()), 2))
    return random.Random(int.from_bytes(ss.generate_state(2, np.uint32).tobytes(), "little"))


class _Profile:
    """One merchant's integration: its finish mode and, for ``queue``, what its worker holds."""

    __slots__ = ("spec", "rng", "held", "pending", "running")

    def __init__(self, w: World, spec) -> None:
        self.spec = spec
        self.rng = _stream(w.scenario.run.seed, w.replication, spec.name)  # per-merchant stream
        self.held: dict[str, list] = {}  # queue: order -> [alive] token of the message in memory
        self.pending: list = []  # batch: delivered orders waiting for the next run
        self.running = False


class Merchant:
    def __init__(self, w: World) -> None:
        self.w = w
        self.bnpl = None
        self.order_service = None  # told when an order is completed (a buyer may then return part of it)
        self.profiles = {spec.name: _Profile(w, spec) for spec in w.p.merchant.population}
        self.shipments: dict[str, int] = {}
        # order -> its buyer's after-sales request (sim.domain.population.draw_after_sales), until paid
        self.after_sales_wishes: dict = {}
        w.on_forget.append(lambda oid: self.after_sales_wishes.pop(oid, None))
        self.after_sales = dict.fromkeys(AFTER_SALES_COUNTS, 0)
        self.batch_runs = {"runs": 0, "skipped_running": 0, "skipped_paused": 0}  # the batch merchants' finish jobs
        # Told of each refused after-sales request (order, answer); customer service listens for escalations.
        self.on_refused: list[Callable[[object, Answer], None]] = []
        w.on_forget.append(lambda oid: self.shipments.pop(oid, None))
        for prof in self.profiles.values():
            if prof.spec.finish == "batch":
                w.env.process(self._batch_job(prof))
            elif prof.spec.finish == "queue" and prof.spec.restart_every is not None:
                w.env.process(self._restarts(prof))

    def fulfil(self, order) -> None:
        """The merchant heard 'order paid': start a fulfilment; ship, deliver, then finish (BNPL).

        Shipped ``merchant.ship_time`` after 'paid' (待发货 -> 待收货), delivered ``merchant.delivery_time``
        after shipping. Each step goes ahead only if the order is still where the step expects it: a
        paid order the merchant cancelled (after-sales) is not shipped, a refunded one is not delivered.
        """
        w = self.w
        fresh = w.new_order_rng(order.id)
        r = w.order_rng(order.id)
        m = w.p.merchant
        n = self.shipments.get(order.id, 0) + 1
        self.shipments[order.id] = n
        w.emit("merchant.fulfilment", "merchant", order.id, merchant=order.merchant, shipment=n)
        delivery = m.delivery_time.draw(r)  # first, as before ship_time existed: the same draw either way
        ship = m.ship_time.draw(r)  # a constant (the default 0s) draws nothing
        if fresh:
            # hours until delivery: keep its stream small (its position is known when only delivery drew)
            w.park_order_rng(order.id, m.delivery_time if m.ship_time.kind == "constant" else None)
        w.hold(order.id)
        if n == 1 and self.after_sales_wishes:
            wish = self.after_sales_wishes.pop(order.id, None)
            if wish is not None:
                w.hold(order.id)
                w.at(wish.delay, lambda: self._after_sales_request(order, wish))

        def delivered() -> None:
            if order.state is O.SHIPPED:
                order.to(O.DELIVERED)
                w.emit("order.delivered", "merchant", order.id)
                if order.method == "bnpl":
                    self._after_delivery(order)
                else:
                    order.to(O.COMPLETED)
                    w.emit("order.completed", "merchant", order.id)
                    if self.order_service is not None:
                        self.order_service.completed(order)
            w.release(order.id)

        def shipped() -> None:
            if order.state is O.PAID:
                order.to(O.SHIPPED)
                w.emit("order.shipped", "merchant", order.id)
            w.at(delivery, delivered)  # (a second fulfilment's delivery may come first, as before)

        if ship <= 0.0:
            shipped()  # no event of its own: with ship_time 0s the run's events are the ones it had before
        else:
            w.at(ship, shipped)

    # -- after-sales (seed 003) ----------------------------------------------------------------------
    def _after_sales_request(self, order, wish) -> None:
        """The buyer's after-sales request reaches the platform: routed by the order's state now."""
        w = self.w
        state = order.state
        rt = after_sales.route(state)
        # counted like the rates: orders created in [warmup, horizon) only
        st = self.after_sales if w.warmup <= order.created_at < w.horizon else dict.fromkeys(AFTER_SALES_COUNTS, 0)
        st["requested"] += 1
        w.emit("after_sales.requested", "user", order.id, state=state.value, route=rt.value)
        if rt is Route.COMPLAINT:
            st["complaints"] += 1
            w.emit("user.complaint", "user", order.id, state=state.value)
        if rt is not Route.ASK_MERCHANT and rt is not Route.DEFECT_ONLY:
            w.release(order.id)  # a complaint, or an order already closed or refunded: no money moves
            return
        prof = self.profiles[order.merchant]

        def answer() -> None:
            actual = order.state
            if rt is Route.ASK_MERCHANT:
                checked = after_sales.checked_state(prof.spec.cancel_check, state, actual)
                ans = after_sales.merchant_answer(checked, wish.agrees)
            else:
                checked = actual
                ans = after_sales.defect_answer(wish.defect)
            ans = after_sales.acted_on(ans, actual)  # refunded or closed meanwhile by another path
            if ans is Answer.ACCEPTED:
                st["accepted"] += 1
                loss = after_sales.refunds_shipped_goods(rt, ans, actual)
                w.emit("after_sales.accepted", "merchant", order.id, route=rt.value, checked=checked.value,
                       state=actual.value, shipped=actual is not O.PAID)
                if loss:
                    st["refunded_and_shipped"] += 1
                    st["refunded_and_shipped_fen"] += order.amount
                elif rt is Route.DEFECT_ONLY:
                    st["defect_refunds"] += 1
                self.order_service.refund_order(order, "after_sales_" + rt.value)
            else:
                st[ans.value] += 1
                w.emit("after_sales.refused", "merchant", order.id, route=rt.value, checked=checked.value,
                       state=actual.value, reason=ans.value)
                for listener in self.on_refused:
                    listener(order, ans)
            w.release(order.id)

        w.at(wish.answer_time, answer)

    # -- how the finish is sent ----------------------------------------------------------------------
    def _after_delivery(self, order) -> None:
        w = self.w
        prof = self.profiles[order.merchant]
        mode = prof.spec.finish
        w.hold(order.id)  # released when the finish is accepted, given up, or lost
        if mode == "sync":
            w.at(w.p.merchant.bnpl_finish_delay.draw(w.order_rng(order.id)), lambda: self._finish(order, 1, None))
        elif mode == "batch":
            prof.pending.append(order)
        else:
            token = [True]
            prof.held[order.id] = token
            w.at(w.p.merchant.bnpl_finish_delay.draw(w.order_rng(order.id)),
                 lambda: self._finish(order, 1, token))

    def _batch_job(self, prof: _Profile):
        w = self.w
        spec = prof.spec
        while True:
            yield w.env.timeout(spec.batch_interval)
            if not prof.pending:
                continue
            skip = policies.batch_run(prof.running, w.p.merchant.batch_paused)  # w.p: a fault window's, if in one
            if skip is not None:
                self.batch_runs["skipped_" + skip] += 1
                continue
            self.batch_runs["runs"] += 1
            w.env.process(self._batch_run(prof))

    def _batch_run(self, prof: _Profile):
        w = self.w
        prof.running = True
        batch, prof.pending = prof.pending, []
        item = prof.spec.batch_item_time.sampler(prof.rng)
        for order in batch:
            yield w.env.timeout(item())
            self._finish(order, 1, None)
        prof.running = False

    def _restarts(self, prof: _Profile):
        """The queue worker restarts now and then and loses the messages it holds in memory."""
        w = self.w
        gap = prof.spec.restart_every.sampler(prof.rng)
        while True:
            yield w.env.timeout(gap())
            held, prof.held = prof.held, {}
            outbox = w.p.merchant.finish_outbox
            for oid, token in held.items():
                token[0] = False
                order = w.orders.get(oid)
                if order is None:
                    continue
                if outbox:
                    # The outbox row survived the restart: the new worker sends it again.
                    fresh = [True]
                    prof.held[oid] = fresh
                    w.hold(oid)
                    w.at(0.0, lambda o=order, tk=fresh: self._finish(o, 1, tk))
                w.release(oid)  # the lost message's hold (the outbox took its own)

    def _finish(self, order, attempt: int, token: list | None) -> None:
        """One finish call (holds the order until it is answered, the merchant gives up, or it is lost)."""
        w = self.w
        if token is not None and not token[0]:
            return  # the worker restarted while holding this message: its hold went with it
        m = w.p.merchant
        agreement = self.bnpl.agreement_of(order.id)
        if agreement is None:
            self._done(order, token)
            return
        w.emit("bnpl.finish_sent", "merchant", order.id, agreement=agreement.id, attempt=attempt)
        r = w.order_rng(order.id)
        failed = r.random() < m.bnpl_finish_failure

        def arrive() -> None:
            if token is not None and not token[0]:
                return
            if failed:
                w.emit("bnpl.finish_failed", "merchant", order.id, agreement=agreement.id, attempt=attempt)
                if attempt <= m.bnpl_finish_retries:
                    w.at(m.bnpl_finish_retry_delay.draw(r), lambda: self._finish(order, attempt + 1, token))
                    return
                self._done(order, token)
                return
            self.bnpl.finish(agreement)
            if order.state is O.DELIVERED:
                order.to(O.COMPLETED)
                w.emit("order.completed", "merchant", order.id)
            self._done(order, token)

        w.at(w.p.app.network_latency.draw(r), arrive)

    def _done(self, order, token: list | None) -> None:
        if token is not None:
            prof = self.profiles[order.merchant]
            if prof.held.get(order.id) is token:
                del prof.held[order.id]
        self.w.release(order.id)
