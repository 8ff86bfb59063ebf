"""After-sales by order state: what a buyer's request becomes, and what the merchant answers (seed 003).

Seed 003 (a Douyin help article on order after-sales) gives the rules by the state the order is in:

* 待付款 awaiting payment — the buyer cancels freely; no money has moved (:attr:`Route.CANCEL`);
* 待发货 paid, not shipped — the buyer asks the *merchant* to cancel; if it agrees it cancels the order
  and refunds the payment, and it may refuse (:attr:`Route.ASK_MERCHANT`);
* 待收货 shipped (not yet completed) — a refund only for a serious quality defect, with evidence, through
  the platform's customer service; otherwise refused (:attr:`Route.DEFECT_ONLY`);
* 已完成 completed — a refund is very unlikely: the buyer can only complain to the platform's customer
  service, which moves no money by itself (:attr:`Route.COMPLAINT`);
* 已取消 closed — nothing to ask: the refund arrives after a time that depends on the method
  (:attr:`Route.REFUND_UNDERWAY`).

The merchant answers a cancel request on the state it *checks*: with ``cancel_check = "at_answer"`` it
reads the order when it answers (a shipment that went out meanwhile makes it refuse), with
``"at_request"`` it answers on what it read when the request came in — a stale read, so a request that
raced the shipment is accepted and refunded although the goods are gone (:func:`refunds_shipped_goods`).

A pay-after-use (BNPL) order has no payment to refund until its buyer has paid. What an accepted
request does to its agreement (:func:`bnpl_remedy`) follows WeChat Pay Score's rules for its service
orders (docs/domain.md "After-sales of a pay-after-use order"): an order that is created or in
progress (``CREATED`` / ``DOING``, which includes *finished by the merchant, collection pending*,
``USER_PAYING``) can be **cancelled** — nothing was collected, the buyer owes nothing; an order whose
money was collected (``DONE``) cannot be cancelled (``ORDER_DONE``) and is **refunded** through the
refund API instead. When the provider has already compensated the merchant and is still chasing the
buyer (an overdue agreement), the model refunds the buyer once their money arrives
(:attr:`BnplRemedy.REFUND_WHEN_PAID`; an assumption: neither provider documents this case).

Pure Python: no clock, no I/O. The simulation's merchant (``sim/model/merchant.py``) calls it; the live
reference checkout can call the same functions.
"""

from __future__ import annotations

from enum import Enum

from sim.domain.states import AgreementState, OrderState

O = OrderState
A = AgreementState

CANCEL_CHECKS = ("at_answer", "at_request")


class Route(str, Enum):
    """What a buyer's after-sales request becomes, by the order's state when the buyer sends it."""

    CANCEL = "cancel"  # 待付款: the buyer cancels; no money moves
    ASK_MERCHANT = "ask_merchant"  # 待发货: the merchant may cancel and refund
    DEFECT_ONLY = "defect_only"  # 待收货: refunded only for a quality defect (customer service)
    COMPLAINT = "complaint"  # 已完成: a complaint to customer service, no money moves
    REFUND_UNDERWAY = "refund_underway"  # 已取消 / refund pending / refunded: nothing to ask


class Answer(str, Enum):
    """The answer to a request that went to the merchant or to customer service."""

    ACCEPTED = "accepted"  # cancelled (or refunded for a defect): the payment is refunded
    REFUSED_SHIPPED = "refused_shipped"  # the goods are on their way: a cancel is no longer possible
    REFUSED_DECLINED = "refused_declined"  # the merchant chose not to cancel
    REFUSED_NO_DEFECT = "refused_no_defect"  # shipped and nothing wrong with it: no refund
    NOTHING = "nothing"  # a complaint or a closed order: no money moves by this request


_SHIPPED = frozenset({O.SHIPPED, O.DELIVERED})
_ENDED = frozenset({O.CLOSED, O.REFUND_PENDING, O.REFUNDED})


def route(state: OrderState) -> Route:
    """What a buyer's request made while the order is in ``state`` becomes (seed 003's table)."""
    if state is O.AWAITING_PAYMENT:
        return Route.CANCEL
    if state is O.PAID:
        return Route.ASK_MERCHANT
    if state in _SHIPPED:
        return Route.DEFECT_ONLY
    if state is O.COMPLETED:
        return Route.COMPLAINT
    if state in _ENDED:
        return Route.REFUND_UNDERWAY
    raise ValueError(f"no after-sales route for order state {state!r}")


def checked_state(cancel_check: str, at_request: OrderState, at_answer: OrderState) -> OrderState:
    """The state the merchant's answer is based on: read when it answers, or the one read at request time."""
    if cancel_check == "at_answer":
        return at_answer
    if cancel_check == "at_request":
        return at_request
    raise ValueError(f"cancel_check must be one of {', '.join(CANCEL_CHECKS)}, got {cancel_check!r}")


