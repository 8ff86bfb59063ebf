"""The highest arrival rate of complete checkout flows per second this machine sustains end to end.

    /work/venv/bin/python benchmarks/load_capacity.py [--start 40] [--load 15] [--drain 8] [--workers 0]
                                                      [--time-scale 1] [--max-probes 9] [--set KEY=VALUE ...]

End to end means the whole live harness on this machine: the Locust arrival scheduler playing buyers
(``loadtests/locustfile.py``), the reference checkout, the mock provider with its bank and its
notifications, the merge of the histories and the checker — ``loadtests.live.run_live``, as ``checkout-
chaos load`` runs it. A flow is one buyer: create the order, start payment, confirm it at the provider,
see "payment succeeded"; the provider notifies the checkout, which marks the order paid and ships it.
The buyers pay one scenario second after ordering, never walk away, and the bank approves every debit
(no declines, blocks, holds or losses), so every flow should complete.

A rate is *sustained* when, over a ``--load`` run at that rate plus a ``--drain``:

* achieved/planned arrivals >= 0.95 (arrivals that started within 50 ms of when they were due),
* the harness itself made no error (no buyer raised, no arrival dropped),
* >= 95% of the counted orders were paid (the notification reached the checkout) with the buyer shown
  "payment succeeded", and
* the buyers' calls saw at most 1% errors (timeouts, 5xx, refused connections), and
* the run is valid by its own health checks (``loadtests/validity.py``: start lag, buyers unfinished…).

The result is stored (``$XDG_CACHE_HOME/checkout-chaos/load_capacity.json``, one entry per ``--workers``;
``--no-store`` to skip) and ``checkout-chaos load`` warns before a run that plans more arrivals per wall
second than the stored figure (or a conservative 100 without one).

The search doubles the rate from ``--start`` until a rate fails, then bisects (to within 5%). For each
probe it prints the figures and where the CPU went: CPU seconds of each process of the run (read from
``/proc`` during the run) per flow and in cores, so the bottleneck is visible. The last line is one JSON
object with ``max_flows_per_s``, ``achieved_ratio`` (of that rate), and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOW = {
    "run.warmup": "2s",
    "run.seed": 11,
    "user.pay_delay": "1s",
    "user.abandon_probability": 0.0,
    "user.retry_probability": 0.0,
    "user.payment_methods": {"wallet": 0.6, "card": 0.4, "bnpl": 0.0},
    "app.network_latency": "0s",
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "bank.risk_hold_probability": 0.0,
    "bank.response_loss": 0.0,
    "gateway.notify_loss": 0.0,
    "gateway.notify_duplicate": 0.0,
}
ROLES = ("locust", "provider", "checkout", "harness")


# -- CPU accounting ----------------------------------------------------------------------------------


def _children_of(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> role."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
            parent[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out = {}
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != root and seen < 50:
            p, seen = parent[p], seen + 1
        if p == root and pid != root:
            c = cmd.get(pid, "")
            out[pid] = ("provider" if "loadtests.service.provider" in c else
                        "checkout" if "loadtests.service.checkout" in c else
                        "locust" if "locust" in c else "other")
    return out


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter(threading.Thread):
    """Samples the CPU time of this process's descendants, by role, while a run goes on."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: dict[int, tuple[str, list[tuple[float, float]]]] = {}  # pid -> role, [(time, cpu)]
        self.own: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self.main_thread = threading.main_thread().native_id  # the orchestrator, not this sampler

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            now = time.time()
            self.own.append((now, _cpu_seconds(os.getpid(), self.main_thread)))
            for pid, role in _children_of(os.getpid()).items():
                try:
                    cpu = _cpu_seconds(pid)
                except OSError:
                    continue
                self.samples.setdefault(pid, (role, []))[1].append((now, cpu))

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each role used from ``start`` to ``end`` (wall times): the load and the drain only,
        not the processes' start-up or the checking afterwards."""
        self.stop_event.set()
        self.join(timeout=2)

        def used(series: list[tuple[float, float]]) -> float:
            inside = [c for t, c in series if t <= end]
            before = [c for t, c in series if t <= start] or inside[:1]
            return (inside[-1] - before[-1]) if inside and before else 0.0

        out = {r: 0.0 for r in ROLES}
        for role, series in self.samples.values():
            out[role if role in out else "locust"] += used(series)
        out["harness"] = used(self.own)
        return out


# -- one probe -----------------------------------------------------------------------------------------


