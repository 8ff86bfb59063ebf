"""Named notification retry schedules, from the providers' public documentation.

Each schedule is the list of *gaps* (seconds) between one delivery attempt and the next; the first
attempt goes out immediately. Sources are in ``docs/domain.md``.
"""

from __future__ import annotations

_M = 60.0
_H = 3600.0

NOTIFY_SCHEDULES: dict[str, tuple[float, ...]] = {
    # Alipay: ~8 attempts within ~25 h: 4m, 10m, 10m, 1h, 2h, 6h, 15h (docs.antom.com/ac/web/async).
    "alipay": (4 * _M, 10 * _M, 10 * _M, 1 * _H, 2 * _H, 6 * _H, 15 * _H),
    # WeChat Pay: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h (~24h4m).
    "wechat": (15.0, 15.0, 30.0, 3 * _M, 10 * _M, 20 * _M, 30 * _M, 30 * _M, 30 * _M, 60 * _M,
               3 * _H, 3 * _H, 3 * _H, 6 * _H, 6 * _H),
    # Stripe: exponential backoff for up to 3 days (doubling from 1 minute, ~68 h in all).
    "stripe": tuple(60.0 * 2**k for k in range(12)),
    # Adyen: 3 immediate retries, then 2m, 5m, 10m, 15m, 30m, 1h, 2h, 4h, 8h, then every 8h (capped here at 3 days).
    "adyen": (0.0, 0.0, 0.0, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 30 * _M, 1 * _H, 2 * _H, 4 * _H, 8 * _H)
    + (8 * _H,) * 6,
}


def schedule_span(gaps: tuple[float, ...]) -> float:
    """Seconds from the first attempt to the last one of a schedule."""
    return float(sum(gaps))
