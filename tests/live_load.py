"""Run ``checkout-chaos load`` the way a user does (its own process) and several such runs side by side.

The live tests compare arms (a naive close against a safe one) whose runs are independent: each has its
own ports, data directory and results, and most of a run's wall time is the compressed scenario's clock,
not CPU. Running the arms at once costs the test the longest arm instead of their sum.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

ROOT = Path(__file__).parents[1]
T = TypeVar("T")


def load(argv: list[str], log: Path, timeout: float = 600.0) -> int:
    """``checkout-chaos load ...`` (``argv`` without the program name) in a process of its own, its output in
    ``log``; its exit code. A run that outlives ``timeout`` seconds is killed and fails the test."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sim.cli", *argv], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"load did not finish in {timeout:g}s: {log.read_text()[-2000:]}") from None


def side_by_side(**arms: Callable[[], T]) -> dict[str, T]:
    """Call each arm (a function of no arguments) in its own thread; their results by name. An arm that
    raised raises here (the first one named)."""
    with ThreadPoolExecutor(len(arms)) as pool:
        futures = {name: pool.submit(arm) for name, arm in arms.items()}
        return {name: f.result() for name, f in futures.items()}
