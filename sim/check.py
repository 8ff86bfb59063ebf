"""The oracle: read a history of events, name every anomaly, its window and the money it holds.

The checker never looks at how a history was produced (simulation, live services, Locust clients). It
groups events by ``order``; when an order's ``order.end`` arrives (or at the end of observation) it
sorts that order's events by time and *sweeps* them once, keeping what each party believes (order
state, gateway trade states, the user's net charge per trade from the ledger, the last payment screen
the buyer saw, the BNPL agreement) and evaluating every anomaly rule at each event time and at each
deadline (``expires_at + stuck_grace``, ``delivered + bnpl_finish_limit`` …). An anomaly *instance* is
an interval ``[start, stop)`` during which a rule holds: ``stop`` is when the parties agreed again
(repaired), or ``None`` when they still disagree at the end of observation (counted in ``count``).
A *plain* order — paid by one charge of its amount (or one BNPL deduction, finish sent in time) and
fulfilled, or closed unpaid, its events in time order and no rule holding after any of them — is
judged without the sweep (:meth:`Checker._judge_plain`, about nine in ten of a simulation's orders),
with exactly the sweep's result; anything else goes through the sweep.

Memory is bounded by the orders in flight: ``feed`` appends to a per-order list, and an order's events
are dropped once it is judged. :meth:`Checker.feed` trusts its events (the simulation's are well
formed); histories from files go through :func:`read_history` / :func:`merge_histories`, which refuse
every malformed line with a :class:`Problem` instead. The rules are written out in ``docs/checker.md``.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import heapq
import json
import math
import os
import shutil
import tempfile
from array import array
from collections import deque
from dataclasses import dataclass, field, fields, replace
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from sim.errors import ConfigError, HistoryError
from sim.vocabulary import ANOMALY_CLASSES, EVENT_TYPES, OBSERVATION_SOURCES

__all__ = [
    "ORDER_STATES",
    "END_STATES",
    "CLASS_NEEDS",
    "NEEDS_OWN_EVENTS",
    "CSV_FILE",
    "CheckConfig",
    "ClassStats",
    "CheckSummary",
    "Checker",
    "Instance",
    "Problem",
    "Problems",
    "AnomalyCsv",
    "check_events",
    "read_history",
    "iter_history",
    "merge_histories",
    "validate_event",
    "suggest_event_type",
    "write_anomalies_csv",
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
    "refunded_and_shipped",
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

# What each class needs to have been observed to be decided ("money": the ledger or, failing it, the
# gateway's trade events). ``stuck_pending`` is decided from the checkout's orders or the gateway's trades.
CLASS_NEEDS: dict[str, tuple[str, ...]] = {
    "paid_but_closed": ("checkout", "money"),
    "success_shown_then_closed": ("checkout", "screens"),
    "failure_shown_but_charged": ("screens", "money"),
    "double_charge": ("money",),
    "charge_without_order": ("checkout", "money"),
    "order_paid_without_charge": ("checkout", "money"),
    "stuck_pending": ("checkout|gateway",),
    "bnpl_stuck_unfinished": ("checkout", "bnpl"),
    "bnpl_false_overdue": ("bnpl",),
    "bnpl_deduction_failed": ("bnpl",),
    "ledger_imbalance": ("ledger",),
    "amount_mismatch": ("checkout", "money"),
    "over_refund": ("money",),
    "refund_to_wrong_party": ("ledger",),
    "duplicate_fulfilment": ("checkout",),
    "oversold": ("checkout",),
    "bnpl_double_deduction": ("bnpl",),
    "refunded_and_shipped": ("checkout",),
}

# Classes a black-box history cannot decide: they need the checkout's own events (shipments, deliveries,
# stock released by a close), which its order pages do not show (docs/checker.md, "Judged from outside").
# A history is black box when ``CheckConfig.black_box`` or ``run.start``'s ``"black_box": true`` says so
# (a ``load --target`` run writes it).
NEEDS_OWN_EVENTS: tuple[str, ...] = ("bnpl_stuck_unfinished", "duplicate_fulfilment", "oversold",
                                     "refunded_and_shipped")
BLACK_BOX_HOW = "order pages only (black box)"

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
_KNOWN_TYPES = frozenset(EVENT_TYPES)
_SOURCE_OF = {typ: src for src, types in OBSERVATION_SOURCES.items() for typ in types}
# Config fields a ``run.start`` event may fill.
_RUN_START_FIELDS = ("warmup", "horizon", "end", "stuck_grace", "bnpl_finish_limit")
# Ended order ids remembered to recognise events that arrive after ``order.end`` (bounded).
_ENDED_MEMORY = 100_000
# Distinct unknown event types named in the summary (the rest are counted under "…").
_UNKNOWN_NAMES = 100
# A longer observation gets a wider timeline bucket (an integer multiple of the one asked for).
MAX_TIMELINE_BUCKETS = 20_000

# What a history line may hold (docs/events.md): bounds that no real checkout comes near.
MAX_AMOUNT_FEN = 10**12  # ¥10 billion
MAX_SECONDS = 1e10  # about 317 years
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 32

_BY_T = itemgetter("t")

(_PBC, _SSTC, _FSBC, _DOUBLE, _CWO, _OPWC, _STUCK, _BNPL_UNFIN, _BNPL_OVERDUE, _BNPL_DED, _LEDGER,
 _MISMATCH, _OVER_REFUND, _WRONG_PARTY, _DUP_FULFIL, _OVERSOLD, _BNPL_DOUBLE, _REFUNDED_SHIPPED) = ANOMALY_CLASSES


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
    # What the history observed (source -> bool, sources of OBSERVATION_SOURCES); a source left out is
    # taken from run.start's ``observed``, else inferred from the events seen.
    observed: dict[str, bool] | None = None
    instances: bool = True  # keep every instance in CheckSummary.instances (when no sink streams them)
    # True: the checkout is seen only from outside (its order pages, ``order.observed``), not through its
    # own events; the classes of NEEDS_OWN_EVENTS are not observable. None: as run.start says, else False.
    black_box: bool | None = None


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
    windows_open: list[bool] = field(default_factory=list)  # per ``windows`` item: still open (censored at end)
    orders_occurred: int = 0  # counted orders with at least one instance (repaired or not)
    orders_unresolved: int = 0  # counted orders with an instance still open at the end
    observable: bool = True  # False: the history did not observe what this class needs (counts are 0)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Instance(NamedTuple):
    """One anomaly instance, a row of ``anomalies.csv``."""

    cls: str
    order: Any
    counted: bool  # the order was created in [warmup, horizon)
    trades: tuple[Any, ...]
    user: Any
    amount_fen: int  # held at the end (open) or at its peak (repaired)
    start: float
    stop: float | None  # None: open at the end of observation
    repaired_by: str  # the events at ``stop`` ("" when open)


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
    late_events: int = 0  # events for an order after its order.end (not judged; reported)
    unattributed_events: int = 0  # events with no ``order`` (other than run.*), ignored
    orders_uncreated: int = 0  # orders in the window with an anomaly but no order.created (not in ``orders``)
    seed: int | None = None  # from run.start, when it carries one
    orders_seen: int = 0  # order ids judged, counted or not
    duplicate_events: int = 0  # repeated event ids / ledger txn ids, and repeated order.end (ignored)
    unknown_types: dict[str, int] = field(default_factory=dict)  # event type -> events (ignored)
    observed: dict[str, bool] = field(default_factory=dict)  # source -> observed (OBSERVATION_SOURCES)
    observed_how: dict[str, str] = field(default_factory=dict)  # source -> "declared" / "seen" / "not seen" / …
    money_from: str | None = "ledger"  # "ledger", "trade events" or None (money not observed)
    inferred: dict[str, int] = field(default_factory=dict)  # what the checker had to infer, and how often
    instances: list[Instance] | None = None  # every instance (not in to_dict); None when streamed or off

    @property
    def not_observable(self) -> list[str]:
        """Classes this history cannot decide (reported as not observable, not as 0)."""
        return [cls for cls, s in self.per_class.items() if not s.observable]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "instances"}
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

    __slots__ = ("repaired", "rmax", "rsum", "samples", "u_start", "u_amount", "first", "last", "worst_r", "worst_u",
                 "r_orders", "r_judge", "u_judge")

    def __init__(self, cap: int) -> None:
        self.repaired = 0
        self.rmax = 0.0
        self.rsum = 0.0
        self.samples = _Samples(cap)  # items: (window or None, start)
        self.u_start = array("d")
        self.u_amount = array("q")
        self.r_orders = 0  # orders with a repaired instance
        self.r_judge = -1  # the judgement that last recorded a repaired instance
        self.u_judge = array("q")  # per unresolved instance: its judgement, negated when that order also had a repaired one
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.worst_r: dict[str, Any] | None = None  # longest resolved window
        self.worst_u: dict[str, Any] | None = None  # earliest unresolved start


# --------------------------------------------------------------------------------------------------
# Problems: every line the checker cannot take, counted and named


@dataclass(frozen=True)
class Problem:
    """One refused line (or unreadable file tail): where, which field, what was expected, what was found."""

    file: str
    line: int | None
    field: str | None
    expected: str
    found: str
    text: str  # the message without the location

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "expected": self.expected,
                "found": self.found, "message": str(self)}


class Problems:
    """Problems counted in full, the first ``keep`` kept to be shown."""

    def __init__(self, keep: int = 200) -> None:
        self.count = 0
        self.keep = keep
        self.items: list[Problem] = []
        self.by_field: dict[str, int] = {}

    def add(self, problem: Problem) -> None:
        self.count += 1
        key = problem.field or "(line)"
        self.by_field[key] = self.by_field.get(key, 0) + 1
        if len(self.items) < self.keep:
            self.items.append(problem)

    def __len__(self) -> int:
        return self.count

    def to_dict(self, first: int = 20) -> dict[str, Any]:
        return {"count": self.count, "by_field": dict(sorted(self.by_field.items())),
                "first": [p.to_dict() for p in self.items[:first]]}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(name: str, expected: str, value: Any) -> tuple[str, str, str, str]:
    found = _show(value)
    return name, expected, found, f"field '{name}' must be {expected}, found {found}"


# --------------------------------------------------------------------------------------------------
# Validating one event


_ID = "a string or an integer id"
_AMOUNT = "an integer amount in fen (minor units) within ±10^12"
_SECONDS = "a finite number of seconds within ±1e10"


def _check_id(e: dict[str, Any], name: str, v: Any) -> tuple[str, str, str, str] | None:
    if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return None
    return _bad(name, _ID, v)


def _check_str(e: dict[str, Any], name: str, v: Any) -> tuple[str, str, str, str] | None:
    return None if isinstance(v, str) else _bad(name, "a string", v)


def _amount(v: Any) -> int | None:
    """``v`` as an amount in fen, or None when it is not one (integral floats are taken)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -MAX_AMOUNT_FEN <= v <= MAX_AMOUNT_FEN else None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) <= MAX_AMOUNT_FEN:
        return int(v)
    return None


