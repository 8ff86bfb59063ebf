"""The project's one vocabulary: anomaly classes and the timeline's resolution.

Every part that names an anomaly (the checker, results, sweeps, reports, thresholds, the live run)
imports it from here, so no part keeps its own list and none has to import the scenario loader or the
SimPy model to learn the names. The meaning of each class: ``docs/checker.md``.
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
)

# How many buckets a run's timeline (anomalies and arrivals over time) is cut into, in both clocks.
TIMELINE_BUCKETS = 150
