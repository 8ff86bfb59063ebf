"""Orders, gateway trades and BNPL agreements: state plus the money each step moves.

Each method checks the transition (:func:`~sim.domain.states.advance`) and posts the matching balanced
transaction to the caller's :class:`~sim.domain.ledger.Ledger`, so a legal sequence of steps can never
create or destroy money. ``__slots__`` because the simulation creates one of each per order.
"""

from __future__ import annotations

from sim.domain.ledger import (BNPL_COMPENSATION, BNPL_DEDUCTION, BNPL_PAYOUT, BNPL_REPAYMENT, CHARGE, REFUND,
                               Ledger, Txn, transfer)
from sim.domain.states import ORDER_TRANSITIONS as _ORDER_NEXT
from sim.domain.states import AgreementState, OrderState, TradeState, advance

O, T, A = OrderState, TradeState, AgreementState


class Order:
    __slots__ = ("id", "user", "merchant", "amount", "method", "state", "created_at", "expires_at",
                 "paid_trade", "stock_released", "close_reason", "trades", "version")

    def __init__(self, id: str, user: str, merchant: str, amount: int, method: str, created_at: float,
                 expires_at: float) -> None:
        self.id, self.user, self.merchant = id, user, merchant
        self.amount, self.method = amount, method
        self.state = O.AWAITING_PAYMENT
        self.created_at, self.expires_at = created_at, expires_at
        self.paid_trade: str | None = None
        self.stock_released = False
        self.close_reason: str | None = None
        self.trades: list[str] = []
        self.version = 0  # bumped by every write: what a version check (optimistic lock) compares

    def to(self, new: OrderState) -> None:
        self.state = advance(self.state, new, f"order {self.id}")
        self.version += 1

    def overwrite(self, new: OrderState) -> None:
        """A blind ``UPDATE ... SET state = new``: no state-machine check, no version check.

        What an unlocked read-then-write does when the row changed between its read and its write:
        it writes what it decided from the stale read (the close job closing an order a notification
        handler has just marked paid — the lost update).
        """
        self.state = new
        self.version += 1

    def write(self, new: OrderState) -> None:
        """Move to ``new``: a checked step when the state machine allows it, else a blind overwrite.

        Only an unlocked writer acting on a stale read ever takes the second branch.
        """
        if new is not self.state and new in _ORDER_NEXT[self.state]:
            self.to(new)
        else:
            self.overwrite(new)

    def mark_paid(self, trade: str, blind: bool = False) -> None:
        """Mark paid; ``blind``: an unlocked writer's write (see :meth:`write`), else a checked step."""
        self.write(O.PAID) if blind else self.to(O.PAID)
        self.paid_trade = trade

    def close(self, reason: str, release_stock: bool, blind: bool = False) -> None:
        self.write(O.CLOSED) if blind else self.to(O.CLOSED)
        self.close_reason = reason
        self.stock_released = self.stock_released or release_stock


class Trade:
    __slots__ = ("id", "order", "user", "amount", "state", "expires_at", "refunded", "created_at")

    def __init__(self, id: str, order: str, user: str, amount: int, expires_at: float,
                 created_at: float = 0.0) -> None:
        self.id, self.order, self.user, self.amount = id, order, user, amount
        self.state = T.CREATED
        self.expires_at = expires_at
        self.created_at = created_at
        self.refunded = 0  # fen returned to the buyer (a refund, or the reversal of a debit on a closed trade)

    def to(self, new: TradeState) -> None:
        self.state = advance(self.state, new, f"trade {self.id}")

    def debit(self, ledger: Ledger, txn_id: str) -> Txn:
        """The bank debited the buyer: the trade succeeds, money moves user -> clearing."""
        self.to(T.SUCCEEDED)
        txn = transfer(txn_id, CHARGE, f"user:{self.user}", "clearing", self.amount)
        ledger.post(txn)
        return txn

    def refund(self, ledger: Ledger, txn_id: str) -> Txn:
        """Refund the full amount: money moves clearing -> user."""
        self.to(T.REFUNDED)
        self.refunded = self.amount
        txn = transfer(txn_id, REFUND, "clearing", f"user:{self.user}", self.amount)
        ledger.post(txn)
        return txn


