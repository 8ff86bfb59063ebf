"""What the simulation could reach if its history cost nothing: the ceiling of sim_throughput's ratio.

`sim_throughput.py` judges the model by its orders/s against a bare SimPy M/M/c loop (issue 17: >= 0.20).
This benchmark asks how much of the gap is the history (the events every actor emits and the checker
that judges them) and how much is the model itself, and whether the growth of the time per order with
the run's length is the history's or the model's. It runs one replication of scenarios/baseline.toml
(sized as sim_throughput.py sizes it) in a fresh process per measurement, three ways:

  * ``full``        the replication as `checkout-chaos simulate` runs it;
  * ``no_checker``  every event built by ``World.emit`` as now, then dropped: no checker, no judgement;
  * ``no_history``  no event built at all (only what the model reads back, the write log of a lagging
                    read replica, is kept): the model's own cost, the floor any change to events, their
                    format or the checker can reach without changing the model.

The last two give results that mean nothing (no order is judged); they are timings only. Modes and sizes
are alternated for ``--rounds`` rounds and the medians of CPU µs per order are reported, with bare
SimPy's CPU µs per customer measured in each round. The ratios use CPU time on both sides.

  python benchmarks/sim_ceiling.py [--sizes 10000,100000] [--rounds 3]

The last line is one JSON object; ``ratio`` is the ceiling: orders/s of ``no_history`` ÷ bare SimPy's
customers/s (what sim_throughput's ratio would be with a free history and checker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("full", "no_checker", "no_history")


def bare_simpy_cpu_us() -> float:
    """CPU µs per customer of sim_throughput.py's bare SimPy M/M/c loop."""
    from benchmarks.sim_throughput import bare_simpy

    return 1e6 / bare_simpy(clock=time.process_time)


def world_patches(mode: str) -> dict:
    """``World`` methods to replace for ``mode``: the history dropped after it is built (``no_checker``)
    or never built (``no_history``).

    ``no_checker`` keeps ``World.emit`` itself and only lets its sink drop every event (the checker is
    never fed); ``no_history`` replaces ``emit`` with what the model reads back from its history, the
    write log of a lagging read replica (``World.state_log``). Either way the model runs as in
    ``full``: the same orders, draws and metrics (tests/test_bench_ceiling.py checks it), only nothing
    is judged."""
    import sim.model.world as W

    if mode == "no_checker":
        def feed_directly(self, checker) -> None:
            self.sink = _drop  # run_replication's own run.start / run.end go the same way

        return {"feed_directly": feed_directly}
    writes = W._ORDER_WRITES

    def emit(self, type_, actor, order, **fields):
        log = self.state_log
        if log is not None and type_ in writes:
            log.setdefault(order, []).append((self.env._now, writes[type_]))

    return {"emit": emit}


def _drop(event: dict) -> None:
    pass


def child(orders: int, mode: str) -> None:
    """In a fresh process: one replication of ~``orders`` orders in ``mode``; CPU µs per order, peak RSS."""
    from benchmarks.sim_throughput import load_default, peak_rss_mb, sized
    from sim.model.model import run_replication

    if mode != "full":
        import sim.model.world as W

        for name, fn in world_patches(mode).items():
            setattr(W.World, name, fn)
    s = sized(load_default(), orders)
    t = time.process_time()
    r = run_replication(s, 0)
    cpu = time.process_time() - t
    print(json.dumps({"orders": r.orders_created, "us_per_order": 1e6 * cpu / r.orders_created,
                      "peak_rss_mb": peak_rss_mb()}))


def measure(orders: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(orders), "--mode", mode],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 10000,100000, found {text!r}") from None
    if len(sizes) < 1 or any(k < 1000 for k in sizes):
        raise argparse.ArgumentTypeError(f"expected one or more sizes of at least 1000 orders, found {text!r}")
    return sorted(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_sizes, default=[10_000, 100_000],
                    help="orders per replication, comma-separated (default 10000,100000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds; medians reported (default 3)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="full", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mode)
        return
    if args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, found {args.rounds}")
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {load:.1f}", flush=True)
    us: dict[tuple[int, str], list[float]] = {}
    bare: list[float] = []
    for k in range(args.rounds):
        bare.append(bare_simpy_cpu_us())
        print(f"round {k + 1}: bare SimPy {bare[-1]:6.2f} µs CPU per customer", flush=True)
        for n in args.sizes:
            for mode in (MODES if k % 2 == 0 else MODES[::-1]):
                r = measure(n, mode)
                us.setdefault((n, mode), []).append(r["us_per_order"])
                print(f"  {r['orders']:>9,} orders  {mode:<10}  {r['us_per_order']:7.1f} µs CPU/order  "
                      f"peak RSS {r['peak_rss_mb']:6.1f} MB", flush=True)
    b = statistics.median(bare)
    med = {key: statistics.median(v) for key, v in us.items()}
    small, large = args.sizes[0], args.sizes[-1]
    print(f"medians of {args.rounds} rounds (bare SimPy {b:.2f} µs per customer):")
    for n in args.sizes:
        full = med[(n, "full")]
        cells = "  ".join(f"{m} {med[(n, m)]:6.1f} µs (ratio {b / med[(n, m)]:.3f})" for m in MODES)
        print(f"  {n:>9,} orders: {cells}; history {100 * (full - med[(n, 'no_history')]) / full:4.1f}% "
              f"of the time, checker {100 * (full - med[(n, 'no_checker')]) / full:4.1f}%")
    growth = {m: med[(large, m)] / med[(small, m)] for m in MODES}
    if large != small:
        print("time per order, largest / smallest size: " + ", ".join(f"{m} {g:.2f}x" for m, g in growth.items()))
    fig = {f"us_{m}_{n // 1000}k": round(med[(n, m)], 1) for n in args.sizes for m in MODES}
    print(json.dumps({"ratio": round(b / med[(small, "no_history")], 4),
                      "ratio_full": round(b / med[(small, "full")], 4),
                      "ratio_no_checker": round(b / med[(small, "no_checker")], 4),
                      "bare_simpy_us_per_customer": round(b, 3),
                      "history_share": round(1 - med[(small, "no_history")] / med[(small, "full")], 3),
                      "checker_share": round(1 - med[(small, "no_checker")] / med[(small, "full")], 3),
                      **fig, **{f"growth_{m}": round(g, 3) for m, g in growth.items()},
                      "sizes": args.sizes, "rounds": args.rounds, "load_average_at_start": round(load, 2)}))


if __name__ == "__main__":
    main()
