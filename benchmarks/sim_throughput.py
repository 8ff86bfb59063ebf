"""Simulation throughput: the full model against SimPy's own limit, memory, and --jobs speed-up.

Prints, in one run:
  * simulated orders per second of the default scenario (scenarios/baseline.toml) on one core;
  * customers per second of a bare SimPy M/M/c loop (Poisson arrivals, c servers, exponential service,
    simpy.Resource) — the engine's own limit on this machine — and the ratio of the two;
  * peak RSS and time per order of a fresh process simulating ~10k, ~100k and ~1M orders (same arrival
    rate, longer horizon; --quick stops at 100k); memory is judged between the two largest sizes; the
    sizes below 1M run in --repeat processes each (default 3) and their median time per order is used;
  * the wall-time speed-up of --jobs 2 and of a 2-worker Dask LocalCluster (--dask-workers 2) over
    --jobs 1 on four replications (the cluster's start-up is timed apart, not in the speed-up), the
    median of --repeat rounds.
The last line is one JSON object. Run on purpose:  python benchmarks/sim_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_simpy(n: int = 200_000, c: int = 4, lam: float = 3.6, mu: float = 1.0, seed: int = 1,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Customers per second through a bare SimPy M/M/c queue (per second of ``clock``: wall time by default)."""
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
    t = clock()
    env.run()
    return n / (clock() - t)


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