def _check_amount(e: dict[str, Any], name: str, v: Any) -> tuple[str, str, str, str] | None:
    a = _amount(v)
    if a is None:
        return _bad(name, _AMOUNT, v)
    if a is not v:
        e[name] = a
    return None


def _seconds_ok(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and -MAX_SECONDS <= v <= MAX_SECONDS)


def _check_seconds(e: dict[str, Any], name: str, v: Any) -> tuple[str, str, str, str] | None:
    return None if _seconds_ok(v) else _bad(name, _SECONDS, v)


def _check_postings(e: dict[str, Any], name: str, v: Any) -> tuple[str, str, str, str] | None:
    if not isinstance(v, list):
        return _bad(name, "a list of {account, amount} objects", v)
    for k, p in enumerate(v):
        where = f"{name}[{k}]"
        if not isinstance(p, dict):
            return _bad(where, "an object {account, amount}", p)
        acct = p.get("account")
        if acct is not None and not isinstance(acct, str):
            return _bad(where + ".account", "a string", acct)
        a = p.get("amount")
        if a is not None:
            amt = _amount(a)
            if amt is None:
                return _bad(where + ".amount", _AMOUNT, a)
            if amt is not a:
                p["amount"] = amt
    return None


_FIELD_CHECKS: dict[str, Callable[[dict[str, Any], str, Any], tuple[str, str, str, str] | None]] = {
    "order": _check_id, "trade": _check_id, "agreement": _check_id, "user": _check_id, "txn": _check_id,
    "id": _check_id,
    "screen": _check_str, "method": _check_str, "kind": _check_str,
    "amount": _check_amount,
    "expires_at": _check_seconds,
    "postings": _check_postings,
}


def _check_run_start(e: dict[str, Any]) -> tuple[str, str, str, str] | None:
    for name in _RUN_START_FIELDS:
        v = e.get(name)
        if v is None:
            continue
        if not _seconds_ok(v):
            return _bad(name, _SECONDS, v)
        if name in ("stuck_grace", "bnpl_finish_limit") and v < 0:
            return _bad(name, "a non-negative number of seconds", v)
    if "black_box" in e and not isinstance(e["black_box"], bool):
        return _bad("black_box", "true or false", e["black_box"])
    obs = e.get("observed")
    if obs is not None:
        expected = "an object {source: true/false} of sources " + ", ".join(OBSERVATION_SOURCES)
        if not isinstance(obs, dict):
            return _bad("observed", expected, obs)
        for k, v in obs.items():
            if k not in OBSERVATION_SOURCES:
                return _bad(f"observed.{k}", "one of the sources " + ", ".join(OBSERVATION_SOURCES), k)
            if not isinstance(v, bool):
                return _bad(f"observed.{k}", "true or false", v)
    return None


