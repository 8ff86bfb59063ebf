"""Example data shipped with the package.

``EXAMPLE_HISTORY`` is a small hand-written history (JSON Lines, see ``docs/events.md``): a healthy
wallet payment, the seed story (the app showed "payment succeeded", the notification arrived after the
order's TTL and the close job closed it anyway), a late payment refunded, a double charge from a retry
with a new trade number, a BNPL order delivered but never finished, an abandoned order, a near miss
(close refused because already paid), a settled BNPL order and a charge no order accounts for. Try::

    checkout-chaos check "$(python -c 'import sim.examples as e; print(e.EXAMPLE_HISTORY)')"
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_HISTORY: Path = Path(__file__).with_name("example_history.jsonl")
