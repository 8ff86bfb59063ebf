"""The policies a design review compares, written once for both clocks.

The simulation (``sim/model``) and the live reference checkout (``loadtests/service``) call these
functions to decide what to do; neither re-implements them. Each function is a pure decision from
what the caller knows *at that moment* — which is exactly where the races live: a ``naive`` close does
not know the buyer has just paid, a ``query_then_close`` learns the trade state one round trip before
it closes the order.
"""

from __future__ import annotations

from enum import Enum

from sim.domain.states import ORDER_PAID_STATES, OrderState, TradeState

O, T = OrderState, TradeState

CLOSE_POLICIES = ("naive", "query_then_close", "close_trade_then_order")
LATE_PAYMENT_POLICIES = ("ignore", "auto_refund", "reopen")
RETRY_TRADE_NO = ("reuse", "new")
RECON_REPAIRS = ("refund", "fill_order", "report")


class Step(str, Enum):
    """What the order service does next in closing an expired, unpaid order."""

    CLOSE_ORDER = "close_order"  # close the order now; the gateway trade is left as it is
    CLOSE_ORDER_THEN_TRADE = "close_order_then_trade"  # close the order, then ask the gateway to close the trade
    QUERY_TRADE = "query_trade"  # ask the gateway for the trade state first
    CLOSE_TRADE = "close_trade"  # ask the gateway to close the trade first
    MARK_PAID = "mark_paid"  # the trade is paid: keep the order, mark it paid
    RETRY_LATER = "retry_later"  # outcome unknown: keep the order open and look again later
    NOTHING = "nothing"  # the order is no longer awaiting payment


def on_order_expiry(policy: str, order_state: OrderState) -> Step:
    """The first step when an order's TTL fires (timer or sweep)."""
    if order_state is not O.AWAITING_PAYMENT:
        return Step.NOTHING
    if policy == "naive":
        return Step.CLOSE_ORDER
    if policy == "query_then_close":
        return Step.QUERY_TRADE
    if policy == "close_trade_then_order":
        return Step.CLOSE_TRADE
    raise ValueError(f"unknown close policy {policy!r}")


def after_trade_query(trade_state: TradeState | None) -> Step:
    """``query_then_close``: decide from the state the gateway reported (None: no trade was ever created).

    The buyer can still pay between this answer and the close that follows it.
    """
    if trade_state is None or trade_state in (T.CREATED, T.FAILED, T.CLOSED):
        return Step.CLOSE_ORDER_THEN_TRADE
    if trade_state is T.SUCCEEDED:
        return Step.MARK_PAID
    return Step.RETRY_LATER  # processing / unknown: not safe to close either way


def after_trade_close(result: str) -> Step:
    """``close_trade_then_order``: ``result`` is the gateway's answer to close.

    ``closed`` (or ``no_trade``): nobody can pay any more, close the order. ``already_paid``
    (``ACQ.TRADE_HAS_SUCCESS``): keep the order and mark it paid. ``in_progress``: a debit is in
    flight or unknown — look again later.
    """
    if result in ("closed", "no_trade"):
        return Step.CLOSE_ORDER
    if result == "already_paid":
        return Step.MARK_PAID
    if result in ("in_progress", "too_early"):
        return Step.RETRY_LATER
    raise ValueError(f"unknown close result {result!r}")


def gateway_close_result(trade_state: TradeState | None, age: float = float("inf"),
                         min_close_age: float = 0.0) -> str:
    """How a gateway answers a close request (``alipay.trade.close`` semantics).

    ``no_trade`` (``ACQ.TRADE_NOT_EXIST``): a page-pay or QR trade the buyer has not opened yet does
    not exist, so nothing is closed and the link stays payable. ``too_early``: WeChat Pay refuses to
    close an order younger than 5 minutes (``min_close_age``); the caller must come back later.
    """
    if trade_state is None:
        return "no_trade"
    if age < min_close_age and trade_state in (T.CREATED, T.FAILED):
        return "too_early"
    if trade_state in (T.CREATED, T.FAILED, T.CLOSED):
        return "closed"
    if trade_state in (T.SUCCEEDED, T.REFUNDED):
        return "already_paid"
    return "in_progress"


LATE_APPROVAL_POLICIES = ("ignore", "reverse")

# bnpl.deduction_source -> the buyer's payment methods a deduction (代扣) tries, in turn
# (BuyerAccount.deduct); "draw" takes nothing from an account.
DEDUCTION_SOURCES: dict[str, tuple[str, ...]] = {"wallet": ("wallet",), "wallet_then_card": ("wallet", "card")}


def on_late_approval(trade_state: TradeState, policy: str) -> str:
    """The bank approves a debit after the gateway stopped waiting for it.

    ``apply``: the trade was unknown or marked failed — it succeeds now. ``reverse``: the trade was
    closed meanwhile and the gateway reverses the debit at once (policy ``reverse``). ``ignore``: it
    leaves the money where it is (policy ``ignore``, or the trade already settled) — only a
    reconciliation that reads the bank statement will find it.
    """
    if trade_state in (T.UNKNOWN, T.FAILED):
        return "apply"
    if trade_state is T.CLOSED and policy == "reverse":
        return "reverse"
    return "ignore"


