"""benchmarks/load_capacity.py's search: doubling, then bisection between the last pass and first failure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from load_capacity import bracket  # noqa: E402


def _machine(capacity: float):
    probed: list[float] = []

    def probe_at(rate: float) -> bool:
        probed.append(rate)
        return rate <= capacity
    return probe_at, probed


def test_bisects_after_a_small_doubling_budget():
    """Four doublings (40, 80, 160, 320: 320 fails) no longer end the search: it bisects to within 5%."""
    probe_at, probed = _machine(250.0)
    low, high, rates = bracket(probe_at, 40.0, 4, 6)
    assert probed == rates and rates[:6] == [40.0, 80.0, 160.0, 320.0, 240.0, 280.0]
    assert low <= 250.0 < high and high - low <= 0.05 * high
    assert len(rates) <= 4 + 6


def test_bisection_budget_and_edges():
    probe_at, _ = _machine(250.0)
    low, high, rates = bracket(probe_at, 40.0, 4, 1)  # one bisection probe: 240 passes
    assert (low, high, rates[-1]) == (240.0, 320.0, 240.0)
    probe_at, _ = _machine(10.0)
    low, high, rates = bracket(probe_at, 40.0, 4, 3)  # the first rate fails: halve towards zero
    assert rates[:4] == [40.0, 20.0, 10.0, 15.0] and low == 10.0 and high <= 15.0
    probe_at, _ = _machine(1e9)
    assert bracket(probe_at, 40.0, 3, 4) == (160.0, None, [40.0, 80.0, 160.0])  # never failed: no bracket
