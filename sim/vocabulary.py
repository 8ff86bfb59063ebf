"""The project's one vocabulary: anomaly classes, history event types, what a history may observe.

Every part that names an anomaly or an event type (the checker, results, sweeps, reports, thresholds,
the live run) imports it from here, so no part keeps its own list and none has to import the scenario
loader or the SimPy model to learn the names. The meaning of each class: ``docs/checker.md``; of each
event type: ``docs/events.md``.
"""

from __future__ import annotations

ANOMALY_CLASSES: tuple[str, ...] = (
    "paid_but_closed",
    "success_shown_then_closed",
    "failure_shown_but_charged",
    "double_charge",
    "charge_without_order",
    "order_paid_without_charge",
    "stuck_pending",
    "bnpl_stuck_unfinished",
    "bnpl_false_overdue",
    "bnpl_deduction_failed",
    "ledger_imbalance",
    "amount_mismatch",
    "over_refund",
    "refund_to_wrong_party",
    "duplicate_fulfilment",
    "oversold",
    "bnpl_double_deduction",
    "refunded_and_shipped",
)

# Every event type of docs/events.md. A history may carry others (they are counted and named, not read).
EVENT_TYPES: tuple[str, ...] = (
    "run.start", "run.end",
    "order.created", "order.paid", "order.closed", "order.reopened", "order.shipped", "order.delivered",
    "order.completed", "order.refund_pending", "order.refunded", "order.refund_failed", "order.end",
    "order.observed",
    "trade.created", "trade.processing", "trade.succeeded", "trade.failed", "trade.unknown", "trade.closed",
    "trade.close_refused", "trade.refunded", "trade.refund_failed", "trade.reversed",
    "merchant.fulfilment", "merchant.worker_restarted",
    "ledger.txn",
    "notify.sent", "notify.lost", "notify.received",
    "app.shown", "user.pay", "user.retry", "user.abandon", "user.cancel", "user.complaint",
    "after_sales.requested", "after_sales.accepted", "after_sales.refused",
    "client.invoke", "client.ok", "client.fail", "client.unknown",
    "bnpl.authorized", "bnpl.declined", "bnpl.finish_sent", "bnpl.finish_failed", "bnpl.finish_requested",
    "bnpl.deduction", "bnpl.repaid", "bnpl.synced", "bnpl.overdue", "bnpl.overdue_cleared",
    "bnpl.compensated", "bnpl.settled", "bnpl.cancelled", "bnpl.expired",
    "recon.found", "recon.repaired",
    "support.ticket", "support.resolved",
)

# What a history can have observed (docs/checker.md, "Partial observability"), and the event types
# whose presence shows that it did.
OBSERVATION_SOURCES: dict[str, tuple[str, ...]] = {
    "ledger": ("ledger.txn",),
    "gateway": tuple(t for t in EVENT_TYPES if t.startswith("trade.")),
    "checkout": tuple(t for t in EVENT_TYPES if t.startswith("order.") and t != "order.end"),
    "screens": ("app.shown",),
    "bnpl": tuple(t for t in EVENT_TYPES if t.startswith("bnpl.")),
}

# How many buckets a run's timeline (anomalies and arrivals over time) is cut into, in both clocks.
TIMELINE_BUCKETS = 150
