"""One look for every chart: a colour, marker, line style and hatch for each anomaly class, policy,
order state and swimlane actor, so a class looks the same in every figure of every report.

Colours come from the Okabe–Ito and Paul Tol palettes, which stay distinguishable with the common
colour-vision deficiencies; markers, dashes and hatches differ too, so a greyscale print still reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sim.vocabulary import ANOMALY_CLASSES


@dataclass(frozen=True)
class Look:
    color: str
    marker: str = "o"
    linestyle: Any = "-"
    hatch: str = ""


# Anomaly classes: the paid-but-closed family in warm colours, double/long/short charges in blues and
# greens, BNPL in Tol's dark indigo/wine/olive, money created or destroyed in black. The six later
# classes take Paul Tol's colours that sit farthest (CIELAB ΔE ≥ 10) from all the others in normal vision
# and in simulated deuteranopia, protanopia and tritanopia (tests/test_reports_style.py measures it);
# each also has a marker and dash pattern of its own, so no two classes differ by colour alone.
CLASS_LOOKS: dict[str, Look] = {
    "paid_but_closed": Look("#D55E00", "o", "-", "//"),
    "success_shown_then_closed": Look("#E69F00", "s", (0, (5, 2)), "\\\\"),
    "failure_shown_but_charged": Look("#CC79A7", "^", (0, (1, 1.5)), "xx"),
    "double_charge": Look("#0072B2", "D", (0, (6, 2, 1, 2)), ".."),
    "charge_without_order": Look("#56B4E9", "v", (0, (3, 1, 1, 1, 1, 1)), "--"),
    "order_paid_without_charge": Look("#009E73", "P", (0, (8, 3)), "||"),
    "stuck_pending": Look("#44AA99", "X", (0, (2, 2)), "++"),
    "bnpl_stuck_unfinished": Look("#332288", "*", "-", "oo"),
    "bnpl_false_overdue": Look("#882255", "h", (0, (5, 2)), "**"),
    "bnpl_deduction_failed": Look("#999933", "<", (0, (1, 1.5)), "OO"),
    "ledger_imbalance": Look("#000000", ">", (0, (6, 2, 1, 2)), "/\\"),
    "amount_mismatch": Look("#EE6677", "d", (0, (4, 1, 1, 1)), "+."),
    "over_refund": Look("#AA3377", "H", (0, (2, 1)), "x."),
    "refund_to_wrong_party": Look("#004488", "8", (0, (7, 2, 2, 2)), "|."),
    "duplicate_fulfilment": Look("#117733", "p", (0, (1, 3)), "-."),
    "oversold": Look("#225522", "v", (0, (3, 1, 3, 3)), "/."),
    "bnpl_double_deduction": Look("#222255", "*", (0, (5, 1, 1, 1, 1, 1)), "\\."),
    "refunded_and_shipped": Look("#9900EE", "1", (0, (2, 1, 6, 1)), "o."),
}

_FALLBACK_CLASS = Look("#777777", ".", (0, (4, 4)), "..")

# Known policies keep one colour everywhere; the status quo is vermillion like the harm it causes.
POLICY_LOOKS: dict[str, Look] = {
    "naive": Look("#D55E00", "o", "-"),
    "query_then_close": Look("#E69F00", "s", (0, (5, 2))),
    "close_trade_then_order": Look("#0072B2", "D", (0, (1, 1.5))),
    "ignore": Look("#D55E00", "o", "-"),
    "auto_refund": Look("#009E73", "^", (0, (6, 2, 1, 2))),
    "reopen": Look("#CC79A7", "v", (0, (8, 3))),
}
# Other line labels (combinations, custom values) take these in order of appearance.
SERIES_LOOKS: tuple[Look, ...] = (
    Look("#0072B2", "o", "-"),
    Look("#D55E00", "s", (0, (5, 2))),
    Look("#009E73", "^", (0, (1, 1.5))),
    Look("#CC79A7", "D", (0, (6, 2, 1, 2))),
    Look("#E69F00", "v", (0, (8, 3))),
    Look("#56B4E9", "P", (0, (3, 1, 1, 1, 1, 1))),
    Look("#000000", "X", (0, (2, 2))),
    Look("#882255", "*", "-"),
)

# Order states: Tol's light palette (a background for the class colours drawn over it).
STATE_LOOKS: dict[str, Look] = {
    "awaiting_payment": Look("#EEDD88", hatch=".."),
    "paid": Look("#77AADD", hatch="//"),
    "refund_pending": Look("#EE8866", hatch="xx"),
    "refunded": Look("#FFAABB", hatch="\\\\"),
    "closed": Look("#BBBBBB", hatch="--"),
    "shipped": Look("#99DDFF", hatch="++"),
    "delivered": Look("#BBCC33", hatch="||"),
    "completed": Look("#44BB99", hatch=""),
}
_STATE_FALLBACK = (Look("#DDDDDD", hatch="oo"), Look("#AAAA00", hatch="**"))

# Swimlanes, top to bottom: the buyer's side, the platform, the payment side, fulfilment and credit.
LANES: tuple[str, ...] = ("user", "app", "client", "order_service", "gateway", "bank", "merchant", "bnpl", "reconciler")
# Always drawn (the cast of every payment story); the others only when an event happens in them.
CORE_LANES: tuple[str, ...] = ("user", "app", "order_service", "gateway", "bank")
LANE_COLORS: dict[str, str] = {
    "user": "#332288", "app": "#88CCEE", "client": "#88CCEE", "order_service": "#117733",
    "gateway": "#CC6677", "bank": "#882255", "merchant": "#999933", "bnpl": "#AA4499", "reconciler": "#44AA99",
}

SIMULATION_LOOK = Look("#0072B2", "o", "-")
LIVE_LOOK = Look("#D55E00", "s", (0, (5, 2)))
FAULT_COLOR = "#888888"

RC = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E4E4E4",
    "grid.linewidth": 0.7,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "hatch.linewidth": 0.6,
    "svg.fonttype": "none",  # keep text as text in SVG (searchable, editable in slides)
}


def class_look(cls: str) -> Look:
    return CLASS_LOOKS.get(cls, _FALLBACK_CLASS)


def ordered_classes(names: Iterable[str]) -> list[str]:
    """Classes in the vocabulary's order (``sim.vocabulary.ANOMALY_CLASSES``), unknown ones after."""
    names = list(dict.fromkeys(names))
    known = [c for c in ANOMALY_CLASSES if c in names]
    return known + sorted(c for c in names if c not in ANOMALY_CLASSES)


def series_looks(labels: Iterable[str]) -> dict[str, Look]:
    """A look per line label: a known policy keeps its own, others take the series palette in order."""
    out: dict[str, Look] = {}
    labels = list(dict.fromkeys(labels))
    known = [lab for lab in labels if lab in POLICY_LOOKS]
    if len({POLICY_LOOKS[lab].color for lab in known}) == len(known):
        out.update({lab: POLICY_LOOKS[lab] for lab in known})
    free = [look for look in SERIES_LOOKS if look.color not in {o.color for o in out.values()}]
    for lab in labels:
        if lab not in out:
            out[lab] = free.pop(0) if free else SERIES_LOOKS[len(out) % len(SERIES_LOOKS)]
    return out


def state_looks(states: Iterable[str]) -> dict[str, Look]:
    out, spare = {}, list(_STATE_FALLBACK)
    for s in states:
        out[s] = STATE_LOOKS.get(s) or (spare.pop(0) if spare else _STATE_FALLBACK[0])
    return out