class NotifyAction(str, Enum):
    """What the order service does with a 'payment succeeded' notification."""

    MARK_PAID = "mark_paid"
    DUPLICATE = "duplicate"  # already paid by this trade: acknowledge, change nothing
    IGNORE_LATE = "ignore_late"  # closed: acknowledge and drop (macrozheng/mall)
    REFUND_LATE = "refund_late"  # closed: refund automatically
    REOPEN = "reopen"  # closed: revive the order (linlinjava/litemall), even if stock was released
    REFUND_EXTRA = "refund_extra"  # paid by another trade already: refund this one


def on_payment_notification(order_state: OrderState, late_payment: str, paid_by_other_trade: bool) -> NotifyAction:
    """Decide on a payment notification for an order in ``order_state``."""
    if order_state is O.AWAITING_PAYMENT:
        return NotifyAction.MARK_PAID
    if order_state in ORDER_PAID_STATES:
        return NotifyAction.REFUND_EXTRA if paid_by_other_trade and late_payment == "auto_refund" else NotifyAction.DUPLICATE
    if order_state is O.CLOSED:
        if late_payment == "auto_refund":
            return NotifyAction.REFUND_LATE
        if late_payment == "reopen":
            return NotifyAction.REOPEN
        return NotifyAction.IGNORE_LATE
    return NotifyAction.DUPLICATE  # refund pending / refunded: nothing more to do


def must_reread(order_lock: bool, read_version: int, current_version: int) -> bool:
    """At the write of a read-then-write on an order: must the writer read the order again first?

    With ``order_lock`` (a row lock, ``SELECT ... FOR UPDATE``, or a version check ``UPDATE ... WHERE
    version = :read``, as WeChat Pay's notification guide requires) a writer whose row changed since its
    read re-reads it and decides again. Without it, the writer writes what it decided from its stale
    read: the close job overwrites the 'paid' a notification handler wrote meanwhile (a lost update),
    and two handlers of one notification both mark the order paid (a double fulfilment).
    """
    return order_lock and read_version != current_version


def retry_trade_no(policy: str, order_id: str, attempt: int, previous: str | None) -> str:
    """The trade number (``out_trade_no`` / idempotency key) for payment attempt ``attempt`` (0-based).

    Reusing it makes the gateway treat a retry as the same payment; a new one per attempt, without
    closing the old trade, is how double charges happen.
    """
    if policy == "reuse" and previous is not None:
        return previous
    return f"{order_id}-t{attempt}"


def idempotent_create(existing: tuple | None, params: tuple) -> str:
    """Create-trade idempotency: ``new`` (no such trade), ``replay`` (same params) or ``conflict``."""
    if existing is None:
        return "new"
    return "replay" if existing == params else "conflict"


def notify_delay(gaps: tuple[float, ...], attempt: int) -> float | None:
    """Seconds to wait after delivery attempt ``attempt`` (1-based) failed; None when the schedule is spent."""
    return gaps[attempt - 1] if attempt - 1 < len(gaps) else None


class ReconKind(str, Enum):
    LONG = "long"  # 长款: the gateway holds money for which the merchant has no paid order
    SHORT = "short"  # 短款: the merchant says paid, the gateway has nothing
    UNKNOWN = "unknown"  # a trade still unknown at the gateway


def reconcile(order_state: OrderState | None, trade_state: TradeState | None, repair: str,
              debit_returned: bool = False) -> tuple[ReconKind | None, str | None]:
    """Classify one debit of the bank statement against its order and trade, and choose its repair.

    Returns ``(kind, action)`` with action one of ``refund``, ``fill_order``, ``query``, ``report``,
    or ``(None, None)`` when they agree. A debit on a trade the gateway closed, not yet returned
    (``debit_returned``), is 长款 whatever the order says: "order closed, trade closed" agrees
    between merchant and gateway, but not with the bank.
    """
    if trade_state is T.CLOSED:
        if debit_returned:
            return None, None
        return ReconKind.LONG, ("report" if repair == "report" else "refund")
    order_paid = order_state in ORDER_PAID_STATES
    if trade_state is T.SUCCEEDED and order_state is O.AWAITING_PAYMENT:
        # The money arrived but the order never heard (a lost notification): fill the order in
        # (补单) rather than refund a buyer whose order is still open.
        return ReconKind.LONG, ("report" if repair == "report" else "fill_order")
    if trade_state is T.SUCCEEDED and not order_paid and order_state not in (O.REFUND_PENDING, O.REFUNDED):
        if repair == "report":
            return ReconKind.LONG, "report"
        return ReconKind.LONG, ("fill_order" if repair == "fill_order" and order_state is not None else "refund")
    if order_paid and trade_state not in (T.SUCCEEDED, None):
        return ReconKind.SHORT, "report"
    if trade_state in (T.UNKNOWN, T.PROCESSING):
        return ReconKind.UNKNOWN, "query"
    return None, None


