"""States of an order, a gateway trade and a BNPL agreement, and their legal transitions.

Pure Python: no SimPy, no HTTP, no I/O. The simulation and the live reference checkout both move their
entities through :func:`advance`, so an illegal step (closing a paid order through the timer path,
refunding an unpaid trade) fails loudly in both worlds instead of silently corrupting a history.
"""

from __future__ import annotations

from enum import Enum


class IllegalTransition(Exception):
    """An entity was asked to move to a state its state machine does not allow from where it is.

    A programming error in the harness (or a bug it is meant to expose in a checkout under test), not a
    domain outcome: declines, timeouts and losses are states, not exceptions.
    """


class OrderState(str, Enum):
    AWAITING_PAYMENT = "awaiting_payment"  # 待付款
    PAID = "paid"  # 待发货
    SHIPPED = "shipped"  # 待收货
    DELIVERED = "delivered"
    COMPLETED = "completed"  # 已完成
    CLOSED = "closed"  # 已关闭 / 已取消
    REFUND_PENDING = "refund_pending"
    REFUNDED = "refunded"


class TradeState(str, Enum):
    CREATED = "created"  # payable
    PROCESSING = "processing"  # debit sent to the bank
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the bank call timed out: outcome not known to the gateway
    CLOSED = "closed"  # closed unpaid (alipay.trade.close / expiry)
    REFUNDED = "refunded"


class AgreementState(str, Enum):
    AUTHORIZED = "authorized"
    FINISH_REQUESTED = "finish_requested"
    DEDUCTING = "deducting"
    SETTLED = "settled"
    OVERDUE = "overdue"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


O, T, A = OrderState, TradeState, AgreementState

ORDER_TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    O.AWAITING_PAYMENT: frozenset({O.PAID, O.CLOSED}),
    O.PAID: frozenset({O.SHIPPED, O.REFUND_PENDING, O.CLOSED}),  # PAID -> CLOSED only via cancel + refund paths
    O.SHIPPED: frozenset({O.DELIVERED, O.REFUND_PENDING}),
    O.DELIVERED: frozenset({O.COMPLETED, O.REFUND_PENDING}),
    O.COMPLETED: frozenset({O.REFUND_PENDING}),
    O.CLOSED: frozenset({O.PAID, O.REFUND_PENDING}),  # PAID = reopened by a late payment
    O.REFUND_PENDING: frozenset({O.REFUNDED, O.CLOSED}),
    O.REFUNDED: frozenset(),
}

TRADE_TRANSITIONS: dict[TradeState, frozenset[TradeState]] = {
    T.CREATED: frozenset({T.PROCESSING, T.CLOSED, T.FAILED}),
    T.PROCESSING: frozenset({T.SUCCEEDED, T.FAILED, T.UNKNOWN}),
    T.UNKNOWN: frozenset({T.SUCCEEDED, T.FAILED, T.CLOSED}),
    # A failed attempt leaves the trade payable again (the buyer may retry with the same out_trade_no).
    # FAILED -> SUCCEEDED: a late bank response or reconciliation corrects a trade the gateway gave up on.
    T.FAILED: frozenset({T.PROCESSING, T.CLOSED, T.SUCCEEDED}),
    T.SUCCEEDED: frozenset({T.REFUNDED}),
    T.CLOSED: frozenset(),
    T.REFUNDED: frozenset(),
}

AGREEMENT_TRANSITIONS: dict[AgreementState, frozenset[AgreementState]] = {
    A.AUTHORIZED: frozenset({A.FINISH_REQUESTED, A.CANCELLED, A.EXPIRED}),
    A.FINISH_REQUESTED: frozenset({A.DEDUCTING}),
    A.DEDUCTING: frozenset({A.SETTLED, A.OVERDUE, A.COMPENSATED, A.CANCELLED}),  # CANCELLED: after-sales
    A.COMPENSATED: frozenset({A.OVERDUE, A.SETTLED}),
    A.OVERDUE: frozenset({A.SETTLED}),
    A.SETTLED: frozenset(),
    A.CANCELLED: frozenset(),
    A.EXPIRED: frozenset(),
}

ORDER_PAID_STATES = frozenset({O.PAID, O.SHIPPED, O.DELIVERED, O.COMPLETED})
TRADE_TERMINAL = frozenset({T.SUCCEEDED, T.CLOSED, T.REFUNDED})
TRADE_PAYABLE = frozenset({T.CREATED, T.FAILED})

_TABLES: dict[type, dict] = {OrderState: ORDER_TRANSITIONS, TradeState: TRADE_TRANSITIONS,
                             AgreementState: AGREEMENT_TRANSITIONS}


def can_advance(current: Enum, new: Enum) -> bool:
    """Whether ``current -> new`` is a legal step (staying put is not a step)."""
    return new in _TABLES[type(current)][current]


def advance(current: Enum, new: Enum, what: str = "") -> Enum:
    """Return ``new`` if ``current -> new`` is legal, else raise :class:`IllegalTransition`."""
    if new not in _TABLES[type(current)][current]:
        raise IllegalTransition(f"{what or type(current).__name__}: {current.value} -> {new.value} is not allowed")
    return new