def peak_rss_mb() -> float:
    """This process's own peak resident set (MB): ``VmHWM`` of /proc/self/status where there is one.

    Not ``getrusage``'s ``ru_maxrss``: Linux keeps it across ``exec``, so a child started by a parent
    that had grown larger reports the parent's peak (a 10k-order child of this benchmark reported
    191 MB, its own peak being 91 MB, until 2026-12-08)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_rss(orders: int) -> None:
    """Run in a fresh process: simulate ~orders orders, print peak RSS (MB), orders and CPU µs per order."""
    from sim.model.model import run_replication

    s = sized(load_default(), orders)
    t = time.process_time()
    r = run_replication(s, 0)
    cpu = time.process_time() - t
    print(json.dumps({"orders": r.orders_created, "peak_rss_mb": peak_rss_mb(),
                      "us_per_order": 1e6 * cpu / r.orders_created}))


def sized_run(orders: int, repeat: int = 1) -> dict:
    """Peak RSS, orders and CPU time per order of one replication of ~``orders`` orders in a fresh process;
    with ``repeat`` > 1, that many processes one after the other and the median CPU time per order (a
    run of a few seconds moves by ±15 % between runs on this machine), with every run's figure."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", str(orders)], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    per_order = sorted(r["us_per_order"] for r in runs)
    return {"orders": runs[0]["orders"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "us_per_order": per_order[len(per_order) // 2], "us_per_order_runs": [r["us_per_order"] for r in runs]}


def jobs_speedup(orders_per_rep: int) -> tuple[float, float | None, float | None]:
    """Speed-ups over one process of ``--jobs 2`` and of a 2-worker Dask LocalCluster, and its start-up (s).

    Dask's figures are None when the ``[dask]`` extra is not installed.
    """
    from sim.runner import local_cluster, pool, replicate

    s = sized(load_default(), orders_per_rep).with_overrides({"run.replications": 4})
    times, docs = {}, {}
    for jobs in (1, 2):
        t = time.perf_counter()
        docs[jobs] = pool(s, replicate(s, jobs=jobs, progress=False))
        times[jobs] = time.perf_counter() - t
    try:
        import distributed  # noqa: F401
    except ImportError:
        return times[1] / times[2], None, None
    t = time.perf_counter()
    with local_cluster(2) as address:
        from distributed import Client

        with Client(address) as client:  # workers are fresh processes: import the model once, as start-up
            client.run(importlib.import_module, "sim.model.model")
        startup = time.perf_counter() - t
        t = time.perf_counter()
        docs["dask"] = pool(s, replicate(s, dask=address, progress=False))
        times["dask"] = time.perf_counter() - t
    from sim.results import canonical_json

    if not canonical_json(docs[1]) == canonical_json(docs[2]) == canonical_json(docs["dask"]):
        raise SystemExit("--jobs 1, --jobs 2 and Dask gave different results: a determinism bug")
    return times[1] / times[2], times[1] / times["dask"], startup


def _of(values: list[float]) -> str:
    return "   (median of " + " / ".join(f"{x:.2f}" for x in values) + ")" if len(values) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (10k/100k orders) for a fast look")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes that only show the script works (figures mean nothing)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="fresh processes per size below 1M orders; the median CPU time per order is used (default 3)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat: expected at least 1, found {args.repeat}")
    if args.child:
        child_rss(args.child)
        return
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    if args.smoke:
        sizes = (1_000, 3_000)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}")
    bare = bare_simpy(20_000 if args.smoke else 200_000)
    print(f"bare SimPy M/M/c:            {bare:12,.0f} customers/s")
    rate, n = model_rate(2_000 if args.smoke else 20_000 if args.quick else 50_000)
    print(f"full model (default, 1 core):{rate:12,.0f} orders/s   ({n:,} orders)")
    ratio = rate / bare
    print(f"ratio model / bare SimPy:    {ratio:12.3f}   (target >= 0.20)")
    # the sizes below 1M in --repeat processes each (median), 1M in one (~3 minutes)
    runs = [sized_run(k, 1 if k >= 1_000_000 else args.repeat) for k in sizes]
    for r in runs:
        spread = ""
        if len(r["us_per_order_runs"]) > 1:
            spread = "   (median of " + " / ".join(f"{x:.1f}" for x in r["us_per_order_runs"]) + ")"
        print(f"{r['orders']:>9,} orders:  peak RSS {r['peak_rss_mb']:7.1f} MB   {r['us_per_order']:7.1f} µs CPU/order"
              + spread, flush=True)
    small, large = runs[-2], runs[-1]
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"peak RSS {large['orders']:,} / {small['orders']:,} orders: {rss_ratio:.2f}x   (target <= 1.5x)")
    flat = runs[-1]["us_per_order"] / runs[0]["us_per_order"]
    print(f"time per order {runs[-1]['orders']:,} / {runs[0]['orders']:,} orders: {flat:.2f}x   (target within 1.10x)")
    # --repeat rounds of the speed-ups too (~20 s each): one round moved 1.47-2.06 for Dask on this machine
    rounds = [jobs_speedup(1_000 if args.smoke else 5_000 if args.quick else 20_000) for _ in range(args.repeat)]
    speedups = [r[0] for r in rounds]
    speedup = statistics.median(speedups)
    print(f"--jobs 2 speed-up over 1:    {speedup:12.2f}   (target >= 1.8){_of(speedups)}")
    dask_speedup = dask_startup = None
    if rounds[0][1] is not None:
        dasks = [r[1] for r in rounds]
        dask_speedup, dask_startup = statistics.median(dasks), statistics.median(r[2] for r in rounds)
        print(f"Dask 2 workers over 1 core:  {dask_speedup:12.2f}   (target >= 1.7; cluster start-up "
              f"{dask_startup:.1f} s, not counted){_of(dasks)}")
    label = {k: f"{k // 1000}k" if k < 1_000_000 else "1m" for k in sizes}  # by the size asked for
    per_order = {f"us_per_order_{label[k]}": round(r["us_per_order"], 1) for k, r in zip(sizes, runs)}
    per_rss = {f"peak_rss_mb_{label[k]}": round(r["peak_rss_mb"], 1) for k, r in zip(sizes, runs)}
    print(json.dumps({"orders_per_s": round(rate, 1), "bare_simpy_per_s": round(bare, 1), "ratio": round(ratio, 4),
                      **per_rss,  # peak_rss_ratio is judged between the two largest sizes
                      "orders_small": small["orders"], "orders_large": large["orders"],
                      "peak_rss_ratio": round(rss_ratio, 3),
                      **per_order, "time_per_order_ratio": round(flat, 3), "repeat": args.repeat,
                      "jobs2_speedup": round(speedup, 3), "jobs2_speedup_rounds": [round(x, 3) for x in speedups],
                      "dask2_speedup": None if dask_speedup is None else round(dask_speedup, 3),
                      "dask2_speedup_rounds": None if dask_speedup is None else [round(r[1], 3) for r in rounds],
                      "dask_startup_s": None if dask_startup is None else round(dask_startup, 2),
                      "quick": args.quick, "smoke": args.smoke}))


if __name__ == "__main__":
    main()