def validate_event(e: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """The first field of ``e`` the checker cannot take: ``(field, expected, found, message)``, or None.

    Normalises in place what it can take without doubt (an amount written ``5000.0`` becomes ``5000``).
    """
    if "t" not in e:
        return "t", "a number of seconds since the run started", "nothing", \
            "missing field 't' (seconds since the run started)"
    t = e["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        found = _show(t)
        return "t", "a finite number", found, f"field 't' must be a finite number, found {found}"
    if not -MAX_SECONDS <= t <= MAX_SECONDS:
        return _bad("t", _SECONDS, t)
    typ = e.get("type")
    if not isinstance(typ, str) or not typ:
        if "type" not in e:
            return "type", "a string", "nothing", "missing field 'type'"
        return _bad("type", "a string", typ) if not isinstance(typ, str) else _bad("type", "a non-empty string", typ)
    for name, v in e.items():
        check = _FIELD_CHECKS.get(name)
        if check is not None and v is not None:
            bad = check(e, name, v)
            if bad is not None:
                return bad
    if typ == "run.start":
        return _check_run_start(e)
    return None


def suggest_event_type(name: str) -> str | None:
    """The known event type ``name`` is most likely a typo of, if any."""
    close = difflib.get_close_matches(name, EVENT_TYPES, n=1, cutoff=0.75)
    return close[0] if close else None


# --------------------------------------------------------------------------------------------------
# Reading histories


def _open_history(p: Path) -> Any:
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise HistoryError(f"{p}: no such history file") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise HistoryError(f"{p}: cannot read history file ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise HistoryError(f"{p}: cannot read history file ({exc.__class__.__name__}: {exc})") from None
    try:
        head = fh.peek(2)[:2]
    except OSError as exc:
        fh.close()
        raise HistoryError(f"{p}: cannot read history file ({exc.__class__.__name__}: {exc})") from None
    if head == b"\x1f\x8b":  # gzip, whatever the name says
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return fh


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if d > MAX_DEPTH:
                break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _looks_like_csv(text: str) -> bool:
    s = text.strip()
    return bool(s) and s[0] not in "{[\"" and s.count(",") >= 1


def _parse(raw: bytes) -> dict[str, Any] | tuple[str | None, str, str, str]:
    """One line: the event, or ``(field, expected, found, message)`` of why it is refused."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        found = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
        return None, "UTF-8 text", found, f"not UTF-8 text ({found})"
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, "a JSON object", "not valid JSON", f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "a JSON object", "nesting too deep", f"not valid JSON (nested deeper than {MAX_DEPTH} levels)"
    except ValueError as exc:  # e.g. an integer of more digits than Python reads
        found = str(exc).split(":")[0]
        return None, "a JSON object", found, f"not valid JSON ({found})"
    if not isinstance(event, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(event), "number")
        return None, "a JSON object", kind, f"expected a JSON object, found {kind}"
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(event) > MAX_DEPTH:
        return None, f"at most {MAX_DEPTH} levels of nesting", "deeper", \
            f"nested deeper than {MAX_DEPTH} levels (an event is an object of plain fields)"
    if b"\\u" in raw and _has_surrogate(event):
        return None, "valid Unicode text", "a lone surrogate escape", \
            "holds a lone UTF-16 surrogate escape (\\ud800–\\udfff), which is not text"
    bad = validate_event(event)
    if bad is not None:
        return bad
    return event


def iter_history(path: str | Path, problems: Problems | None = None) -> Iterator[tuple[dict[str, Any], int]]:
    """``(event, line number)`` of a JSON Lines history (``.gz``, or gzip by content, too).

    Blank lines are skipped. A line the checker cannot take raises :class:`HistoryError` when
    ``problems`` is None; otherwise it is added to ``problems`` and reading goes on. A file whose first
    line looks like CSV (or one JSON document) is refused as a whole: it is not a history at all.
    """
    p = Path(path)
    name = str(p)
    fh = _open_history(p)
    with fh:
        lineno = 0
        first = True
        while True:
            try:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while True:  # skip the rest of the line
                        rest = fh.readline(MAX_LINE_BYTES)
                        if not rest or rest.endswith(b"\n"):
                            break
                    lineno += 1
                    _refuse(problems, Problem(name, lineno, None, "a line of at most 1 MiB", "a longer line",
                                              "line longer than 1 MiB"))
                    continue
            except (OSError, EOFError) as exc:
                if lineno == 0 and isinstance(fh, gzip.GzipFile):
                    raise HistoryError(f"{name}: this looks like gzip (it starts with the gzip magic bytes) but "
                                       f"is not a valid gzip file ({exc.__class__.__name__}: {exc}); expected JSON "
                                       "Lines, plain or gzip-compressed") from None
                _refuse(problems, Problem(name, lineno + 1, None, "readable data", exc.__class__.__name__,
                                          f"cannot read further ({exc.__class__.__name__}: {exc})"))
                return
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            got = _parse(raw)
            if first:
                first = False
                if not isinstance(got, dict):
                    text = raw.decode("utf-8", "replace")
                    if got[0] is None and _looks_like_csv(text):
                        raise HistoryError(f"{name}:{lineno}: this looks like CSV; expected JSON Lines "
                                           "(one JSON object per line, docs/events.md)")
                    if got[0] is None and text.strip() == "[":
                        raise HistoryError(f"{name}:{lineno}: this looks like one JSON document; expected "
                                           "JSON Lines (one JSON object per line, docs/events.md)")
            if isinstance(got, dict):
                yield got, lineno
            else:
                fld, expected, found, text = got
                _refuse(problems, Problem(name, lineno, fld, expected, found, text))


def _refuse(problems: Problems | None, problem: Problem) -> None:
    if problems is None:
        raise HistoryError(str(problem))
    problems.add(problem)


def read_history(path: str | Path, problems: Problems | None = None) -> Iterator[dict[str, Any]]:
    """Events of a JSON Lines history (see :func:`iter_history`; without ``problems`` a bad line raises)."""
    for event, _ in iter_history(path, problems):
        yield event


def merge_histories(paths: Iterable[str | Path], problems: Problems | None = None
                    ) -> Iterator[tuple[dict[str, Any], str, int]]:
    """``(event, file, line)`` of several histories merged by time, whatever order they are given in.

    Each file is read as a stream (assumed roughly in time order, as every producer writes them). Ties
    in ``t``: ``order.end`` after every other event of that time, then by file name, then by line.
    """
    names = [str(p) for p in paths]
    seen: set[str] = set()
    for n in names:
        key = os.path.realpath(n)
        if key in seen:
            raise HistoryError(f"{n}: given twice (each history file once)")
        seen.add(key)
    names.sort()
    if len(names) == 1:
        name = names[0]
        for event, line in iter_history(name, problems):
            yield event, name, line
        return

    def keyed(k: int, name: str) -> Iterator[tuple[Any, ...]]:
        for event, line in iter_history(name, problems):
            yield event["t"], event["type"] == "order.end", k, line, event

    for _t, _end, k, line, event in heapq.merge(*(keyed(k, n) for k, n in enumerate(names))):
        yield event, names[k], line


# --------------------------------------------------------------------------------------------------
# One order's judgement


class _OrderState:
    """What every party believes about one order, as the sweep goes."""

    __slots__ = (
        "grace", "limit", "timers", "created", "created_t", "amount", "user", "expires_at", "ostate", "closed",
        "reopened_stock_released", "stock_released", "bnpl", "net", "max_charge", "n_charges", "trade_amount",
        "trade_state", "total", "charged_trades", "overcharged", "extra", "ever_charged", "refund_seen",
        "told_failed", "success_t", "agreement", "agreement_amount", "delivered_t", "finish_requested",
        "bnpl_paid", "ded_failed", "false_overdue", "compensated", "settled", "agreement_end", "imbalances",
        "payer", "wrong", "wrong_total", "over_refunded", "mismatch", "txns", "infer", "charged_amt",
        "refunded_amt", "shipped", "dup_fulfil", "bnpl_payments", "ok_attempts", "bnpl_refund", "money_ok",
        "checkout_ok", "bnpl_ok", "refund_failed", "own", "cancel_after_ship",
    )

    def __init__(self, grace: float, limit: float, flags: tuple[bool, bool, bool, bool]) -> None:
        self.grace = grace  # stuck_grace
        self.limit = limit  # bnpl_finish_limit
        # infer money from trade events (no ledger); money, checkout and BNPL provider observed
        self.infer, self.money_ok, self.checkout_ok, self.bnpl_ok = flags
        self.timers: list[float] = []  # heap of deadlines still ahead of the sweep
        self.created = False
        self.created_t: float | None = None
        self.amount = 0
        self.user: Any = None
        self.expires_at: float | None = None
        self.ostate: str | None = None
        self.closed = False  # closed and not reopened since
        self.reopened_stock_released = False  # revived (reopened or paid) after its stock was released
        self.stock_released = False  # the last close released the stock
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
        self.payer: dict[Any, str] = {}  # trade -> the user account its charge came from
        self.wrong: dict[str, int] | None = None  # account -> refunds credited to someone else than the payer
        self.wrong_total = 0
        self.over_refunded = 0  # sum of negative net charges (refunded more than charged)
        self.mismatch = 0  # |charge − order amount| over the charged trades
        self.txns: set[Any] | None = None  # ledger txn ids seen (a repeated one is ignored)
        self.charged_amt: dict[Any, int] = {}  # trade -> charged, inferred from trade.succeeded (no ledger)
        self.refunded_amt: dict[Any, int] = {}  # trade -> refunded, inferred from trade.refunded (no ledger)
        self.shipped = False
        self.dup_fulfil = False  # fulfilled twice (shipped twice, or marked paid while already paid)
        self.bnpl_payments = 0  # successful deductions and manual repayments
        self.ok_attempts: set[Any] | None = None
        self.bnpl_refund = 0  # refunds of BNPL payments (ledger refunds carrying an agreement)
        self.refund_failed = False  # the order service gave up retrying a refund (order.refund_failed)
        self.cancel_after_ship = False  # a cancel request accepted after the goods shipped (after_sales.accepted)
        self.own: bool | None = None  # the checkout's own events tell this order's state (None: not asked yet)

    def recompute_money(self) -> None:
        total = charged = 0
        best = 0
        over = False
        neg = 0
        mism = 0
        amount = self.amount
        for trade, n in self.net.items():
            if n > 0:
                total += n
                charged += 1
                mc = self.max_charge.get(trade, n)
                if self.n_charges.get(trade, 0) >= 2 and n > mc:
                    over = True
                best = max(best, min(n, mc))
                if amount > 0 and mc != amount:
                    mism += abs(mc - amount)
            elif n < 0:
                neg -= n
        self.total, self.charged_trades, self.overcharged = total, charged, over
        self.extra = total - best if (charged >= 2 or over) else 0
        self.over_refunded, self.mismatch = neg, mism
        if total > 0:
            self.ever_charged = True


def _num(value: Any) -> int:
    """An amount from an event field; anything that is not a number counts as 0."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _refund_trade(chk: "Checker", st: _OrderState) -> Any:
    """The trade a refund without ``trade`` is for: the order's charged trade (the first of several)."""
    charged = [tr for tr, n in st.net.items() if n > 0]
    if not charged:
        charged = list(st.net) or [tr for tr, (s, _) in st.trade_state.items() if s == "succeeded"]
    if not charged:
        chk._infer("refund_without_trade_unattributed")
        return None
    chk._infer("refund_trade_inferred" if len(charged) == 1 else "refund_trade_inferred_ambiguous")
    return charged[0]


# --------------------------------------------------------------------------------------------------
# Event handlers: how each event changes what the parties believe (events no rule reads have none)


def _h_ledger(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    txn = e.get("txn")
    if txn is not None:
        txns = st.txns
        if txns is None:
            st.txns = {txn}
        elif txn in txns:
            chk._dup += 1  # the same money movement recorded twice moves the money once
            return
        else:
            txns.add(txn)
    kind = e.get("kind")
    trade = e.get("trade")
    bnpl_refund = False
    payer = None
    if kind == "refund":
        if trade is None:
            if e.get("agreement") is not None:
                bnpl_refund = True
            else:
                trade = _refund_trade(chk, st)
        payer = st.payer.get(trade)
        if payer is None and st.user is not None:
            payer = f"user:{st.user}"
    total = user = 0
    for p in e.get("postings") or ():
        if not isinstance(p, dict):
            continue
        a = _num(p.get("amount"))
        total += a
        acct = p.get("account")
        if isinstance(acct, str) and acct.startswith("user:"):
            if payer is None or acct == payer:
                user += a
                if kind == "charge" and a < 0 and trade not in st.payer:
                    st.payer[trade] = acct
            else:  # a refund credited (or clawed back from) someone else than who paid
                wrong = st.wrong
                if wrong is None:
                    wrong = st.wrong = {}
                wrong[acct] = wrong.get(acct, 0) + a
                st.wrong_total = sum(v for v in wrong.values() if v > 0)
    if total != 0:
        st.imbalances.append(abs(total))
    if bnpl_refund:
        st.bnpl_refund += user
    elif kind == "charge" or kind == "refund":
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
    if typ == "trade.created":
        st.trade_amount[trade] = _num(e.get("amount"))
    elif st.infer:  # no ledger: the gateway's word is the money
        if typ == "trade.succeeded":
            amt = _num(e.get("amount")) or st.trade_amount.get(trade) or st.amount
            st.charged_amt[trade] = amt
            st.max_charge[trade] = amt
            st.n_charges[trade] = 1
            st.net[trade] = amt - st.refunded_amt.get(trade, 0)
            st.recompute_money()
        elif typ == "trade.refunded":
            if trade is None:
                trade = _refund_trade(chk, st)
            amt = _num(e.get("amount")) or st.charged_amt.get(trade, 0)  # the total refunded so far
            st.refunded_amt[trade] = amt
            if amt > 0:
                st.refund_seen = True
            st.net[trade] = st.charged_amt.get(trade, 0) - amt
            st.recompute_money()
    st.trade_state[trade] = (state, t)


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
    st.user = e.get("user")
    st.bnpl = e.get("method") == "bnpl"
    if st.bnpl:
        chk._bnpl_orders += 1
    exp = e.get("expires_at")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        st.expires_at = exp
        heapq.heappush(st.timers, exp + st.grace)
    if st.net:
        st.recompute_money()
    chk._set_ostate(st, "awaiting_payment", t)


def _h_paid(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    agreement = e.get("agreement")
    if agreement is not None:
        if not st.bnpl:
            chk._bnpl_orders += 1
        st.bnpl = True
        if st.agreement is None:
            st.agreement = agreement
    if st.closed:  # a payment recorded on a closed order revives it
        if st.stock_released:
            st.reopened_stock_released = True
    elif st.ostate in _PAID_STATES:
        st.dup_fulfil = True  # marked paid again: the fulfilment ran again
    st.closed = False
    chk._set_ostate(st, "paid", t)


def _h_closed(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.closed = True
    st.stock_released = bool(e.get("stock_released"))
    chk._set_ostate(st, "closed", t)


def _h_reopened(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.closed = False
    st.reopened_stock_released = bool(e.get("stock_released", st.stock_released))
    chk._set_ostate(st, "paid", t)


def _h_fulfilment(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    state = _ORDER_STATE_OF[e["type"]]
    if state == "shipped":
        if st.shipped:
            st.dup_fulfil = True
        st.shipped = True
    elif state == "delivered" and st.delivered_t is None:
        st.delivered_t = t
        heapq.heappush(st.timers, t + st.limit)
    chk._set_ostate(st, state, t)


def _h_merchant_fulfilment(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    """The merchant's fulfilment request (the simulation's ``merchant.fulfilment``): one numbered
    ``shipment`` 2 or more ships the goods of the order a second time."""
    shipment = e.get("shipment")
    if isinstance(shipment, int) and not isinstance(shipment, bool) and shipment >= 2:
        st.dup_fulfil = True


def _h_refund_failed(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    st.refund_failed = True


def _h_after_sales_accepted(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    """A cancel request (``route = ask_merchant``) accepted after ``order.shipped``: the refund that
    follows pays back goods already gone (end state ``refunded_and_shipped``)."""
    if e.get("route") == "ask_merchant" and st.shipped:
        st.cancel_after_ship = True


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
            attempt = e.get("attempt")
            if attempt is None or isinstance(attempt, (dict, list)):
                st.bnpl_payments += 1
            else:  # one attempt reported twice is one deduction
                seen = st.ok_attempts
                if seen is None:
                    seen = st.ok_attempts = set()
                if attempt not in seen:
                    seen.add(attempt)
                    st.bnpl_payments += 1
        else:
            st.ded_failed = True
    elif typ == "bnpl.repaid":
        st.bnpl_paid = True
        st.bnpl_payments += 1
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


# The checkout's own word on an order's state (an ``order.observed`` is only the harness reading its page).
_OWN_STATE_TYPES = frozenset({"order.created", "order.paid", "order.closed", "order.reopened", *_ORDER_STATE_OF})


def _h_observed(chk: "Checker", st: _OrderState, e: dict[str, Any], t: float) -> None:
    """The order's page, read from outside (``order.observed``): the first observation of a state is
    when the order entered it, unless the checkout's own events tell this order's state (then they do)."""
    if st.own is None:
        st.own = any(ev.get("type") in _OWN_STATE_TYPES and "observed_by" not in ev for ev in chk._judging)
    if st.own:
        return
    state = e.get("state")
    if state == "paid":
        if st.closed or st.ostate not in _PAID_STATES:
            _h_paid(chk, st, e, t)
    elif state == "closed":
        if not st.closed:
            _h_closed(chk, st, e, t)
    elif state == "refunded":
        if st.ostate != "refunded":
            chk._set_ostate(st, "refunded", t)


_HANDLERS: dict[str, Any] = {
    "ledger.txn": _h_ledger,
    "app.shown": _h_screen,
    "user.pay": _h_attempt,
    "user.retry": _h_attempt,
    "order.created": _h_created,
    "order.paid": _h_paid,
    "order.closed": _h_closed,
    "order.reopened": _h_reopened,
    "order.observed": _h_observed,
    **{typ: _h_trade for typ in _TRADE_STATE_OF},
    **{typ: _h_fulfilment for typ in _ORDER_STATE_OF},
    "order.refund_pending": _h_refund_pending,
    "order.refund_failed": _h_refund_failed,
    "merchant.fulfilment": _h_merchant_fulfilment,
    "after_sales.accepted": _h_after_sales_accepted,
    **{f"bnpl.{x}": _h_bnpl for x in ("authorized", "finish_requested", "deduction", "repaid", "overdue",
                                      "overdue_cleared", "compensated", "settled", "cancelled", "expired")},
}


# What :meth:`Checker._judge_plain` takes of each event type (any other type: the order goes to the sweep).
(_PP_TCREATED, _PP_LEDGER, _PP_TSUCCEEDED, _PP_TFAILED, _PP_TCLOSED, _PP_SCREEN, _PP_ATTEMPT, _PP_PAID, _PP_FULFIL,
 _PP_SHIPPED, _PP_DELIVERED, _PP_COMPLETED, _PP_CLOSED, _PP_BNPL_AUTH, _PP_BNPL_FINISH, _PP_BNPL_DEDUCT,
 _PP_BNPL_SETTLED, _PP_PASS) = range(18)
_PLAIN_CODES: dict[str, int] = {
    "trade.created": _PP_TCREATED, "ledger.txn": _PP_LEDGER, "trade.succeeded": _PP_TSUCCEEDED,
    "trade.failed": _PP_TFAILED, "trade.closed": _PP_TCLOSED, "app.shown": _PP_SCREEN, "user.pay": _PP_ATTEMPT,
    "user.retry": _PP_ATTEMPT, "order.paid": _PP_PAID, "merchant.fulfilment": _PP_FULFIL,
    "order.shipped": _PP_SHIPPED, "order.delivered": _PP_DELIVERED, "order.completed": _PP_COMPLETED,
    "order.closed": _PP_CLOSED, "bnpl.authorized": _PP_BNPL_AUTH, "bnpl.finish_requested": _PP_BNPL_FINISH,
    "bnpl.deduction": _PP_BNPL_DEDUCT, "bnpl.settled": _PP_BNPL_SETTLED,
    # no handler: no rule reads them
    "notify.sent": _PP_PASS, "notify.received": _PP_PASS, "notify.lost": _PP_PASS, "order.end": _PP_PASS,
    "user.abandon": _PP_PASS, "user.cancel": _PP_PASS, "bnpl.finish_sent": _PP_PASS, "bnpl.synced": _PP_PASS,
    "user.complaint": _PP_PASS, "after_sales.requested": _PP_PASS, "after_sales.refused": _PP_PASS,
}
_PLAIN_NEXT = {_PP_SHIPPED: "shipped", _PP_DELIVERED: "delivered", _PP_COMPLETED: "completed"}
_PLAIN_BEFORE = {"shipped": "paid", "delivered": "shipped", "completed": "delivered"}
_UNSET = object()
# The fast path restates these handlers: it is used only while the table still has them.
_PLAIN_HANDLERS = {"trade.created": _h_trade, "ledger.txn": _h_ledger, "trade.succeeded": _h_trade,
                   "trade.failed": _h_trade, "trade.closed": _h_trade, "app.shown": _h_screen,
                   "user.pay": _h_attempt, "user.retry": _h_attempt, "order.paid": _h_paid,
                   "merchant.fulfilment": _h_merchant_fulfilment, "order.shipped": _h_fulfilment,
                   "order.delivered": _h_fulfilment, "order.completed": _h_fulfilment, "order.closed": _h_closed,
                   "order.created": _h_created, "bnpl.authorized": _h_bnpl, "bnpl.finish_requested": _h_bnpl,
                   "bnpl.deduction": _h_bnpl, "bnpl.settled": _h_bnpl}
assert all(_HANDLERS.get(typ) is h for typ, h in _PLAIN_HANDLERS.items()), "update Checker._judge_plain"
assert all(typ in _KNOWN_TYPES and typ not in _HANDLERS for typ, c in _PLAIN_CODES.items() if c == _PP_PASS)


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
        if st.ostate in _PAID_STATES and not st.bnpl and st.charged_trades == 0 and st.money_ok:
            active[_OPWC] = st.amount
        if st.ostate == "awaiting_payment" and st.expires_at is not None and now >= st.expires_at + grace:
            active[_STUCK] = total
        if st.mismatch:
            active[_MISMATCH] = st.mismatch
    else:
        if total > 0 and st.checkout_ok:
            active[_CWO] = total
        if st.told_failed and total > 0:
            active[_FSBC] = total
    if st.charged_trades >= 2 or st.overcharged:
        active[_DOUBLE] = st.extra
    if st.over_refunded:
        active[_OVER_REFUND] = st.over_refunded
    if st.wrong_total:
        active[_WRONG_PARTY] = st.wrong_total
    if st.dup_fulfil:
        active[_DUP_FULFIL] = st.amount
    if st.reopened_stock_released and not st.closed and st.ostate in _PAID_STATES:
        active[_OVERSOLD] = st.amount
    if st.cancel_after_ship:  # a cancel accepted after the goods shipped: refunded (or never collected) and gone
        active[_REFUNDED_SHIPPED] = st.amount
    for trade, (state, since) in st.trade_state.items():
        if state in _PENDING_TRADE and now >= since + grace:
            active[(_STUCK, trade)] = st.trade_amount.get(trade) or st.max_charge.get(trade, 0)
    if st.agreement is not None:
        amount = st.agreement_amount or st.amount
        live = st.agreement_end != "cancelled"  # cancelled (after-sales): no finish or deduction is owed
        if (live and st.delivered_t is not None and not st.finish_requested and now >= st.delivered_t + limit
                and st.bnpl_ok):
            active[_BNPL_UNFIN] = amount
        if st.false_overdue:
            active[_BNPL_OVERDUE] = amount
        if live and st.ded_failed and not st.bnpl_paid:
            active[_BNPL_DED] = amount
        if st.bnpl_payments >= 2:
            extra = (st.bnpl_payments - 1) * amount - st.bnpl_refund
            if extra > 0:
                active[_BNPL_DOUBLE] = extra
    for k, amount in enumerate(st.imbalances):
        active[(_LEDGER, k)] = amount
    return active


def _describe(e: dict[str, Any]) -> str:
    typ = e.get("type")
    if typ == "ledger.txn":
        return f"ledger.txn {e.get('kind')}"
    if typ == "app.shown":
        return f"app.shown {e.get('screen')}"
    if typ == "bnpl.deduction":
        return "bnpl.deduction ok" if e.get("ok") is True else "bnpl.deduction failed"
    return str(typ)


class Checker:
    """Streaming oracle: :meth:`feed` events (any interleaving of orders), then :meth:`finish`.

    ``on_instance``, when given, receives every :class:`Instance` as soon as it is final (an open one
    once it is known to start before the end of observation), so a caller can stream them to a file;
    the summary then holds none. Otherwise ``CheckConfig.instances`` keeps them in the summary.
    """

    _plain = True  # judge plain orders without the sweep (:meth:`_judge_plain`; False: always sweep)

    def __init__(self, config: CheckConfig | None = None, respect_run_start: bool = True,
                 on_instance: Callable[[Instance], None] | None = None) -> None:
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
        self._dup = 0
        self._unknown: dict[str, int] = {}
        self._inferred: dict[str, int] = {}
        self._bnpl_orders = 0
        self._judged = 0
        self._last_t = 0.0
        self._run_end: float | None = None
        self._seed: int | None = None
        self._finished = False
        self._orders = 0
        self._judgements = 0  # orders judged so far: tells one order's instances from the next one's
        self._last_recorded = 0  # the judgement that last recorded a counted instance
        self._uncreated = 0
        self._end_states: dict[str, int] = {}
        self._acc = {cls: _ClassAcc(self.config.max_window_samples) for cls in ANOMALY_CLASSES}
        # timeline, as sparse difference series keyed by bucket index
        self._arrivals: dict[int, int] = {}
        self._state_diff: dict[str, dict[int, int]] = {s: {} for s in ORDER_STATES}
        self._starts: dict[str, dict[int, int]] = {cls: {} for cls in ANOMALY_CLASSES}
        self._risk_diff: dict[int, int] = {}
        # instances: streamed to the sink, or kept for the summary
        self._sink = on_instance
        self._pending: list[Instance] = []  # open instances that may start after the end of observation
        self._rows: list[Instance] | None = [] if (on_instance is None and self.config.instances) else None
        self._want_rows = on_instance is not None or self._rows is not None
        # what the history observed: declared (config, then run.start) or seen so far
        self._declared: dict[str, bool] = {}
        self._seen: set[str] = set()
        self._unseen: dict[str, str] = dict(_SOURCE_OF)  # event type -> source, for sources not yet seen
        self._handlers = _HANDLERS
        self._judging: list[dict[str, Any]] = []  # the events of the order being judged
        self._declare(self.config.observed or {}, override=True)

    @property
    def live_orders(self) -> int:
        """Orders whose events the checker holds now (not yet judged)."""
        return len(self._open)

    @property
    def late_events(self) -> int:
        """Events so far for an order after its ``order.end`` (not judged)."""
        return self._late

    # ---------------------------------------------------------------------------------------------
    # what was observed

    def _declare(self, declared: dict[str, bool], override: bool) -> None:
        for src, value in declared.items():
            if src in OBSERVATION_SOURCES and (override or src not in self._declared):
                self._declared[src] = bool(value)
        hidden = {t for src, v in self._declared.items() if not v for t in OBSERVATION_SOURCES[src]}
        self._handlers = {k: h for k, h in _HANDLERS.items() if k not in hidden} if hidden else _HANDLERS
        self._refresh_flags()

    def _saw(self, src: str) -> None:
        self._seen.add(src)
        for typ in OBSERVATION_SOURCES[src]:
            self._unseen.pop(typ, None)
        self._refresh_flags()

    def _refresh_flags(self) -> None:
        d, seen = self._declared, self._seen
        ledger = d.get("ledger", "ledger" in seen)
        gateway = d.get("gateway", "gateway" in seen)
        self._flags = (not ledger, ledger or gateway, d.get("checkout", "checkout" in seen),
                       d.get("bnpl", "bnpl" in seen))

    def _observation(self) -> tuple[dict[str, bool], dict[str, str]]:
        observed: dict[str, bool] = {}
        how: dict[str, str] = {}
        for src in OBSERVATION_SOURCES:
            if src in self._declared:
                observed[src], how[src] = self._declared[src], "declared"
            elif src in self._seen:
                observed[src], how[src] = True, "seen"
            elif src == "bnpl" and self._bnpl_orders == 0:
                observed[src], how[src] = True, "no BNPL orders"
            else:
                observed[src], how[src] = False, "not seen"
        return observed, how

    def _infer(self, what: str) -> None:
        self._inferred[what] = self._inferred.get(what, 0) + 1

    # ---------------------------------------------------------------------------------------------
    # streaming

    def feed(self, event: dict[str, Any]) -> None:
        """Take one event; judge its order if it is the order's ``order.end``."""
        self._events += 1
        t = event["t"]
        if t > self._last_t:
            self._last_t = t
        typ = event.get("type")
        unseen = self._unseen
        if unseen and typ in unseen:
            self._saw(unseen[typ])
        order = event.get("order")
        if order is None:
            if typ == "run.start":
                self._run_start(event)
            elif typ == "run.end":
                self._run_end = t if self._run_end is None else max(self._run_end, t)
            elif typ in _KNOWN_TYPES:
                self._unattributed += 1
            else:
                self._count_unknown(typ)
            return
        events = self._open.get(order)
        if events is None:
            if order in self._ended:
                if typ == "order.end":
                    self._dup += 1
                else:
                    self._late += 1
                return
            events = self._open[order] = []
            if len(self._open) > self.max_live_orders:
                self.max_live_orders = len(self._open)
        events.append(event)
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

    def _count_unknown(self, typ: Any) -> None:
        name = typ if isinstance(typ, str) else repr(typ)
        if name in self._unknown or len(self._unknown) < _UNKNOWN_NAMES:
            self._unknown[name] = self._unknown.get(name, 0) + 1
        else:
            self._unknown["…"] = self._unknown.get("…", 0) + 1

    def _run_start(self, event: dict[str, Any]) -> None:
        seed = event.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._seed = seed
        observed = event.get("observed")
        if isinstance(observed, dict):
            self._declare(observed, override=False)  # what the caller declared wins
        black_box = event.get("black_box")
        if isinstance(black_box, bool) and self.config.black_box is None:
            self.config = replace(self.config, black_box=black_box)
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
        observed, how = self._observation()
        blind = {cls for cls in ANOMALY_CLASSES if not _decidable(cls, observed)}
        if cfg.black_box:
            blind.update(NEEDS_OWN_EVENTS)
            if observed["checkout"]:
                how["checkout"] = BLACK_BOX_HOW
        if self._sink is not None:
            for row in self._pending:
                if row.start < end and row.cls not in blind:
                    self._sink(row)
            self._pending.clear()
        rows = None
        if self._rows is not None:
            rows = [r for r in self._rows if (r.stop is not None or r.start < end) and r.cls not in blind]
        per_class: dict[str, ClassStats] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        for cls, acc in self._acc.items():
            stats, ex = self._close_class(acc, end)
            if cls in blind:
                stats, ex = ClassStats(observable=False), []
            per_class[cls] = stats
            if cfg.examples:
                examples[cls] = ex
        ledger, money = observed["ledger"], observed["ledger"] or observed["gateway"]
        return CheckSummary(
            orders=self._orders,
            per_class=per_class,
            end_states=dict(sorted(self._end_states.items())),
            timeline=self._timeline(end, blind),
            examples=examples,
            warmup=float(cfg.warmup),
            horizon=None if cfg.horizon is None else float(cfg.horizon),
            end=end,
            events=self._events,
            late_events=self._late,
            unattributed_events=self._unattributed,
            orders_uncreated=self._uncreated,
            seed=self._seed,
            orders_seen=self._judged,
            duplicate_events=self._dup,
            unknown_types=dict(sorted(self._unknown.items())),
            observed=observed,
            observed_how=how,
            money_from="ledger" if ledger else ("trade events" if money else None),
            inferred=dict(sorted(self._inferred.items())),
            instances=rows,
        )

    # ---------------------------------------------------------------------------------------------
    # the sweep

    def _judge(self, order: Any, events: list[dict[str, Any]], end_hint: float) -> None:
        cfg = self.config
        self._judgements += 1
        self._judged += 1
        created_t = self._created.pop(order, None)
        if self._plain and created_t is not None and self._handlers is _HANDLERS and not self._flags[0]:
            counted = created_t >= cfg.warmup and (cfg.horizon is None or created_t < cfg.horizon)
            if self._judge_plain(events, counted):
                return
        events.sort(key=_BY_T)  # stable: equal times keep arrival order
        first_t = created_t if created_t is not None else events[0]["t"]
        counted = first_t >= cfg.warmup and (cfg.horizon is None or first_t < cfg.horizon)
        st = _OrderState(cfg.stuck_grace, cfg.bnpl_finish_limit, self._flags)
        if st.infer:
            self._infer("orders_money_from_trade_events")
        timers = st.timers  # deadlines pushed by the handlers as the sweep meets them
        handlers = self._handlers
        bs = self._bs
        open_: dict[Any, list[Any]] = {}  # key -> [cls, start, amount, peak, key]
        ctx = (order, counted, events, st)
        self._judging = events  # what _h_observed asks whether the checkout's own events are there
        ids: set[Any] | None = None
        risk = 0
        i, n = 0, len(events)
        known = _KNOWN_TYPES
        heappop = heapq.heappop
        ts = [e["t"] for e in events]  # sorted; read once instead of a dict look-up per comparison
        while True:
            if i < n:
                now = ts[i]
                if timers and timers[0] < now:
                    now = timers[0]
            elif timers and timers[0] < end_hint:
                now = timers[0]
            else:
                break
            changed = False
            j = i
            while i < n and ts[i] == now:
                e = events[i]
                typ = e.get("type")
                handler = handlers.get(typ)
                if handler is not None:
                    if "id" in e:  # an event delivered twice is taken once
                        if ids is None:
                            ids = set()
                        eid = e["id"]
                        if eid in ids:
                            self._dup += 1
                            i += 1
                            continue
                        ids.add(eid)
                    handler(self, st, e, now)
                    changed = True
                elif typ not in known:
                    self._count_unknown(typ)
                i += 1
            while timers and timers[0] <= now:
                heappop(timers)
                changed = True
            if not changed:
                continue  # only events no rule reads (notifications, client calls)
            active = _evaluate(st, now)
            if not active and not open_:
                continue  # fast path, nothing held before or now (risk is 0 then too): the usual healthy step
            for key in [k for k in open_ if k not in active]:
                inst = open_.pop(key)
                if inst[0] == _FSBC and st.closed:
                    continue  # superseded: a closed order holding the charge is paid_but_closed
                self._record(inst, now, ctx, (j, i))
            for key, amount in active.items():
                inst = open_.get(key)
                if inst is None:
                    open_[key] = [key if isinstance(key, str) else key[0], now, amount, amount, key]
                else:
                    inst[2] = amount
                    if amount > inst[3]:
                        inst[3] = amount
            new_risk = max(active.values()) if active else 0
            if new_risk != risk:
                _add(self._risk_diff, math.ceil(now / bs), new_risk - risk)
                risk = new_risk
        for inst in open_.values():
            self._record(inst, None, ctx, None)
        if st.created_t is not None:
            _add(self._arrivals, math.floor(st.created_t / bs), 1)
            if counted:
                self._orders += 1
                name = _end_state(st)
                self._end_states[name] = self._end_states.get(name, 0) + 1
        elif counted and self._last_recorded == self._judgements:
            self._uncreated += 1  # a charge without an order: an order the buyer believes in, for rates

    def _judge_plain(self, events: list[dict[str, Any]], counted: bool) -> bool:
        """Judge a *plain* order without the sweep; False (and nothing done) when it is not one.

        A plain order is one paid by a single charge of its amount and fulfilled, one paid after use
        (BNPL) whose merchant sent finish in time and whose one deduction succeeded, or one closed
        unpaid, whose events come in time order and of which no rule holds at any step: the usual
        healthy order of a simulation (nine in ten of the default scenario's). Its judgement is then
        known without the sweep: no instance, its state changes in the timeline, its end state
        (``paid_open``, ``bnpl_settled``, ``unpaid_closed`` or ``unpaid_closed_trade_payable``). Each event is
        checked as the sweep's handlers would take it, and the rules are checked after *every*
        event (the sweep checks after every step of equal times: a subset of these states), so an
        order for which the sweep could find anything — a rule that holds at one step, a deadline
        (stuck awaiting payment, finish past ``bnpl_finish_limit`` after delivery) reached, a second
        trade, charge, deduction or fulfilment, a refund, a failed deduction, an event delivered
        twice, an unknown type — is left to the sweep. Results are the same either
        way (tests/test_check_plain.py compares both on simulated and hand-made histories).
        """
        e = events[0]
        if e.get("type") != "order.created" or "id" in e:
            return False
        bnpl = e.get("method") == "bnpl"
        amount = _num(e.get("amount"))
        exp = e.get("expires_at")
        if amount <= 0 or not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return False
        t0 = last = e["t"]
        deadline = exp + self.config.stuck_grace  # stuck awaiting payment from here on
        codes = _PLAIN_CODES
        trade: Any = _UNSET
        tstate = None  # the one trade's state
        charged = 0
        closed = told_failed = success = False
        agreement = delivered = None  # BNPL: the agreement, and the finish deadline once delivered
        finished = deducted = False
        txns: list[Any] = []
        limit = self.config.bnpl_finish_limit
        ostate = "awaiting_payment"
        changes = [(t0, "awaiting_payment")]
        rest = iter(events)
        next(rest)
        for e in rest:
            code = codes.get(e.get("type"))
            if code is None:
                return False
            t = e["t"]
            if t < last:
                return False  # out of time order: the sweep sorts
            last = t
            if code == _PP_PASS:
                continue
            if "id" in e:
                return False
            if bnpl:
                if code <= _PP_TCLOSED:
                    if code != _PP_LEDGER or e.get("kind") not in ("bnpl_deduction", "bnpl_payout"):
                        return False  # a BNPL order with a trade, a charge or a refund
                    txn = e.get("txn")
                    if txn is not None:
                        if txn in txns:
                            return False
                        txns.append(txn)
                    total = 0
                    for p in e.get("postings") or ():
                        if isinstance(p, dict):
                            total += _num(p.get("amount"))
                    if total != 0:
                        return False
                    continue
                if code >= _PP_BNPL_AUTH:
                    if code == _PP_BNPL_AUTH:
                        if agreement is not None or e.get("agreement") is None:
                            return False
                        agreement = e.get("agreement")
                    elif code == _PP_BNPL_FINISH:
                        if agreement is None or (delivered is not None and t >= delivered):
                            return False  # finish after the limit: bnpl_stuck_unfinished
                        finished = True
                    elif code == _PP_BNPL_DEDUCT:
                        if deducted or e.get("ok") is not True:
                            return False  # a failed deduction, or a second one
                        deducted = True
                    continue  # (settled changes no rule)
            elif code >= _PP_BNPL_AUTH:
                return False
            if code <= _PP_TCLOSED:  # about the trade: one trade only
                tr = e.get("trade")
                if trade is _UNSET:
                    if tr is None:
                        return False
                    trade = tr
                elif tr != trade:
                    return False
                if code == _PP_LEDGER:
                    if charged or e.get("kind") != "charge":
                        return False
                    total = user = 0
                    for p in e.get("postings") or ():
                        if not isinstance(p, dict):
                            continue
                        a = _num(p.get("amount"))
                        total += a
                        acct = p.get("account")
                        if isinstance(acct, str) and acct.startswith("user:"):
                            user += a
                    if total != 0 or -user != amount:
                        return False  # unbalanced, or not the order's amount
                    charged = amount
                elif code == _PP_TCREATED:
                    tstate = "created"
                elif code == _PP_TSUCCEEDED:
                    tstate = "succeeded"
                elif code == _PP_TFAILED:
                    tstate = "closed" if e.get("reason") == "expired" else "failed"
                else:
                    tstate = "closed"
            elif code == _PP_SCREEN:
                screen = e.get("screen")
                if screen in _SUCCESS_SCREENS:
                    told_failed = False
                    success = True
                elif screen in _FAILURE_SCREENS:
                    told_failed = True
            elif code == _PP_ATTEMPT:
                told_failed = False
            elif code == _PP_PAID:
                if ostate != "awaiting_payment" or closed or t >= deadline:
                    return False
                if bnpl:
                    if agreement is None or e.get("agreement") is None:
                        return False
                elif e.get("agreement") is not None:
                    return False
                ostate = "paid"
                changes.append((t, ostate))
            elif code == _PP_FULFIL:
                shipment = e.get("shipment")
                if isinstance(shipment, int) and not isinstance(shipment, bool) and shipment >= 2:
                    return False
                continue
            elif code == _PP_CLOSED:
                if ostate != "awaiting_payment" or t >= deadline:
                    return False
                closed = True
                ostate = "closed"
                changes.append((t, ostate))
            else:  # shipped, delivered, completed: in this order, once each, after paid
                new = _PLAIN_NEXT[code]
                if ostate != _PLAIN_BEFORE[new]:
                    return False
                ostate = new
                changes.append((t, ostate))
                if code == _PP_DELIVERED and bnpl:
                    delivered = t + limit
            # the rules this order's state can meet (everything else was refused above)
            if closed:
                if charged or success:
                    return False  # paid_but_closed / success_shown_then_closed
            elif charged:
                if told_failed:
                    return False  # failure_shown_but_charged
            elif ostate != "awaiting_payment" and not bnpl:
                return False  # order_paid_without_charge
        if ostate == "awaiting_payment":
            return False  # whether it is stuck depends on the deadlines: the sweep decides
        if bnpl and not closed and not (finished and deducted):
            return False  # not finished or not deducted (yet): the sweep decides
        bs = self._bs
        diff = self._state_diff
        ceil = math.ceil
        old = None
        for t, state in changes:
            k = ceil(t / bs)
            if old is not None:
                d = diff[old]
                d[k] = d.get(k, 0) - 1
            d = diff[state]
            d[k] = d.get(k, 0) + 1
            old = state
        _add(self._arrivals, math.floor(t0 / bs), 1)
        if bnpl:
            self._bnpl_orders += 1
        if counted:
            self._orders += 1
            if closed:
                name = "unpaid_closed_trade_payable" if tstate in _PAYABLE_TRADE else "unpaid_closed"
            else:
                name = "bnpl_settled" if bnpl else "paid_open"
            self._end_states[name] = self._end_states.get(name, 0) + 1
        return True

    def _set_ostate(self, st: _OrderState, state: str, t: float) -> None:
        old = st.ostate
        if old == state:
            return
        k = math.ceil(t / self._bs)
        diff = self._state_diff
        if old is not None:
            d = diff[old]
            d[k] = d.get(k, 0) - 1
        d = diff[state]
        d[k] = d.get(k, 0) + 1
        st.ostate = state

    # ---------------------------------------------------------------------------------------------
    # bookkeeping

    def _record(self, inst: list[Any], stop: float | None, ctx: tuple[Any, bool, list[dict[str, Any]], _OrderState],
                cause: tuple[int, int] | None) -> None:
        cls, start, amount, peak, key = inst
        order, counted, events, st = ctx
        _add(self._starts[cls], math.floor(start / self._bs), 1)
        if self._want_rows:
            self._row(cls, key, start, stop, amount if stop is None else peak, ctx, cause)
        if not counted:
            return
        self._last_recorded = self._judgements
        acc = self._acc[cls]
        if stop is None:
            acc.u_start.append(start)
            acc.u_amount.append(int(amount))
            acc.u_judge.append(-self._judgements if acc.r_judge == self._judgements else self._judgements)
            acc.samples.add((None, start))
        else:
            window = stop - start
            acc.repaired += 1
            if acc.r_judge != self._judgements:
                acc.r_judge = self._judgements
                acc.r_orders += 1
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

    def _row(self, cls: str, key: Any, start: float, stop: float | None, amount: int,
             ctx: tuple[Any, bool, list[dict[str, Any]], _OrderState], cause: tuple[int, int] | None) -> None:
        order, counted, events, st = ctx
        if isinstance(key, tuple) and cls == _STUCK:
            trades: tuple[Any, ...] = (key[1],)
        else:
            trades = tuple(dict.fromkeys(tr for tr in (*st.net, *st.trade_state) if tr is not None))
        user = st.user
        if user is None:
            acct = next(iter(st.payer.values()), None)
            user = acct[5:] if acct else None
        repaired_by = ""
        if cause is not None:
            handlers = self._handlers
            repaired_by = "; ".join(dict.fromkeys(
                _describe(e) for e in events[cause[0]:cause[1]] if e.get("type") in handlers)) or "deadline"
        row = Instance(cls, order, counted, trades, user, int(amount), start, stop, repaired_by)
        if self._sink is None:
            self._rows.append(row)  # type: ignore[union-attr]
            return
        if stop is None:
            end = self.config.end
            if end is not None:
                if start >= end:
                    return  # a deadline after the end of observation: no instance
            else:
                bound = self._last_t if self._run_end is None else min(self._last_t, self._run_end)
                if start >= bound:
                    self._pending.append(row)  # decided when the end of observation is known
                    return
        self._sink(row)

    def _close_class(self, acc: _ClassAcc, end: float) -> tuple[ClassStats, list[dict[str, Any]]]:
        count = amount = 0
        usum = 0.0
        umax = 0.0
        u_orders: set[int] = set()
        for start, amt, judge in zip(acc.u_start, acc.u_amount, acc.u_judge):
            if start >= end:
                continue  # a deadline that fell after the end of observation
            u_orders.add(judge)
            count += 1
            amount += amt
            usum += end - start
            umax = max(umax, end - start)
        kept = [(w, s) for w, s in acc.samples.items if w is not None or s < end]
        windows = [end - s if w is None else w for w, s in kept]
        stats = ClassStats(
            count=count,
            repaired=acc.repaired,
            amount_fen=amount,
            windows=windows,
            window_max=max(acc.rmax, umax),
            window_sum=acc.rsum + usum,
            n_windows=count + acc.repaired,
            windows_open=[w is None for w, _ in kept],
            orders_occurred=acc.r_orders + sum(1 for j in u_orders if j > 0),
            orders_unresolved=len(u_orders),
        )
        return stats, _pick_examples(acc, end)

    def _timeline(self, end: float, blind: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        bs = self.config.bucket_s
        if self.config.timeline_end is not None:
            end = min(end, self.config.timeline_end)
        nb = max(1, math.ceil(end / bs)) if end > 0 else 1
        arrivals, states, starts, risk = self._arrivals, self._state_diff, self._starts, self._risk_diff
        if nb > MAX_TIMELINE_BUCKETS:  # widen the bucket by a whole factor: every series rebins exactly
            f = math.ceil(nb / MAX_TIMELINE_BUCKETS)
            bs *= f
            nb = max(1, math.ceil(end / bs))
            arrivals = _rebin(arrivals, f, ceil=False)
            states = {s: _rebin(v, f, ceil=True) for s, v in states.items()}
            starts = {c: _rebin(v, f, ceil=False) for c, v in starts.items()}
            risk = _rebin(risk, f, ceil=True)
        return {
            "bucket_s": bs,
            "t": [k * bs for k in range(nb)],
            "arrivals": _dense(arrivals, nb, cumulative=False),
            "states": {s: _dense(states[s], nb, cumulative=True) for s in ORDER_STATES},
            "anomaly_starts": {cls: _dense({} if cls in blind else starts[cls], nb, cumulative=False)
                               for cls in ANOMALY_CLASSES},
            "money_at_risk": [v / 100.0 for v in _dense(risk, nb, cumulative=True)],
        }


def _decidable(cls: str, observed: dict[str, bool]) -> bool:
    money = observed.get("ledger", True) or observed.get("gateway", True)
    for need in CLASS_NEEDS.get(cls, ()):
        if need == "money":
            ok = money
        elif "|" in need:
            ok = any(observed.get(s, True) for s in need.split("|"))
        else:
            ok = observed.get(need, True)
        if not ok:
            return False
    return True


def _rebin(series: dict[int, int], f: int, ceil: bool) -> dict[int, int]:
    """A difference series keyed by ``floor(t/bs)`` (or ``ceil``) re-keyed for a bucket ``f`` times wider."""
    out: dict[int, int] = {}
    for k, v in series.items():
        k2 = -((-k) // f) if ceil else k // f
        out[k2] = out.get(k2, 0) + v
    return out


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
    if st.agreement is not None and st.ostate != "refund_pending" and st.ostate != "refunded":
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
        if st.refund_failed and st.total > 0:
            return "paid_refund_failed"
        return "refunded_and_shipped" if st.cancel_after_ship else "paid_refund_pending"
    if st.ostate == "refunded":
        return "refunded_and_shipped" if st.cancel_after_ship else "paid_refunded"
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


# --------------------------------------------------------------------------------------------------
# anomalies.csv: the list of affected orders


CSV_FILE = "anomalies.csv"
CSV_COLUMNS: tuple[str, ...] = ("class", "order", "trades", "user", "amount_cny", "from_s", "until_s", "status",
                                "window_s", "repaired_by", "counted")


def _cell(value: Any) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _seconds(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


class AnomalyCsv:
    """Rows of ``anomalies.csv`` (one per instance), spooled to a temporary file as they come.

    Memory stays bounded whatever the number of rows (the spool moves to disk past a few MiB);
    :meth:`commit` puts the whole file in place at once, so a reader never sees half of one. Use it as
    a :class:`Checker`'s ``on_instance``.
    """

    def __init__(self, replication_column: bool = False, lead_columns: Sequence[str] = ()) -> None:
        self._fh = tempfile.SpooledTemporaryFile(max_size=4 << 20, mode="w+", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        self._replication = replication_column
        self._lead = tuple(lead_columns)  # columns before the rest (a sweep: point, parameters, replication)
        self._writer.writerow(self._lead + (("replication",) if replication_column else ()) + CSV_COLUMNS)
        self.rows = 0

    def add(self, inst: Instance, replication: int | None = None, lead: Sequence[str] = ()) -> None:
        stop = inst.stop
        row = [
            inst.cls, _cell(inst.order), _cell(" ".join(str(t) for t in inst.trades)), _cell(inst.user),
            f"{inst.amount_fen / 100:.2f}", _seconds(inst.start), "" if stop is None else _seconds(stop),
            "open" if stop is None else "repaired", "" if stop is None else _seconds(stop - inst.start),
            _cell(inst.repaired_by), "yes" if inst.counted else "no",
        ]
        if self._replication:
            row.insert(0, "" if replication is None else str(replication))
        if self._lead:
            row[0:0] = lead
        self._writer.writerow(row)
        self.rows += 1

    __call__ = add

    def commit(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/anomalies.csv`` (creating the directory) and close the spool."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"{out}: cannot create the output directory (a file is in the way)") from None
        except PermissionError:
            raise ConfigError(f"{out}: cannot create the output directory (permission denied)") from None
        target = out / CSV_FILE
        self._fh.flush()
        self._fh.seek(0)
        try:
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{CSV_FILE}.", suffix=".tmp")
        except PermissionError:
            raise ConfigError(f"{out}: cannot write into the output directory (permission denied)") from None
        try:
            os.chmod(tmp, 0o644)
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                shutil.copyfileobj(self._fh, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        finally:
            self.close()
        return target

    def close(self) -> None:
        self._fh.close()


def write_anomalies_csv(out_dir: str | Path, summaries: Iterable[Any], *,
                        lead_columns: Sequence[str] = ()) -> Path | None:
    """``out_dir/anomalies.csv`` from the instances the summaries kept (one per replication, in order).

    With more than one summary the first column names the replication. With ``lead_columns``,
    ``summaries`` yields ``(cells, summary)`` pairs, taken one at a time (a sweep streams every point's
    replications without holding them all): each summary's rows begin with its cells, under those columns.
    Returns None when no summary kept its instances (``CheckConfig(instances=False)``, or they were
    streamed elsewhere).
    """
    if lead_columns:
        writer = AnomalyCsv(lead_columns=lead_columns)
        kept = False
        try:
            for cells, s in summaries:
                kept = kept or s.instances is not None
                for inst in s.instances or ():
                    writer.add(inst, lead=cells)
            return writer.commit(out_dir) if kept else None
        finally:
            writer.close()
    summaries = list(summaries)
    if not summaries or all(s.instances is None for s in summaries):
        return None
    writer = AnomalyCsv(replication_column=len(summaries) > 1)
    try:
        for k, s in enumerate(summaries):
            for inst in s.instances or ():
                writer.add(inst, k)
        return writer.commit(out_dir)
    finally:
        writer.close()