def probe(rate: float, args: argparse.Namespace, workdir: Path) -> dict:
    from sim.scenario import Scenario, parse_override

    from loadtests.live import LiveOptions, run_live

    overrides = {**FLOW, "load.arrival_rate": rate, "run.horizon": f"{args.load * args.time_scale:g}s",
                 "run.drain": f"{args.drain * args.time_scale:g}s", **dict(parse_override(o) for o in args.set)}
    scenario = Scenario(name="capacity").with_overrides(overrides)
    meter = CpuMeter()
    meter.start()
    started = time.time()
    doc = run_live(scenario, LiveOptions(out=workdir / f"rate-{rate:g}", time_scale=args.time_scale,
                                         run_time=args.load, drain=args.drain, workers=args.workers,
                                         progress=False, log=lambda msg: None, max_orders=10_000_000))
    wall = time.time() - started
    epoch = json.loads((workdir / f"rate-{rate:g}" / "client" / "go.json").read_text())["load_epoch"]
    cpu = meter.between(epoch, epoch + args.load + args.drain)
    live = doc["live"]
    history = [json.loads(line) for line in open(workdir / f"rate-{rate:g}" / "history.jsonl")]
    created, paid, shown = set(), set(), set()
    for e in history:
        if e["type"] == "order.created" and args.warmup_s <= e["t"] < doc["horizon_s"]:
            created.add(e["order"])
        elif e["type"] == "order.paid":
            paid.add(e["order"])
        elif e["type"] == "app.shown" and e.get("screen") == "payment_succeeded":
            shown.add(e["order"])
    complete = len(created & paid & shown)
    flows = max(1, live["started"])
    result = {
        "rate": rate,
        "planned": live["planned_arrivals"],
        "achieved_ratio": live["achieved_arrival_ratio"],
        "late": live["late_starts"],
        "start_lag_p99_ms": round((live["start_lag_wall_s"]["p99"] or 0) * 1000, 1),
        "harness_errors": live["harness_errors"],
        "error_rate": live["error_rate"],
        "completed_ratio": complete / len(created) if created else 0.0,
        "latency_p50_ms": round((live["p50_latency_wall_s"] or 0) * 1000, 1),
        "latency_p99_ms": round((live["p99_latency_wall_s"] or 0) * 1000, 1),
        "wall_s": round(wall, 1),
        "cpu_cores": {r: round(v / (args.load + args.drain), 2) for r, v in cpu.items()},
        "cpu_ms_per_flow": {r: round(v * 1000 / flows, 2) for r, v in cpu.items()},
    }
    result["valid"] = doc["valid"]
    result["sustained"] = bool(result["achieved_ratio"] is not None and result["achieved_ratio"] >= 0.95
                               and result["harness_errors"] == 0 and result["completed_ratio"] >= 0.95
                               and result["error_rate"] <= 0.01 and doc["valid"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", type=float, default=40.0, help="first rate probed (flows/s)")
    p.add_argument("--load", type=float, default=15.0, help="wall seconds of arrivals per probe")
    p.add_argument("--drain", type=float, default=8.0, help="wall seconds of drain per probe")
    p.add_argument("--workers", type=int, default=0, help="Locust workers (0: one Locust process)")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--max-probes", type=int, default=9)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override")
    p.add_argument("--no-store", action="store_true", help="do not keep the figure for 'load' to warn against")
    args = p.parse_args()
    args.warmup_s = 2.0 * args.time_scale
    probes: list[dict] = []
    best: dict | None = None
    low, high = 0.0, None
    rate = args.start
    with tempfile.TemporaryDirectory(prefix="load-capacity-") as tmp:
        for _ in range(args.max_probes):
            r = probe(rate, args, Path(tmp))
            probes.append(r)
            print(f"rate {rate:7.1f}/s  {'ok  ' if r['sustained'] else 'FAIL'}  achieved {r['achieved_ratio']:.3f}  "
                  f"late {r['late']}  lag p99 {r['start_lag_p99_ms']}ms  complete {r['completed_ratio']:.3f}  "
                  f"errors {r['error_rate']:.2%}  harness {r['harness_errors']}  latency p50/p99 "
                  f"{r['latency_p50_ms']}/{r['latency_p99_ms']}ms  cores {r['cpu_cores']}  "
                  f"cpu ms/flow {r['cpu_ms_per_flow']}", flush=True)
            if r["sustained"]:
                low, best = rate, r
            else:
                high = rate
            if high is None:
                rate *= 2
            elif high - low <= 0.05 * high:
                break
            else:
                rate = (low + high) / 2 if low else high / 2
    summary = {
        "max_flows_per_s": low,
        "achieved_ratio": best["achieved_ratio"] if best else None,
        "completed_ratio": best["completed_ratio"] if best else None,
        "error_rate": best["error_rate"] if best else None,
        "latency_p99_ms": best["latency_p99_ms"] if best else None,
        "cpu_ms_per_flow": best["cpu_ms_per_flow"] if best else None,
        "cpu_cores": best["cpu_cores"] if best else None,
        "first_failing_rate": high,
        "time_scale": args.time_scale,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "probes": len(probes),
    }
    if not args.no_store and low:
        from loadtests.validity import store_capacity

        print(f"stored: {store_capacity(summary)}", flush=True)
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
