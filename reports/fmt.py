"""Numbers as a design review reads them: rates, intervals, durations, money, counts."""

from __future__ import annotations

import math
from typing import Any, Sequence

from sim.results import format_rate


# One rate format for tables, charts and summaries (sim.results is the lower layer).
rate = format_rate


def interval(ci: Sequence[float] | None) -> str:
    """``[2.4e-3, 3.8e-3]``, or ``"—"`` when there is no interval."""
    if not ci:
        return "—"
    return f"[{rate(ci[0])}, {rate(ci[1])}]"


def duration(seconds: float | None) -> str:
    """Human durations: ``0.35`` -> ``"350ms"``, ``200`` -> ``"3m 20s"``, ``3720`` -> ``"1h 02m"``."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    s = float(seconds)
    if s < 0:
        return "-" + duration(-s)
    if s == 0:
        return "0s"
    if s < 1:
        return f"{s * 1000:.3g}ms"
    if s < 9.95:
        return f"{s:.2g}s"
    if s < 59.5:
        return f"{round(s)}s"
    if s < 3599.5:
        m, sec = divmod(round(s), 60)
        return f"{m}m" if sec == 0 else f"{m}m {sec:02d}s"
    if s < 86370:
        h, m = divmod(round(s / 60), 60)
        return f"{h}h" if m == 0 else f"{h}h {m:02d}m"
    d, h = divmod(round(s / 3600), 24)
    return f"{d}d" if h == 0 else f"{d}d {h}h"


def money(cny: float | None) -> str:
    """``1234.5`` -> ``"¥1,234.50"``."""
    if cny is None:
        return "—"
    return f"¥{cny:,.2f}"


def count(n: Any) -> str:
    if n is None:
        return "—"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.3g}"
    return f"{int(n):,}"


def number(value: Any) -> str:
    """A metric of unknown kind, compactly (utilisation, waits, queue lengths)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"