def merchant_answer(checked: OrderState, agrees: bool) -> Answer:
    """The merchant's answer to a cancel request (:attr:`Route.ASK_MERCHANT`), on the state it checked.

    Unshipped (``paid``) and willing: accepted (cancel and refund). Unshipped and unwilling: refused.
    Shipped or later: refused, the goods are gone. Already closed or refunded: nothing to do.
    """
    if checked is O.PAID:
        return Answer.ACCEPTED if agrees else Answer.REFUSED_DECLINED
    if checked in _SHIPPED or checked is O.COMPLETED:
        return Answer.REFUSED_SHIPPED
    return Answer.NOTHING


def defect_answer(defect: bool) -> Answer:
    """Customer service's answer to a refund asked for a shipped order (:attr:`Route.DEFECT_ONLY`)."""
    return Answer.ACCEPTED if defect else Answer.REFUSED_NO_DEFECT


_REFUNDABLE = frozenset({O.PAID, O.SHIPPED, O.DELIVERED, O.COMPLETED})


def acted_on(answer: Answer, actual: OrderState) -> Answer:
    """The answer as it can be acted on in the order's ``actual`` state: an acceptance for an order that
    was refunded or closed meanwhile (by another path) moves nothing (:attr:`Answer.NOTHING`)."""
    return Answer.NOTHING if answer is Answer.ACCEPTED and actual not in _REFUNDABLE else answer


def refunds_shipped_goods(via: Route, answer: Answer, actual: OrderState) -> bool:
    """A cancel accepted while the goods had in fact shipped: refunded *and* shipped, the merchant's loss.

    ``via`` is the request's route, ``actual`` the order's real state when the answer is acted on. Only a
    stale check (``cancel_check = "at_request"``) accepts a cancel on a shipped order; a defect refund
    of a shipped order is not this (the goods come back as a return).
    """
    return via is Route.ASK_MERCHANT and answer is Answer.ACCEPTED and (actual in _SHIPPED or actual is O.COMPLETED)


class BnplRemedy(str, Enum):
    """What an accepted after-sales request does to a pay-after-use order's agreement."""

    CANCEL = "cancel"  # nothing collected yet: the agreement is cancelled, the buyer owes nothing
    REFUND = "refund"  # collected (deduction or repayment by hand): the collected amount is refunded
    REFUND_WHEN_PAID = "refund_when_paid"  # the merchant was compensated, the buyer still owes: refund on payment
    NOTHING = "nothing"  # cancelled or expired already: nothing to undo


_CANCELLABLE = frozenset({A.AUTHORIZED, A.FINISH_REQUESTED, A.DEDUCTING})


def bnpl_remedy(state: AgreementState, paid_by_user: bool) -> BnplRemedy:
    """The remedy for an accepted after-sales request on an agreement in ``state`` (see the module's
    docstring): cancel while nothing is collected (WeChat Pay Score ``CREATED`` / ``DOING``, including
    a finish whose collection is still pending), refund once the buyer has paid (``DONE``)."""
    if state in (A.CANCELLED, A.EXPIRED):
        return BnplRemedy.NOTHING
    if paid_by_user:
        return BnplRemedy.REFUND
    if state in _CANCELLABLE:
        return BnplRemedy.CANCEL
    return BnplRemedy.REFUND_WHEN_PAID  # compensated / overdue: the provider still collects


class Ruling(str, Enum):
    """Customer service's ruling on a buyer's escalation of a refused cancel (seed 003: the merchant would not
    cancel an unshipped order; the buyer gives a reason and asks the platform)."""

    CANCEL_REFUND = "cancel_refund"  # the reason holds and the goods have not shipped: cancelled, refunded
    SHIPPED = "shipped"  # the goods shipped while the ticket waited: a cancel is no longer possible
    NOT_UPHELD = "not_upheld"  # the buyer's reason does not hold: the merchant's refusal stands
    MOOT = "moot"  # closed or refunded meanwhile by another path: nothing to rule on


def platform_ruling(actual: OrderState, upheld: bool) -> Ruling:
    """The agent's ruling on the order in its ``actual`` state when the agent acts; ``upheld``: the buyer's
    reason is valid (goods not as described, a merchant acting in bad faith)."""
    if actual is O.PAID:
        return Ruling.CANCEL_REFUND if upheld else Ruling.NOT_UPHELD
    if actual in _SHIPPED or actual is O.COMPLETED:
        return Ruling.SHIPPED if upheld else Ruling.NOT_UPHELD
    return Ruling.MOOT