class Agreement:
    """A BNPL (pay after use) agreement: authorized at checkout, finished by the merchant, then deducted."""

    __slots__ = ("id", "order", "user", "merchant", "amount", "state", "expires_at", "paid_by_user",
                 "merchant_paid", "refund_due")

    def __init__(self, id: str, order: str, user: str, merchant: str, amount: int, expires_at: float) -> None:
        self.id, self.order, self.user, self.merchant, self.amount = id, order, user, merchant, amount
        self.state = A.AUTHORIZED
        self.expires_at = expires_at
        self.paid_by_user = False
        self.merchant_paid = False
        self.refund_due = False  # an accepted after-sales request waits for the buyer's money to refund it

    def to(self, new: AgreementState) -> None:
        self.state = advance(self.state, new, f"agreement {self.id}")

    def finish(self) -> None:
        """The provider received the merchant's finish call: deduction starts. No money moves yet."""
        self.to(A.FINISH_REQUESTED)
        self.to(A.DEDUCTING)

    def deducted(self, ledger: Ledger, txn_id: str, by_hand: bool = False) -> list[Txn]:
        """The buyer's money reached the provider (a deduction, or a repayment by hand); the provider
        pays the merchant unless it already compensated them."""
        if self.paid_by_user:
            raise ValueError(f"agreement {self.id} already paid")
        self.paid_by_user = True
        kind = BNPL_REPAYMENT if by_hand else BNPL_DEDUCTION
        txns = [transfer(txn_id, kind, f"user:{self.user}", "bnpl", self.amount)]
        if not self.merchant_paid:
            self.merchant_paid = True
            txns.append(transfer(txn_id + "-payout", BNPL_PAYOUT, "bnpl", f"merchant:{self.merchant}", self.amount))
        for txn in txns:
            ledger.post(txn)
        return txns

    def compensate(self, ledger: Ledger, txn_id: str) -> Txn | None:
        """Deductions kept failing: the provider guarantees the merchant (a no-op if already paid out)."""
        self.to(A.COMPENSATED)
        if self.merchant_paid:
            return None
        self.merchant_paid = True
        txn = transfer(txn_id, BNPL_COMPENSATION, "bnpl", f"merchant:{self.merchant}", self.amount)
        ledger.post(txn)
        return txn


class BuyerAccount:
    """What a buyer's bank, wallet and BNPL provider know of them, persisting across retries and orders.

    Amounts in fen; ``None`` is "no such limit". ``debit`` is the bank's decision on one debit the
    per-call outcome already approved: nothing here is drawn, so an empty wallet stays empty on
    every retry and the next order until it is topped up, and a card line used up stays used up.
    """

    __slots__ = ("balance", "card_left", "daily_limit", "day", "spent_today", "declines_today", "flagged",
                 "bnpl_outstanding", "topping_up")

    def __init__(self, balance: int | None = None, card_left: int | None = None, daily_limit: int | None = None,
                 flagged: bool = False) -> None:
        self.balance, self.card_left, self.daily_limit, self.flagged = balance, card_left, daily_limit, flagged
        self.day = 0
        self.spent_today = 0
        self.declines_today = 0
        self.bnpl_outstanding = 0  # authorized pay-after-use amounts not yet paid back
        self.topping_up = False

    def _today(self, day: int) -> None:
        if day != self.day:
            self.day, self.spent_today, self.declines_today = day, 0, 0

    def frozen(self, day: int, freeze_after: int | None) -> bool:
        """Risk control refuses this buyer: flagged, or ``freeze_after`` debits declined today."""
        self._today(day)
        return self.flagged or (freeze_after is not None and self.declines_today >= freeze_after)

    def declined(self, day: int) -> None:
        """A debit of this buyer was refused (counted towards risk control's daily freeze)."""
        self._today(day)
        self.declines_today += 1

    def debit(self, instrument: str, amount: int, day: int) -> str:
        """Take ``amount`` from the wallet balance or the card line: ``approved``, ``declined``
        (not enough balance or credit line) or ``limit`` (the day's limit would be exceeded)."""
        self._today(day)
        if self.daily_limit is not None and self.spent_today + amount > self.daily_limit:
            return "limit"
        if instrument == "wallet" and self.balance is not None:
            if self.balance < amount:
                return "declined"
            self.balance -= amount
        elif instrument == "card" and self.card_left is not None:
            if self.card_left < amount:
                return "declined"
            self.card_left -= amount
        self.spent_today += amount
        return "approved"

    def deduct(self, sources: tuple[str, ...], amount: int, day: int) -> tuple[str | None, bool]:
        """A BNPL deduction (代扣) of ``amount`` from the buyer's payment methods ``sources`` in turn, as
        WeChat Pay deducts ("if the deduction fails, the other payment methods of the user will be polled
        in turn"): the instrument that paid it, or None; and whether the wallet was found short (its buyer
        will top it up). Each method is ``debit`` as the bank decides it: nothing is drawn."""
        wallet_short = False
        for instrument in sources:
            result = self.debit(instrument, amount, day)
            if result == "approved":
                return instrument, wallet_short
            wallet_short = wallet_short or (result == "declined" and instrument == "wallet")
        return None, wallet_short

    def could_deduct(self, sources: tuple[str, ...], amount: int, day: int) -> bool:
        """Would a deduction of ``amount`` from ``sources`` succeed now (:meth:`deduct`, without taking it)?"""
        self._today(day)
        if self.daily_limit is not None and self.spent_today + amount > self.daily_limit:
            return False
        for instrument in sources:
            left = self.balance if instrument == "wallet" else self.card_left if instrument == "card" else None
            if left is None or left >= amount:
                return True
        return False

    def give_back(self, instrument: str, amount: int) -> bool:
        """A refund's ``amount`` returns to the wallet balance or card line (``instrument``) it was taken
        from (``user.refund_restores``); False when the account keeps no such limit (nothing to restore)."""
        if instrument == "wallet" and self.balance is not None:
            self.balance += amount
        elif instrument == "card" and self.card_left is not None:
            self.card_left += amount
        else:
            return False
        return True

    def bnpl_room(self, amount: int, limit: int) -> bool:
        """Pay after use: does ``amount`` fit the credit limit beside what the buyer still owes?"""
        return self.bnpl_outstanding + amount <= limit