def support_action(order_state: OrderState | None, trade_state: TradeState | None, pays_order: bool,
                   debit_returned: bool, repair: str = "refund") -> str | None:
    """What customer service does about one bank debit a buyer complains of (and what makes the buyer
    complain: the same question, asked by the buyer when they look): ``reverse`` (a debit on a closed
    trade: return it), ``refund``, ``fill_order`` (mark the order paid by it), or None when the order
    accounts for the debit or the money is on its way back.

    ``trade_state`` is the trade's as the bank's record corrects it (a debit the gateway thinks failed
    or unknown is a succeeded trade); ``pays_order``: this trade is the one the order is paid by.
    A second charge for a paid order is refunded; a debit for an order that is not paid is refunded, or
    with ``repair = "fill_order"`` fills it in — an order still awaiting payment is always filled in
    (the buyer paid it; the notification never came), as reconciliation does (:func:`reconcile`).
    """
    if trade_state is T.CLOSED:
        return None if debit_returned else "reverse"
    if trade_state is not T.SUCCEEDED or debit_returned:
        return None
    if order_state in ORDER_PAID_STATES:
        return None if pays_order else "refund"
    if order_state is O.AWAITING_PAYMENT:
        return "fill_order"
    if order_state is O.CLOSED:
        return "fill_order" if repair == "fill_order" else "refund"
    return None  # refund pending or refunded: the money is on its way back; no order: nothing to ask about


def bnpl_overdue_decision(credit_side_paid: bool) -> str:
    """At the compensation deadline the provider reads its *credit* side: ``overdue`` or ``settled``.

    The payment side may already hold the buyer's money while the credit side has not synced: that is a
    false overdue mark, and it emerges from the sync lag, not from this function.
    """
    return "settled" if credit_side_paid else "overdue"


def trade_pays_order(trade: object, order: object) -> bool:
    """Whether a succeeded ``trade`` (or BNPL agreement) pays ``order``: it was made for this very order
    and for its full amount.

    ``trade`` needs ``order`` and ``amount`` attributes (a :class:`~sim.domain.entities.Trade`, an
    ``Agreement``, or the provider's answer read into one), ``order`` needs ``id`` and ``amount``. Nothing
    marks an order paid without asking this: a trade number can be named by anyone, and a 1-fen trade of
    another order must not pay a 1,000-yuan one.
    """
    return getattr(trade, "order", None) == getattr(order, "id", None) and \
        getattr(trade, "amount", None) == getattr(order, "amount", None)


def refund_delay(gaps: tuple[float, ...], failures: int) -> float | None:
    """Seconds to wait before trying a refund again after its ``failures``-th failed attempt (1-based);
    None when the schedule is spent and a person must be told (the order becomes ``refund_failed``).

    A refund is never silently given up: money the buyer is owed stays visible until it is returned.
    """
    if failures < 1:
        raise ValueError(f"failures: expected at least 1, found {failures}")
    return gaps[failures - 1] if failures - 1 < len(gaps) else None


# -- overload: server-side deadlines and load shedding -------------------------------------------------

def deadline_passed(now: float, deadline: float, margin: float = 0.0) -> bool:
    """Server-side deadline: has the caller of a request already given up on it?

    ``deadline`` is when the caller stops waiting (the time it sent the request plus its own timeout,
    propagated with the request like gRPC's ``grpc-timeout`` header). A server that enforces deadlines
    checks this when a worker picks the request up and drops it rather than doing work — a debit, an
    order — that nobody is waiting for any more. With a ``margin`` it also drops work that cannot
    finish before the caller gives up: less than ``margin`` (the work's own expected worst time) left.
    """
    return now + margin >= deadline


def batch_run(running: bool, paused: bool) -> str | None:
    """A batch merchant's finish job at its scheduled time: ``None`` runs it; ``"running"`` skips it because
    the previous run still holds the job's lock (a cron job under a lock); ``"paused"`` skips it because the
    big-promotion plan (大促预案) has paused lower-priority jobs (``merchant.batch_paused``, set in a fault
    window for the peak). A skipped run's orders wait for the next run."""
    if running:
        return "running"
    if paused:
        return "paused"
    return None


def should_shed(in_flight: int, limit: int) -> bool:
    """Load shedding: answer 503 at once when ``in_flight`` requests (running and queued) already
    reach ``limit``, so that the ones admitted are served while their callers still wait."""
    return in_flight >= limit


def request_deadline(sent_at: float, timeout: float) -> float:
    """The deadline a caller attaches to a request it sends at ``sent_at`` and waits ``timeout`` for."""
    return sent_at + timeout


def resend_delay(gaps: tuple[float, ...], attempt: int) -> float | None:
    """A client's automatic re-send of a request that timed out or was refused (503, queue full):
    seconds before re-send number ``attempt`` (1-based); None when the schedule is spent."""
    return gaps[attempt - 1] if 1 <= attempt <= len(gaps) else None
