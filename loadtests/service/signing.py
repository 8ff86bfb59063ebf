"""Signed notifications: HMAC-SHA256 over the timestamp and the raw body (the Stripe scheme).

The provider sends every notification with the header::

    X-Chaos-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

A receiver recomputes the HMAC over the raw bytes it received (before any JSON parsing), compares in
constant time, and refuses a timestamp more than ``tolerance`` seconds away from its own clock (a
replayed capture). The shared secret comes from ``--notify-secret`` or ``CHECKOUT_CHAOS_NOTIFY_SECRET``.
"""

from __future__ import annotations

import hmac
import time

HEADER = "X-Chaos-Signature"
TOLERANCE = 300.0


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.digest(secret, str(t).encode() + b"." + body, "sha256").hex()  # one-shot: OpenSSL's, in C
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str | None, tolerance: float = TOLERANCE,
           now: float | None = None) -> str | None:
    """``None`` if ``header`` signs ``body``; otherwise why not (missing, malformed, stale, mismatch)."""
    if not header:
        return f"missing {HEADER} header"
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex>"
    if abs((time.time() if now is None else now) - t) > tolerance:
        return f"stale {HEADER} timestamp (more than {tolerance:g}s from now)"
    expected = hmac.digest(secret, str(t).encode() + b"." + body, "sha256").hex()  # (one-shot: as hmac.new)
    # compare_digest refuses (TypeError) a str that is not ASCII: such a v1 (a header's bytes read as
    # latin-1) is no hex digest, so it does not match
    if not any(v.isascii() and hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        return f"{HEADER} does not match the body"
    return None
