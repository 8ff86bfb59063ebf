"""A double-entry ledger in integer minor units (fen).

Every movement is one transaction whose postings sum to zero, so money is neither created nor
destroyed: the sum of all balances is always zero. Accounts are strings: ``user:<id>``,
``merchant:<id>``, ``clearing`` (the gateway's settlement account) and ``bnpl`` (the credit provider).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Transaction kinds (the ``kind`` of a ``ledger.txn`` history event).
CHARGE = "charge"  # user -> clearing (a debit through the bank)
REFUND = "refund"  # clearing -> user
SETTLEMENT = "settlement"  # clearing -> merchant
BNPL_DEDUCTION = "bnpl_deduction"  # user -> bnpl (代扣)
BNPL_REPAYMENT = "bnpl_repayment"  # user -> bnpl, by hand
BNPL_PAYOUT = "bnpl_payout"  # bnpl -> merchant (on finish)
BNPL_COMPENSATION = "bnpl_compensation"  # bnpl -> merchant after deductions kept failing

KINDS = (CHARGE, REFUND, SETTLEMENT, BNPL_DEDUCTION, BNPL_REPAYMENT, BNPL_PAYOUT, BNPL_COMPENSATION)


class UnbalancedTransaction(ValueError):
    """Postings that do not sum to zero: the ledger refuses them."""


@dataclass(frozen=True, slots=True)
class Txn:
    txn: str
    kind: str
    postings: tuple[tuple[str, int], ...]  # (account, amount): + credits the account, - debits it

    def as_event_fields(self) -> dict:
        return {"txn": self.txn, "kind": self.kind,
                "postings": [{"account": a, "amount": v} for a, v in self.postings]}


def transfer(txn_id: str, kind: str, source: str, dest: str, amount: int) -> Txn:
    """A two-legged transaction moving ``amount`` fen from ``source`` to ``dest``."""
    if amount <= 0:
        raise ValueError(f"a transfer moves a positive amount, got {amount}")
    return Txn(txn_id, kind, ((source, -amount), (dest, amount)))


@dataclass
class Ledger:
    """Balances per account; :meth:`post` applies a balanced transaction, exactly once per txn id.

    With ``by_kind=True`` balances are kept per account *kind* (``user``, ``merchant``, ``clearing``,
    ``bnpl``) and txn ids are not remembered: the same double-entry check in constant memory, for a
    simulation of millions of buyers that never posts a txn twice. (Each buyer's own balance is in
    the history's ``ledger.txn`` events.)
    """

    balances: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    by_kind: bool = False

    def post(self, txn: Txn) -> bool:
        """Apply ``txn``; False (and no change) if this txn id was already posted (idempotent)."""
        if sum(v for _, v in txn.postings) != 0:
            raise UnbalancedTransaction(f"{txn.txn}: postings sum to {sum(v for _, v in txn.postings)}")
        b = self.balances
        if self.by_kind:
            for account, amount in txn.postings:
                kind = account.split(":", 1)[0]
                b[kind] = b.get(kind, 0) + amount
            return True
        if txn.txn in self.seen:
            return False
        self.seen.add(txn.txn)
        for account, amount in txn.postings:
            b[account] = b.get(account, 0) + amount
        return True

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def total(self) -> int:
        """Sum of all balances: zero in a sound ledger."""
        return sum(self.balances.values())
