"""The domain core: pure Python, no SimPy, no HTTP, no files.

``states`` (state machines), ``entities`` (orders, trades, agreements and the money each step moves),
``ledger`` (double entry in fen), ``policies`` (close, late payment, retries, idempotency,
reconciliation, BNPL), ``schedules`` (named notification retry schedules) and ``calendar`` (working
days: weekends and holidays skipped on the clock). The simulation and the
live reference checkout both call these, so a policy is written once.
"""

from sim.domain.entities import Agreement, Order, Trade
from sim.domain.ledger import Ledger, Txn, transfer
from sim.domain.states import AgreementState, IllegalTransition, OrderState, TradeState, advance, can_advance

__all__ = ["Agreement", "AgreementState", "IllegalTransition", "Ledger", "Order", "OrderState", "Trade",
           "TradeState", "Txn", "advance", "can_advance", "transfer"]
