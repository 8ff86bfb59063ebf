"""Simulation throughput: the full model against SimPy's own limit, memory, and --jobs speed-up.

Prints, in one run:
  * simulated orders per second of the default scenario (scenarios/baseline.toml) on one core;
  * customers per second of a bare SimPy M/M/c loop (Poisson arrivals, c servers, exponential service,
    simpy.Resource) — the engine's own limit on this machine — and the ratio of the two;
  * peak RSS of a fresh process simulating ~100k and ~1M orders (same arrival rate, longer horizon);
  * the wall-time speed-up of --jobs 2 over --jobs 1 on four replications.
The last line is one JSON object. Run on purpose:  python benchmarks/sim_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_simpy(n: int = 200_000, c: int = 4, lam: float = 3.6, mu: float = 1.0, seed: int = 1) -> float:
    """Customers per second through a bare SimPy M/M/c queue."""
    import simpy

    env = simpy.Environment()
    res = simpy.Resource(env, capacity=c)
    r = random.Random(seed)

    def customer():
        with res.request() as req:
            yield req
            yield env.timeout(r.expovariate(mu))

    def source():
        for _ in range(n):
            yield env.timeout(r.expovariate(lam))
            env.process(customer())

    env.process(source())
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def load_default():
    from sim.scenario import Scenario, load_scenario

    path = ROOT / "scenarios" / "baseline.toml"
    return load_scenario(path) if path.exists() else Scenario(name="defaults")


def sized(scenario, orders: int):
    """The scenario with a horizon long enough for about ``orders`` orders at its arrival rate."""
    rate = scenario.load.arrival_rate * scenario.load.peak_multiplier()
    horizon = max(60.0, orders / rate)
    return scenario.with_overrides({"run.horizon": f"{horizon:.0f}s", "run.warmup": "30s",
                                    "load.profile": []})


def model_rate(orders: int) -> tuple[float, int]:
    from sim.model.model import run_replication

    s = sized(load_default(), orders)
    t = time.perf_counter()
    r = run_replication(s, 0, examples=True)
    return r.orders_created / (time.perf_counter() - t), r.orders_created


def child_rss(orders: int) -> None:
    """Run in a fresh process: simulate ~orders orders, print peak RSS (MB) and orders."""
    from sim.model.model import run_replication

    s = sized(load_default(), orders)
    r = run_replication(s, 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"orders": r.orders_created, "peak_rss_mb": peak}))


def peak_rss(orders: int) -> tuple[float, int]:
    out = subprocess.run([sys.executable, __file__, "--child", str(orders)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["peak_rss_mb"], d["orders"]


def jobs_speedup(orders_per_rep: int) -> float:
    from sim.runner import simulate

    s = sized(load_default(), orders_per_rep).with_overrides({"run.replications": 4})
    times = {}
    for jobs in (1, 2):
        t = time.perf_counter()
        simulate(s, jobs=jobs, progress=False)
        times[jobs] = time.perf_counter() - t
    return times[1] / times[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (10k/100k orders) for a fast look")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_rss(args.child)
        return
    small, large = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    bare = bare_simpy()
    print(f"bare SimPy M/M/c:            {bare:12,.0f} customers/s")
    rate, n = model_rate(50_000 if not args.quick else 20_000)
    print(f"full model (default, 1 core):{rate:12,.0f} orders/s   ({n:,} orders)")
    ratio = rate / bare
    print(f"ratio model / bare SimPy:    {ratio:12.3f}   (target >= 0.15)")
    rss_small, n_small = peak_rss(small)
    rss_large, n_large = peak_rss(large)
    print(f"peak RSS {n_small:>9,} orders:   {rss_small:9.1f} MB")
    print(f"peak RSS {n_large:>9,} orders:   {rss_large:9.1f} MB   ({rss_large / rss_small:.2f}x; target <= 1.5x)")
    speedup = jobs_speedup(20_000 if not args.quick else 5_000)
    print(f"--jobs 2 speed-up over 1:    {speedup:12.2f}   (target >= 1.8)")
    print(json.dumps({"orders_per_s": round(rate, 1), "bare_simpy_per_s": round(bare, 1), "ratio": round(ratio, 4),
                      "peak_rss_mb_100k": round(rss_small, 1), "peak_rss_mb_1m": round(rss_large, 1),
                      "orders_small": n_small, "orders_large": n_large, "jobs2_speedup": round(speedup, 3),
                      "quick": args.quick}))


if __name__ == "__main__":
    main()
