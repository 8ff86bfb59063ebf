"""The oracle: read a history of events, name every anomaly, its window and the money it holds.

The checker never looks at how a history was produced (simulation, live services, Locust clients). It
groups events by ``order``; when an order's ``order.end`` arrives (or at the end of observation) it
sorts that order's events by time and *sweeps* them once, keeping what each party believes (order
state, gateway trade states, the user's net charge per trade from the ledger, the last payment screen
the buyer saw, the BNPL agreement) and evaluating every anomaly rule at each event time and at each
deadline (``expires_at + stuck_grace``, ``delivered + bnpl_finish_limit`` …). An anomaly *instance* is
an interval ``[start, stop)`` during which a rule holds: ``stop`` is when the parties agreed again
(repaired), or ``None`` when they still disagree at the end of observation (counted in ``count``).

Memory is bounded by the orders in flight: ``feed`` appends to a per-order list, and an order's events
are dropped once it is judged. The rules are written out in ``docs/checker.md``.
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
from array import array
from collections import deque
from dataclasses import dataclass, field, fields, replace
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Iterator

from sim.errors import HistoryError
from sim.vocabulary import ANOMALY_CLASSES

__all__ = [
    "ORDER_STATES",
    "END_STATES",
    "CheckConfig",
    "ClassStats",
    "CheckSummary",
    "Checker",
    "check_events",
    "read_history",
]

# Order states tracked in the timeline, in the order a report draws them.
ORDER_STATES: tuple[str, ...] = (
    "awaiting_payment",
    "paid",
    "shipped",
    "delivered",
    "completed",
    "closed",
    "refund_pending",
    "refunded",
)

# Every end state :attr:`CheckSummary.end_states` may name (docs/checker.md explains each).
END_STATES: tuple[str, ...] = (
    "awaiting_payment",
    "unknown_past_timeout",
    "unpaid_closed",
    "unpaid_closed_trade_payable",
    "paid_open",
    "paid_refund_pending",
    "paid_refund_failed",
    "paid_refunded",
    "order_paid_no_charge",
    "paid_closed_unrefunded",
    "paid_closed_refund_pending",
    "paid_closed_refund_failed",
    "paid_closed_refunded",
    "resurrected_stock_released",
    "double_charged",
    "bnpl_unfinished",
    "bnpl_deduction_pending",
    "bnpl_deduction_failing",
    "bnpl_compensated_overdue",
    "bnpl_settled",
    "bnpl_expired",
)

_PAID_STATES = frozenset({"paid", "shipped", "delivered", "completed"})
_SUCCESS_SCREENS = frozenset({"payment_succeeded", "order_paid"})
_FAILURE_SCREENS = frozenset({"payment_failed", "payment_unknown"})
_PENDING_TRADE = frozenset({"unknown", "processing"})
_PAYABLE_TRADE = frozenset({"created", "failed"})
_TRADE_STATE_OF = {
    "trade.created": "created",
    "trade.processing": "processing",
    "trade.succeeded": "succeeded",
    "trade.failed": "failed",
    "trade.unknown": "unknown",
    "trade.closed": "closed",
    "trade.refunded": "refunded",
}
_ORDER_STATE_OF = {
    "order.shipped": "shipped",
    "order.delivered": "delivered",
    "order.completed": "completed",
    "order.refund_pending": "refund_pending",
    "order.refunded": "refunded",
}
# Config fields a ``run.start`` event may fill.
_RUN_START_FIELDS = ("warmup", "horizon", "end", "stuck_grace", "bnpl_finish_limit")
# Ended order ids remembered to drop events that arrive after ``order.end`` (bounded).
_ENDED_MEMORY = 100_000

_BY_T = itemgetter("t")

_PBC, _SSTC, _FSBC, _DOUBLE, _CWO, _OPWC, _STUCK, _BNPL_UNFIN, _BNPL_OVERDUE, _BNPL_DED, _LEDGER = ANOMALY_CLASSES


# --------------------------------------------------------------------------------------------------
# Configuration and results


@dataclass
class CheckConfig:
    """What the checker counts and when it calls something stuck (all times in seconds)."""

    warmup: float = 0.0
    horizon: float | None = None  # orders created at/after it are not counted in rates; None = all
    end: float | None = None  # end of observation; None = the run.end event's t, else the last event's t
    stuck_grace: float = 3600.0
    bnpl_finish_limit: float = 86400.0
    bucket_s: float = 60.0  # timeline bucket
    timeline_end: float | None = None  # the timeline stops here (None: the end of observation)
    examples: bool = True
    max_window_samples: int = 500


@dataclass
class ClassStats:
    """One anomaly class over the counted orders of one history."""

    count: int = 0  # instances still unresolved at the end of observation
    repaired: int = 0  # instances that arose and were resolved before the end
    amount_fen: int = 0  # money held by the unresolved instances at the end
    windows: list[float] = field(default_factory=list)  # deterministic sample of window lengths (s)
    window_max: float = 0.0  # exact, over all instances
    window_sum: float = 0.0  # exact, over all instances
    n_windows: int = 0  # all instances (count + repaired)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class CheckSummary:
    """What :meth:`Checker.finish` returns: picklable, and JSON-able through :meth:`to_dict`."""

    orders: int  # orders counted in rates (created in [warmup, horizon))
    per_class: dict[str, ClassStats]  # every class of ANOMALY_CLASSES, zeros included
    end_states: dict[str, int]  # counted orders by end state (sums to ``orders``)
    timeline: dict[str, Any]  # shape of docs/results.md
    examples: dict[str, list[dict[str, Any]]]  # class -> up to three examples (first, worst, last)
    warmup: float = 0.0
    horizon: float | None = None
    end: float = 0.0
    events: int = 0  # events fed
    late_events: int = 0  # events for an order after its order.end (dropped)
    unattributed_events: int = 0  # events with no ``order`` (other than run.*), ignored
    seed: int | None = None  # from run.start, when it carries one

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["per_class"] = {k: v.to_dict() for k, v in self.per_class.items()}
        return out


class _Samples:
    """A bounded, deterministic sample: keep every ``stride``-th item; when full, halve and double the stride."""

    __slots__ = ("items", "stride", "seen", "cap")

    def __init__(self, cap: int) -> None:
        self.items: list[Any] = []
        self.stride = 1
        self.seen = 0
        self.cap = max(2, cap)

    def add(self, item: Any) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) > self.cap:
                self.items = self.items[::2]
                self.stride *= 2
        self.seen += 1


class _ClassAcc:
    """Per-class accumulator while streaming; unresolved windows wait for the end of observation."""

    __slots__ = ("repaired", "rmax", "rsum", "samples", "u_start", "u_amount", "first", "last", "worst_r", "worst_u")

    def __init__(self, cap: int) -> None:
        self.repaired = 0
        self.rmax = 0.0
        self.rsum = 0.0
        self.samples = _Samples(cap)  # items: (window or None, start)
        self.u_start = array("d")
        self.u_amount = array("q")
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.worst_r: dict[str, Any] | None = None  # longest resolved window
        self.worst_u: dict[str, Any] | None = None  # earliest unresolved start


# --------------------------------------------------------------------------------------------------
# Reading histories


def read_history(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events of a JSON Lines history (``.gz`` too); blank lines skipped; a bad line raises HistoryError."""
    p = Path(path)
    try:
        fh = gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{p}: no such history file") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise HistoryError(f"{p}: cannot read history file ({exc.__class__.__name__})") from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HistoryError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(event, dict):
                    raise HistoryError(f"{p}:{lineno}: expected a JSON object, found {type(event).__name__}")
                if "t" not in event:
                    raise HistoryError(f"{p}:{lineno}: missing field 't' (seconds since the run started)")
                t = event["t"]
                if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                    raise HistoryError(f"{p}:{lineno}: field 't' must be a finite number, found {t!r}")
                typ = event.get("type")
                if not isinstance(typ, str) or not typ:
                    what = "missing field 'type'" if "type" not in event else f"field 'type' must be a string, found {typ!r}"
                    raise HistoryError(f"{p}:{lineno}: {what}")
                yield event
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise HistoryError(f"{p}:{lineno + 1}: cannot read ({exc.__class__.__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------------
# One order's judgement


class _OrderState:
    """What every party believes about one order, as the sweep goes."""

    __slots__ = (
        "grace", "limit", "timers", "created", "created_t", "amount", "expires_at", "ostate", "closed",
        "reopened_stock_released", "bnpl", "net", "max_charge", "n_charges", "trade_amount", "trade_state",
        "total", "charged_trades", "overcharged", "extra", "ever_charged", "refund_seen", "told_failed",
        "success_t", "agreement", "agreement_amount", "delivered_t", "finish_requested", "bnpl_paid",
        "ded_failed", "false_overdue", "compensated", "settled", "agreement_end", "imbalances",
        "refund_failed",
    )

    def __init__(self, grace: float, limit: float) -> None:
        self.grace = grace  # stuck_grace
        self.limit = limit  # bnpl_finish_limit
        self.timers: list[float] = []  # heap of deadlines still ahead of the sweep
        self.created = False
        self.created_t: float | None = None
        self.amount = 0
        self.expires_at: float | None = None
        self.ostate: str | None = None
        self.closed = False  # closed and not reopened since
        self.reopened_stock_released = False
        self.bnpl = False  # paid by a BNPL authorization, not by a debit
        self.net: dict[Any, int] = {}  # trade -> the user's net charge (fen)
        self.max_charge: dict[Any, int] = {}  # trade -> largest single charge
        self.n_charges: dict[Any, int] = {}
        self.trade_amount: dict[Any, int] = {}
        self.trade_state: dict[Any, tuple[str, float]] = {}  # trade -> (state, since)
        self.total = 0  # sum of positive net charges
        self.charged_trades = 0
        self.overcharged = False
        self.extra = 0
        self.ever_charged = False
        self.refund_seen = False
        self.told_failed = False  # the buyer's last word on payment is "failed"/"unknown"
        self.success_t: float | None = None
        self.agreement: Any = None
        self.agreement_amount = 0
        self.delivered_t: float | None = None
        self.finish_requested = False
        self.bnpl_paid = False  # a successful deduction or a repayment
        self.ded_failed = False
        self.false_overdue = False
        self.compensated = False
        self.settled = False
        self.agreement_end: str | None = None  # cancelled / expired
        self.imbalances: list[int] = []
        self.refund_failed = False  # the order service gave up retrying a refund (order.refund_failed)

    def recompute_money(self) -> None:
        total = charged = 0
        best = 0
        over = False
        for trade, n in self.net.items():
            if n > 0:
                total += n
                charged += 1
                mc = self.max_charge.get(trade, n)
                if self.n_charges.get(trade, 0) >= 2 and n > mc:
                    over = True
                best = max(best, min(n, mc))
        self.total, self.charged_trades, self.overcharged = total, charged, over
        self.extra = total - best if (charged >= 2 or over) else 0
        if total > 0:
            self.ever_charged = True


def _num(value: Any) -> int:
    """An amount from an event field; anything that is not a number counts as 0."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------------------------------
# Event handlers: how each event changes what the parties believe (events no rule reads have none)


def _h_ledger(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    total = user = 0
    for p in e.get("postings") or ():
        if not isinstance(p, dict):
            continue
        a = _num(p.get("amount"))
        total += a
        acct = p.get("account")
        if isinstance(acct, str) and acct.startswith("user:"):
            user += a
    if total != 0:
        st.imbalances.append(abs(total))
    kind = e.get("kind")
    if kind == "charge" or kind == "refund":
        trade = e.get("trade")
        st.net[trade] = st.net.get(trade, 0) - user
        if kind == "charge" and user < 0:
            st.n_charges[trade] = st.n_charges.get(trade, 0) + 1
            if -user > st.max_charge.get(trade, 0):
                st.max_charge[trade] = -user
        elif kind == "refund" and user > 0:
            st.refund_seen = True
        st.recompute_money()


def _h_trade(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    trade = e.get("trade")
    typ = e["type"]
    state = _TRADE_STATE_OF[typ]
    if state in _PENDING_TRADE:
        heapq.heappush(st.timers, t + st.grace)
    elif state == "failed" and e.get("reason") == "expired":
        state = "closed"  # an expired trade can no longer be paid
    st.trade_state[trade] = (state, t)
    if typ == "trade.created":
        st.trade_amount[trade] = _num(e.get("amount"))


def _h_screen(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    screen = e.get("screen")
    if screen in _SUCCESS_SCREENS:
        st.told_failed = False
        if st.success_t is None:
            st.success_t = t
    elif screen in _FAILURE_SCREENS:
        st.told_failed = True


def _h_attempt(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.told_failed = False  # a new attempt: the buyer now waits for its outcome


def _h_created(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    if st.created_t is not None:
        return
    st.created, st.created_t = True, t
    st.amount = _num(e.get("amount"))
    st.bnpl = e.get("method") == "bnpl"
    exp = e.get("expires_at")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        st.expires_at = exp
        heapq.heappush(st.timers, exp + st.grace)
    chk._set_ostate(st, "awaiting_payment", t)


def _h_paid(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    agreement = e.get("agreement")
    if agreement is not None:
        st.bnpl = True
        if st.agreement is None:
            st.agreement = agreement
    st.closed = False  # a payment recorded on a closed order revives it
    chk._set_ostate(st, "paid", t)


def _h_closed(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.closed = True
    chk._set_ostate(st, "closed", t)


def _h_reopened(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.closed = False
    st.reopened_stock_released = bool(e.get("stock_released"))
    chk._set_ostate(st, "paid", t)


def _h_fulfilment(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    state = _ORDER_STATE_OF[e["type"]]
    if state == "delivered" and st.delivered_t is None:
        st.delivered_t = t
        heapq.heappush(st.timers, t + st.limit)
    chk._set_ostate(st, state, t)


def _h_refund_failed(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.refund_failed = True


def _h_refund_pending(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.refund_failed = False  # asked again: retrying
    _h_fulfilment(chk, st, e, t)


def _h_bnpl(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    typ = e["type"]
    if typ == "bnpl.authorized":
        st.agreement = e.get("agreement")
        st.agreement_amount = _num(e.get("amount"))
    elif typ == "bnpl.finish_requested":
        st.finish_requested = True
        if not st.agreement_amount:
            st.agreement_amount = _num(e.get("amount"))
    elif typ == "bnpl.deduction":
        if e.get("ok") is True:
            st.bnpl_paid = True
        else:
            st.ded_failed = True
    elif typ == "bnpl.repaid":
        st.bnpl_paid = True
    elif typ == "bnpl.overdue":
        if st.bnpl_paid:
            st.false_overdue = True
    elif typ == "bnpl.overdue_cleared":
        st.false_overdue = False
    elif typ == "bnpl.compensated":
        st.compensated = True
    elif typ == "bnpl.settled":
        st.settled = True
    else:  # bnpl.cancelled / bnpl.expired
        st.agreement_end = typ[5:]


_HANDLERS: dict[str, Any] = {
    "ledger.txn": _h_ledger,
    "app.shown": _h_screen,
    "user.pay": _h_attempt,
    "user.retry": _h_attempt,
    "order.created": _h_created,
    "order.paid": _h_paid,
    "order.closed": _h_closed,
    "order.reopened": _h_reopened,
    **{typ: _h_trade for typ in _TRADE_STATE_OF},
    **{typ: _h_fulfilment for typ in _ORDER_STATE_OF},
    "order.refund_pending": _h_refund_pending,
    "order.refund_failed": _h_refund_failed,
    **{f"bnpl.{x}": _h_bnpl for x in ("authorized", "finish_requested", "deduction", "repaid", "overdue",
                                      "overdue_cleared", "compensated", "settled", "cancelled", "expired")},
}


def _evaluate(st: _OrderState, now: float) -> dict[Any, int]:
    """Every rule that holds now for this order: instance key -> money it holds (fen)."""
    grace, limit = st.grace, st.limit
    active: dict[Any, int] = {}
    total = st.total
    if st.created:
        if st.closed:
            if total > 0:
                active[_PBC] = total
            if st.success_t is not None and not (st.refund_seen and total == 0):
                active[_SSTC] = total
        elif st.told_failed and total > 0:
            active[_FSBC] = total
        if st.ostate in _PAID_STATES and not st.bnpl and st.charged_trades == 0:
            active[_OPWC] = st.amount
        if st.ostate == "awaiting_payment" and st.expires_at is not None and now >= st.expires_at + grace:
            active[_STUCK] = total
    else:
        if total > 0:
            active[_CWO] = total
        if st.told_failed and total > 0:
            active[_FSBC] = total
    if st.charged_trades >= 2 or st.overcharged:
        active[_DOUBLE] = st.extra
    for trade, (state, since) in st.trade_state.items():
        if state in _PENDING_TRADE and now >= since + grace:
            active[(_STUCK, trade)] = st.trade_amount.get(trade) or st.max_charge.get(trade, 0)
    if st.agreement is not None:
        amount = st.agreement_amount or st.amount
        if st.delivered_t is not None and not st.finish_requested and now >= st.delivered_t + limit:
            active[_BNPL_UNFIN] = amount
        if st.false_overdue:
            active[_BNPL_OVERDUE] = amount
        if st.ded_failed and not st.bnpl_paid:
            active[_BNPL_DED] = amount
    for k, amount in enumerate(st.imbalances):
        active[(_LEDGER, k)] = amount
    return active


class Checker:
    """Streaming oracle: :meth:`feed` events (any interleaving of orders), then :meth:`finish`."""

    def __init__(self, config: CheckConfig | None = None, respect_run_start: bool = True) -> None:
        self.config = replace(config) if config is not None else CheckConfig()
        self.respect_run_start = respect_run_start
        self._open: dict[Any, list[dict[str, Any]]] = {}
        self._created: dict[Any, float] = {}  # order -> time of its order.created, while in flight
        self._bs = float(self.config.bucket_s)
        self._ended: set[Any] = set()
        self._ended_order: deque[Any] = deque()
        self.max_live_orders = 0  # high-water mark of orders held at once
        self._events = 0
        self._late = 0
        self._unattributed = 0
        self._last_t = 0.0
        self._run_end: float | None = None
        self._seed: int | None = None
        self._finished = False
        self._orders = 0
        self._end_states: dict[str, int] = {}
        self._acc = {cls: _ClassAcc(self.config.max_window_samples) for cls in ANOMALY_CLASSES}
        # timeline, as sparse difference series keyed by bucket index
        self._arrivals: dict[int, int] = {}
        self._state_diff: dict[str, dict[int, int]] = {s: {} for s in ORDER_STATES}
        self._starts: dict[str, dict[int, int]] = {cls: {} for cls in ANOMALY_CLASSES}
        self._risk_diff: dict[int, int] = {}

    @property
    def live_orders(self) -> int:
        """Orders whose events the checker holds now (not yet judged)."""
        return len(self._open)

    # ---------------------------------------------------------------------------------------------
    # streaming

    def feed(self, event: dict[str, Any]) -> None:
        """Take one event; judge its order if it is the order's ``order.end``."""
        self._events += 1
        t = event["t"]
        if t > self._last_t:
            self._last_t = t
        order = event.get("order")
        if order is None:
            typ = event.get("type")
            if typ == "run.start":
                self._run_start(event)
            elif typ == "run.end":
                self._run_end = t if self._run_end is None else max(self._run_end, t)
            else:
                self._unattributed += 1
            return
        events = self._open.get(order)
        if events is None:
            if order in self._ended:
                self._late += 1
                return
            events = self._open[order] = []
            if len(self._open) > self.max_live_orders:
                self.max_live_orders = len(self._open)
        events.append(event)
        typ = event.get("type")
        if typ == "order.created":
            self._created.setdefault(order, t)
        elif typ == "order.end":
            del self._open[order]
            self._ended.add(order)
            self._ended_order.append(order)
            if len(self._ended_order) > _ENDED_MEMORY:
                self._ended.discard(self._ended_order.popleft())
            end = self.config.end
            self._judge(order, events, math.inf if end is None else end)

    def _run_start(self, event: dict[str, Any]) -> None:
        seed = event.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._seed = seed
        if not self.respect_run_start:
            return
        defaults = CheckConfig()
        changes = {}
        for name in _RUN_START_FIELDS:
            value = event.get(name)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if getattr(self.config, name) == getattr(defaults, name):
                changes[name] = float(value)
        if changes:
            self.config = replace(self.config, **changes)

    def finish(self) -> CheckSummary:
        """Judge every order still open at the end of observation and return the summary."""
        if self._finished:
            raise RuntimeError("Checker.finish() was already called")
        self._finished = True
        cfg = self.config
        if cfg.end is not None:
            end = float(cfg.end)
        elif self._run_end is not None:
            end = float(self._run_end)
        else:
            end = float(self._last_t)
        for order, events in list(self._open.items()):
            self._judge(order, events, end)
        self._open.clear()
        per_class: dict[str, ClassStats] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        for cls, acc in self._acc.items():
            per_class[cls], ex = self._close_class(acc, end)
            if cfg.examples:
                examples[cls] = ex
        return CheckSummary(
            orders=self._orders,
            per_class=per_class,
            end_states=dict(sorted(self._end_states.items())),
            timeline=self._timeline(end),
            examples=examples,
            warmup=float(cfg.warmup),
            horizon=None if cfg.horizon is None else float(cfg.horizon),
            end=end,
            events=self._events,
            late_events=self._late,
            unattributed_events=self._unattributed,
            seed=self._seed,
        )

    # ---------------------------------------------------------------------------------------------
    # the sweep

    def _judge(self, order: Any, events: list[dict[str, Any]], end_hint: float) -> None:
        cfg = self.config
        events.sort(key=_BY_T)  # stable: equal times keep arrival order
        created_t = self._created.pop(order, None)
        first_t = created_t if created_t is not None else events[0]["t"]
        counted = first_t >= cfg.warmup and (cfg.horizon is None or first_t < cfg.horizon)
        st = _OrderState(cfg.stuck_grace, cfg.bnpl_finish_limit)
        timers = st.timers  # deadlines pushed by the handlers as the sweep meets them
        handlers = _HANDLERS
        bs = self._bs
        open_: dict[Any, list[Any]] = {}  # key -> [cls, start, amount, peak]
        ctx = (order, counted, events)
        risk = 0
        i, n = 0, len(events)
        while True:
            if i < n:
                now = events[i]["t"]
                if timers and timers[0] < now:
                    now = timers[0]
            elif timers and timers[0] < end_hint:
                now = timers[0]
            else:
                break
            changed = False
            while i < n:
                e = events[i]
                if e["t"] != now:
                    break
                handler = handlers.get(e.get("type"))
                if handler is not None:
                    handler(self, st, e, now)
                    changed = True
                i += 1
            while timers and timers[0] <= now:
                heapq.heappop(timers)
                changed = True
            if not changed:
                continue  # only events no rule reads (notifications, client calls)
            active = _evaluate(st, now)
            for key in [k for k in open_ if k not in active]:
                inst = open_.pop(key)
                if inst[0] == _FSBC and st.closed:
                    continue  # superseded: a closed order holding the charge is paid_but_closed
                self._record(inst, now, ctx)
            for key, amount in active.items():
                inst = open_.get(key)
                if inst is None:
                    open_[key] = [key if isinstance(key, str) else key[0], now, amount, amount]
                else:
                    inst[2] = amount
                    if amount > inst[3]:
                        inst[3] = amount
            new_risk = max(active.values()) if active else 0
            if new_risk != risk:
                _add(self._risk_diff, math.ceil(now / bs), new_risk - risk)
                risk = new_risk
        for inst in open_.values():
            self._record(inst, None, ctx)
        if st.created_t is not None:
            _add(self._arrivals, math.floor(st.created_t / bs), 1)
            if counted:
                self._orders += 1
                name = _end_state(st)
                self._end_states[name] = self._end_states.get(name, 0) + 1

    def _set_ostate(self, st: _OrderState, state: str, t: float) -> None:
        old = st.ostate
        if old == state:
            return
        k = math.ceil(t / self._bs)
        if old is not None:
            _add(self._state_diff[old], k, -1)
        _add(self._state_diff[state], k, 1)
        st.ostate = state

    # ---------------------------------------------------------------------------------------------
    # bookkeeping

    def _record(self, inst: list[Any], stop: float | None, ctx: tuple[Any, bool, list[dict[str, Any]]]) -> None:
        cls, start, amount, peak = inst
        order, counted, events = ctx
        _add(self._starts[cls], math.floor(start / self._bs), 1)
        if not counted:
            return
        acc = self._acc[cls]
        if stop is None:
            acc.u_start.append(start)
            acc.u_amount.append(int(amount))
            acc.samples.add((None, start))
        else:
            window = stop - start
            acc.repaired += 1
            acc.rsum += window
            if window > acc.rmax:
                acc.rmax = window
            acc.samples.add((window, start))
        if not self.config.examples:
            return
        ex = {"order": order, "start": start, "stop": stop, "amount_fen": int(amount if stop is None else peak),
              "events": events}
        if acc.first is None or start < acc.first["start"]:
            acc.first = ex
        if acc.last is None or start >= acc.last["start"]:
            acc.last = ex
        if stop is None:
            if acc.worst_u is None or start < acc.worst_u["start"]:
                acc.worst_u = ex
        elif acc.worst_r is None or stop - start > acc.worst_r["stop"] - acc.worst_r["start"]:
            acc.worst_r = ex

    def _close_class(self, acc: _ClassAcc, end: float) -> tuple[ClassStats, list[dict[str, Any]]]:
        count = amount = 0
        usum = 0.0
        umax = 0.0
        for start, amt in zip(acc.u_start, acc.u_amount):
            if start >= end:
                continue  # a deadline that fell after the end of observation
            count += 1
            amount += amt
            usum += end - start
            umax = max(umax, end - start)
        windows = [end - s if w is None else w for w, s in acc.samples.items if w is not None or s < end]
        stats = ClassStats(
            count=count,
            repaired=acc.repaired,
            amount_fen=amount,
            windows=windows,
            window_max=max(acc.rmax, umax),
            window_sum=acc.rsum + usum,
            n_windows=count + acc.repaired,
        )
        return stats, _pick_examples(acc, end)

    def _timeline(self, end: float) -> dict[str, Any]:
        bs = self.config.bucket_s
        if self.config.timeline_end is not None:
            end = min(end, self.config.timeline_end)
        nb = max(1, math.ceil(end / bs)) if end > 0 else 1
        return {
            "bucket_s": bs,
            "t": [k * bs for k in range(nb)],
            "arrivals": _dense(self._arrivals, nb, cumulative=False),
            "states": {s: _dense(self._state_diff[s], nb, cumulative=True) for s in ORDER_STATES},
            "anomaly_starts": {cls: _dense(self._starts[cls], nb, cumulative=False) for cls in ANOMALY_CLASSES},
            "money_at_risk": [v / 100.0 for v in _dense(self._risk_diff, nb, cumulative=True)],
        }


def _add(series: dict[int, int], k: int, v: int) -> None:
    series[k] = series.get(k, 0) + v


def _dense(series: dict[int, int], nb: int, cumulative: bool) -> list[int]:
    out = [0] * nb
    if cumulative:
        below = sum(v for k, v in series.items() if k < 0)
        for k, v in series.items():
            if 0 <= k < nb:
                out[k] += v
        run = below
        for k in range(nb):
            run += out[k]
            out[k] = run
    else:
        for k, v in series.items():
            if 0 <= k < nb:
                out[k] += v
    return out


def _pick_examples(acc: _ClassAcc, end: float) -> list[dict[str, Any]]:
    def valid(ex: dict[str, Any] | None) -> bool:
        return ex is not None and (ex["stop"] is not None or ex["start"] < end)

    def window(ex: dict[str, Any]) -> float:
        return (end if ex["stop"] is None else ex["stop"]) - ex["start"]

    worst = None
    for cand in (acc.worst_r, acc.worst_u):
        if valid(cand) and (worst is None or window(cand) > window(worst)):
            worst = cand
    out: list[dict[str, Any]] = []
    for role, ex in (("first", acc.first), ("worst", worst), ("last", acc.last)):
        if not valid(ex):
            continue
        for prev in out:
            if prev["_ex"] is ex:
                prev["roles"].append(role)
                break
        else:
            out.append({
                "_ex": ex,
                "role": role,
                "roles": [role],
                "order": ex["order"],
                "start": ex["start"],
                "window_s": window(ex),
                "amount": ex["amount_fen"] / 100.0,
                "resolved": ex["stop"] is not None,
                "events": list(ex["events"]),
            })
    for item in out:
        del item["_ex"]
    return out


def _end_state(st: _OrderState) -> str:
    """One name for how an order ended (docs/checker.md lists them in this order of precedence)."""
    if st.charged_trades >= 2 or st.overcharged:
        return "double_charged"
    if st.agreement is not None:
        if st.agreement_end == "expired":
            return "bnpl_expired"
        if st.agreement_end != "cancelled":
            if st.finish_requested:
                if st.bnpl_paid or st.settled:
                    return "bnpl_settled"
                if st.compensated:
                    return "bnpl_compensated_overdue"
                if st.ded_failed:
                    return "bnpl_deduction_failing"
                return "bnpl_deduction_pending"
            if st.delivered_t is not None and st.ostate in _PAID_STATES:
                return "bnpl_unfinished"
    if st.reopened_stock_released and not st.closed:
        return "resurrected_stock_released"
    if st.closed:
        if st.total > 0:
            if st.ostate == "refund_pending":
                return "paid_closed_refund_failed" if st.refund_failed else "paid_closed_refund_pending"
            return "paid_closed_unrefunded"
        if st.ever_charged:
            return "paid_closed_refunded"
        if any(s in _PENDING_TRADE for s, _ in st.trade_state.values()):
            return "unknown_past_timeout"
        if any(s in _PAYABLE_TRADE for s, _ in st.trade_state.values()):
            return "unpaid_closed_trade_payable"
        return "unpaid_closed"
    if st.ostate in _PAID_STATES:
        if not st.bnpl and st.charged_trades == 0:
            return "order_paid_no_charge"
        return "paid_open"
    if st.ostate == "refund_pending":
        return "paid_refund_failed" if st.refund_failed and st.total > 0 else "paid_refund_pending"
    if st.ostate == "refunded":
        return "paid_refunded"
    if any(s in _PENDING_TRADE for s, _ in st.trade_state.values()):
        return "unknown_past_timeout"
    return "awaiting_payment"


def check_events(events: Iterable[dict[str, Any]], config: CheckConfig | None = None) -> CheckSummary:
    """Feed every event to a fresh :class:`Checker` and return its summary."""
    checker = Checker(config)
    feed = checker.feed
    for event in events:
        feed(event)
    return checker.finish()
