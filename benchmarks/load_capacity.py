"""The highest arrival rate of complete checkout flows per second this machine sustains end to end.

    python benchmarks/load_capacity.py [--start 40] [--load 15] [--drain 8] [--workers 0] [--distributed 2]
                                       [--shop ADAPTER [--shop-script PY] [--shop-env KEY=VALUE ...]]
                                       [--time-scale 1] [--max-probes 9] [--bisect 4] [--set KEY=VALUE ...]

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

The search doubles the rate from ``--start`` until a rate fails (``--max-probes`` probes at most), then
bisects between the last sustained and the first failing rate (to within 5%, ``--bisect`` probes at
most, counted apart: a small doubling budget still leaves the bracket narrowed). For each
probe it prints the figures and where the CPU went: CPU seconds of each process of the run (read from
``/proc`` during the run) per flow and in cores, so the bottleneck is visible.

Three searches, one after the other:

1. **one load generator**: ``--workers`` local workers (0: one Locust process), as ``load --workers``;
2. **distributed** (``--distributed N``, default 2; 0 skips it): Locust's own distributed mode as on
   several load machines — ``load --master --expect-workers N`` here and ``checkout-chaos load-worker
   --master-host 127.0.0.1 --processes N`` started as a separate process, the histories travelling over
   Locust's message channel;
3. **through an SDK-built shop** (``--shop ADAPTER``, off by default): the buyers drive a foreign
   checkout black box (``load --target``) — the fixture shop of ``tests/shops/`` named by the adapter's
   ``name`` (``stripe_shop`` -> ``tests/shops/stripe_shop.py``, or ``--shop-script``), paying at the PSP
   face the name starts with (``--psp stripe``/``alipay``/``wechat``). The shop runs with its safe close
   and a 10-minute TTL (no flow is closed), a fresh SQLite file per probe, and learns the mock provider's
   address and keys from its environment (``SHOP_*``, and per face the SDK's: built in for Stripe;
   ``--shop-env KEY=VALUE`` adds or overrides any, with ``{provider}``, ``{psp_dir}``, ``{url}``,
   ``{port}``, ``{db}`` filled in). A flow is complete when the shop's order page shows it paid.

The last line is one JSON object with every figure: ``max_flows_per_s`` (and ``achieved_ratio`` …) of
the first search, ``distributed`` and ``shop`` objects for the others (``null`` when skipped); the
figures of the first two searches are stored for ``load``'s warning, per number of workers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

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
    # gateway.notify_latency is the scenario's default (lognormal, median 200 ms, p99 5 s): scenario
    # time, so at this benchmark's time scale of 1 wall time, mean 0.52 s. The provider waits it out
    # without holding one of its 128 job slots (Scheduler.unslotted), so it no longer caps notifications
    # at 128 / 0.52 s = 245 per second, as it did until that change (the flows then notified with 0s:
    # docs/performance.md). Its tail (p99.9 about 14 s) outlasts the 8 s drain: about 0.1-0.4% of the
    # flows are still being notified when a probe ends, counted incomplete whatever the harness's speed.
    # ``--set gateway.notify_latency=0s`` removes the modelled delay.
    # The modelled pools are not what this benchmark measures: a pay holds one of gateway.workers (64
    # by default) for its whole bank call (bank.latency, median 150 ms), so the scenario's own gateway
    # serves ~200 pays/s and refuses or times out the rest (the overload cascade model v2 asks for,
    # live). Provisioned far beyond any probe's rate here, so the harness, not the modelled capacity,
    # sets the figure; ``--set gateway.workers=64`` puts the scenario's capacity back.
    "gateway.workers": 100_000,
    "bank.channels": 100_000,
    # Likewise each service's admission limit: a confirm holds its request through the modelled bank
    # call (median 150 ms, a long tail), so at 625 flows/s the provider had more than the default 256
    # requests in flight at its peaks and answered 503 (0.9-1.3% of the buyers' calls: 503 on confirm,
    # 502 on start payment when the checkout's trade creation got one). The 625 flows/s failure of
    # 27ff2bc was this limit, not the harness.
    "live.max_in_flight": 4096,
}
ROLES = ("locust", "provider", "checkout", "shop", "harness")


# -- CPU accounting ----------------------------------------------------------------------------------


def _role(cmdline: str) -> str:
    return ("provider" if "loadtests.service.provider" in cmdline else
            "checkout" if "loadtests.service.checkout" in cmdline else
            "shop" if "/tests/shops/" in cmdline else
            "locust" if "locust" in cmdline else "other")


def _children_of(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> role. A process takes the role of its nearest ancestor
    that has one (the provider's notification worker, ``python -m loadtests.service.httpclient``, is the
    provider's); "other" for the rest, and for a child caught between its fork and its exec (its command
    line is still this process's: :class:`CpuMeter` looks again)."""
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
        p, seen, role = pid, 0, "other"
        while p in parent and p != root and seen < 50:
            if role == "other":
                role = _role(cmd.get(p, ""))
            p, seen = parent[p], seen + 1
        if p == root and pid != root:
            out[pid] = role
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
                known = self.samples.get(pid)
                if known is None or (known[0] == "other" and role != "other"):  # (first seen before its exec)
                    known = self.samples[pid] = (role, known[1] if known else [])
                known[1].append((now, cpu))

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Mode:
    """How the load is generated and what it drives."""

    name: str  # "local", "distributed", "shop"
    workers: int = 0  # local workers (local), or the workers a master expects (distributed)
    shop: "Shop | None" = None


@dataclass
class Shop:
    """An SDK-built fixture shop, found from its adapter file."""

    adapter: Path
    script: Path
    face: str
    env: dict[str, str]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Shop":
        from loadtests.adapter import load_adapter

        adapter = Path(args.shop)
        name = load_adapter(adapter).name
        script = Path(args.shop_script) if args.shop_script else ROOT / "tests" / "shops" / f"{name}.py"
        face = name.split("_", 1)[0]
        if face not in FACES:
            raise SystemExit(f"--shop {adapter}: the adapter's name {name!r} does not start with a PSP face "
                             f"({', '.join(FACES)}_...): cannot tell which face the shop pays through")
        if not script.is_file():
            raise SystemExit(f"--shop {adapter}: no shop script {script} (name it with --shop-script)")
        env = dict(FACE_ENV.get(face, {}))
        for item in args.shop_env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"--shop-env {item!r}: expected KEY=VALUE")
            env[key] = value
        return cls(adapter, script, face, env)

    def start(self, workdir: Path, provider_port: int) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        db = workdir / "shop.db"
        fill = {"provider": f"http://127.0.0.1:{provider_port}", "psp_dir": str(workdir / "services" / "psp" / self.face),
                "url": url, "port": str(port), "db": str(db)}
        env = {**os.environ, "SHOP_CLOSE": "safe", "SHOP_ORDER_TTL": "600", "SHOP_CLOSE_EVERY": "1",
               "SHOP_DB": str(db), "SHOP_PORT": str(port), "SHOP_PUBLIC_URL": url,
               **{k: v.format(**fill) for k, v in self.env.items()}}
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "shop.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(self.script)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        import httpx

        deadline = time.monotonic() + 30
        while True:  # up when it answers anything over HTTP
            try:
                httpx.get(url + "/", timeout=1)
                return proc, url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"the shop {self.script.name} did not start: "
                                   f"{(workdir / 'shop.log').read_text(errors='replace')[-1500:]}")
            time.sleep(0.1)


FACES = ("alipay", "wechat", "stripe")
# What each face's SDK needs to reach the mock provider (the shops read these; docs/psp/*.md)
FACE_ENV = {"stripe": {"STRIPE_API_BASE": "{provider}", "STRIPE_KEY_FILE": "{psp_dir}/secret_key"},
            "alipay": {"ALIPAY_GATEWAY": "{provider}/gateway.do", "ALIPAY_KEY_DIR": "{psp_dir}",
                       "SHOP_TIMEOUT_EXPRESS": "15m"}}


# How the buyers pay at each face (Stripe's are cards)
FACE_FLOW: dict[str, dict[str, object]] = {
    "stripe": {"user.payment_methods": {"wallet": 0.0, "card": 1.0, "bnpl": 0.0}},
    "alipay": {"user.payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0}},
}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _run(scenario, args: argparse.Namespace, out: Path, mode: Mode) -> dict:
    """One live run in ``mode`` (and whatever it needs started beside it: workers, a shop)."""
    from loadtests.live import LiveOptions, run_live

    opts = LiveOptions(out=out, time_scale=args.time_scale, run_time=args.load, drain=args.drain,
                       progress=False, log=lambda msg: None, max_orders=10_000_000)
    side: list[subprocess.Popen] = []
    try:
        if mode.name == "distributed":
            port = _free_port()
            opts = replace(opts, master=True, expect_workers=mode.workers, master_port=port, worker_timeout=60.0)
            out.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_CHAOS_")}
            env["PYTHONPATH"] = str(ROOT)
            with open(out / "load-worker.log", "wb") as log:
                side.append(subprocess.Popen(
                    [sys.executable, "-m", "sim.cli", "load-worker", "--master-host", "127.0.0.1", "--master-port",
                     str(port), "--processes", str(mode.workers)], env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        elif mode.name == "shop":
            assert mode.shop is not None
            provider_port = _free_port()
            proc, url = mode.shop.start(out, provider_port)
            side.append(proc)
            opts = replace(opts, target=url, target_config=mode.shop.adapter, psp=(mode.shop.face,),
                           provider_port=provider_port)
        else:
            opts = replace(opts, workers=mode.workers)
        return run_live(scenario, opts)
    finally:
        for proc in side:
            if mode.name == "distributed":  # the master ended the run: the workers exit on their own
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            _stop(proc)


def probe(rate: float, args: argparse.Namespace, workdir: Path, mode: Mode | None = None) -> dict:
    from sim.scenario import Scenario, parse_override

    mode = mode or Mode("local", args.workers)
    face_flow = FACE_FLOW.get(mode.shop.face, {}) if mode.shop else {}
    overrides = {**FLOW, **face_flow, "load.arrival_rate": rate, "run.horizon": f"{args.load * args.time_scale:g}s",
                 "run.drain": f"{args.drain * args.time_scale:g}s", **dict(parse_override(o) for o in args.set)}
    scenario = Scenario(name="capacity").with_overrides(overrides)
    out = workdir / f"{mode.name}-rate-{rate:g}"
    meter = CpuMeter()
    meter.start()
    started = time.time()
    doc = _run(scenario, args, out, mode)
    if _STOPPED:  # the run caught the signal to keep what it measured: a cut probe is not a figure
        raise KeyboardInterrupt
    wall = time.time() - started
    epoch = json.loads((out / "client" / "go.json").read_text())["load_epoch"]
    cpu = meter.between(epoch, epoch + args.load + args.drain)
    cpu_load = meter.between(epoch, epoch + args.load)  # the arrivals alone: where the harness is busiest
    live = doc["live"]
    history = [json.loads(line) for line in open(out / "history.jsonl")]
    created, paid, shown = set(), set(), set()
    succeeded: dict[str, float] = {}  # order -> when the provider's trade succeeded
    paid_at: dict[str, float] = {}  # order -> when the checkout marked it paid (the notification landed)
    for e in history:
        if e["type"] == "order.created" and args.warmup_s <= e["t"] < doc["horizon_s"]:
            created.add(e["order"])
        elif e["type"] == "order.paid" or (e["type"] == "order.observed" and e.get("state") == "paid"):
            paid.add(e["order"])
            paid_at.setdefault(e["order"], e["t"])
        elif e["type"] == "app.shown" and e.get("screen") == "payment_succeeded":
            shown.add(e["order"])
        elif e["type"] == "trade.succeeded":
            succeeded.setdefault(e["order"], e["t"])
    complete = len(created & paid & shown)
    # How long the notification took to land (the provider's success to the checkout's "paid"), and
    # the counted orders the provider had charged that were still not paid at the end of observation:
    # a completion ratio that falls with these growing is the notification path falling behind.
    lags = sorted(paid_at[o] - succeeded[o] for o in created if o in paid_at and o in succeeded)
    unnotified = sum(1 for o in created if o in succeeded and o not in paid)
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
        "notify_lag_ms": {"p50": _ms(lags, 0.5), "p99": _ms(lags, 0.99), "max": _ms(lags, 1.0)},
        "charged_not_paid": unnotified,
        "latency_p50_ms": round((live["p50_latency_wall_s"] or 0) * 1000, 1),
        "latency_p99_ms": round((live["p99_latency_wall_s"] or 0) * 1000, 1),
        "wall_s": round(wall, 1),
        # cores averaged over load + drain (the drain is mostly idle), and over the arrivals alone
        "cpu_cores": {r: round(v / (args.load + args.drain), 2) for r, v in cpu.items()},
        "cpu_cores_load": {r: round(v / args.load, 2) for r, v in cpu_load.items()},
        "cpu_ms_per_flow": {r: round(v * 1000 / flows, 2) for r, v in cpu.items()},
        "order_page_samples": live.get("order_samples", {}).get("requests", 0),
    }
    result["valid"] = doc["valid"]
    result["sustained"] = bool(result["achieved_ratio"] is not None and result["achieved_ratio"] >= 0.95
                               and result["harness_errors"] == 0 and result["completed_ratio"] >= 0.95
                               and result["error_rate"] <= 0.01 and doc["valid"])
    return result


def _ms(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``sorted_values`` (seconds) in milliseconds, None without values."""
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000, 1)


def bracket(probe_at: Callable[[float], bool], start: float, max_doublings: int, bisections: int,
            tolerance: float = 0.05) -> tuple[float, float | None, list[float]]:
    """Double from ``start`` (at most ``max_doublings`` probes) until a rate fails, then bisect between
    the last sustained rate and the first failing one (at most ``bisections`` more probes, stopping
    once the two are within ``tolerance`` of the failing rate). ``probe_at(rate)`` says whether the rate
    was sustained. Returns ``(last sustained or 0, first failing or None, rates probed in order)``."""
    low, high, rates = 0.0, None, []
    rate = start
    for _ in range(max_doublings):
        rates.append(rate)
        if not probe_at(rate):
            high = rate
            break
        low, rate = rate, rate * 2
    if high is None:
        return low, None, rates
    for _ in range(bisections):
        if high - low <= tolerance * high:
            break
        rate = (low + high) / 2 if low else high / 2
        rates.append(rate)
        if probe_at(rate):
            low = rate
        else:
            high = rate
    return low, high, rates


def search(args: argparse.Namespace, workdir: Path, mode: Mode) -> dict:
    """Double from ``--start`` until a rate fails, then bisect (:func:`bracket`); the summary of one mode."""
    probes: list[dict] = []
    sustained: dict[float, dict] = {}

    def probe_at(rate: float) -> bool:
        r = probe(rate, args, workdir, mode)
        probes.append(r)
        print(f"[{mode.name}] rate {rate:7.1f}/s  {'ok  ' if r['sustained'] else 'FAIL'}  achieved "
              f"{r['achieved_ratio'] or 0:.3f}  late {r['late']}  lag p99 {r['start_lag_p99_ms']}ms  complete "
              f"{r['completed_ratio']:.3f}  notify lag p50/p99 {r['notify_lag_ms']['p50']}/{r['notify_lag_ms']['p99']}ms  "
              f"charged not paid {r['charged_not_paid']}  errors {r['error_rate']:.2%}  harness {r['harness_errors']}  latency "
              f"p50/p99 {r['latency_p50_ms']}/{r['latency_p99_ms']}ms  page samples {r['order_page_samples']}  "
              f"cores {r['cpu_cores']} (during arrivals {sum(r['cpu_cores_load'].values()):.2f})  cpu ms/flow {r['cpu_ms_per_flow']}", flush=True)
        if r["sustained"]:
            sustained[rate] = r
        return r["sustained"]

    low, high, _ = bracket(probe_at, args.start, args.max_probes, args.bisect)
    best = sustained.get(low)
    return {
        "max_flows_per_s": low,
        "achieved_ratio": best["achieved_ratio"] if best else None,
        "completed_ratio": best["completed_ratio"] if best else None,
        "error_rate": best["error_rate"] if best else None,
        "latency_p99_ms": best["latency_p99_ms"] if best else None,
        "cpu_ms_per_flow": best["cpu_ms_per_flow"] if best else None,
        "cpu_cores": best["cpu_cores"] if best else None,
        "cpu_cores_load": best["cpu_cores_load"] if best else None,
        "first_failing_rate": high,
        "time_scale": args.time_scale,
        "workers": mode.workers,
        "cpus": os.cpu_count(),
        "probes": len(probes),
        "probed": [{"rate": r["rate"], "sustained": r["sustained"], "achieved_ratio": r["achieved_ratio"],
                    "completed_ratio": r["completed_ratio"], "notify_lag_ms": r["notify_lag_ms"],
                    "charged_not_paid": r["charged_not_paid"], "cpu_ms_per_flow": r["cpu_ms_per_flow"]}
                   for r in probes],
    }


_STOPPED: list[int] = []  # the signal that asked the search to stop, once one has


def _on_signal(signum: int, frame: object) -> None:
    _STOPPED.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    try:
        _search_main()
    except KeyboardInterrupt:
        # every probe's services, Locust processes and side processes were stopped on the way out
        print(f"load_capacity: stopped by {'SIGTERM' if signal.SIGTERM in _STOPPED else 'an interrupt'} "
              "before the search ended: no figure", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def _search_main() -> None:
    signal.signal(signal.SIGTERM, _on_signal)  # `kill` stops the probe's children as Ctrl-C does
    signal.signal(signal.SIGINT, _on_signal)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", type=float, default=40.0, help="first rate probed (flows/s)")
    p.add_argument("--load", type=float, default=15.0, help="wall seconds of arrivals per probe")
    p.add_argument("--drain", type=float, default=8.0, help="wall seconds of drain per probe")
    p.add_argument("--workers", type=int, default=0, help="Locust workers (0: one Locust process)")
    p.add_argument("--distributed", type=int, default=2, metavar="N",
                   help="also search with a master and N workers joining it (load-worker); 0 skips (default 2)")
    p.add_argument("--shop", metavar="ADAPTER", help="also search through the SDK-built fixture shop this adapter "
                   "file drives (e.g. loadtests/adapters/stripe_shop.toml)")
    p.add_argument("--shop-script", metavar="PY", help="the shop's script (default tests/shops/<adapter name>.py)")
    p.add_argument("--shop-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the shop ({provider}, {psp_dir}, {url}, {port}, {db} are filled in)")
    p.add_argument("--shop-start", type=float, help="first rate probed through the shop (default --start)")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--max-probes", type=int, default=9, help="probes of the doubling phase at most")
    p.add_argument("--bisect", type=int, default=4, metavar="N",
                   help="probes between the last sustained and the first failing rate at most (default 4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override")
    p.add_argument("--no-store", action="store_true", help="do not keep the figure for 'load' to warn against")
    args = p.parse_args()
    if args.distributed < 0:
        p.error(f"--distributed: expected 0 or more, found {args.distributed}")
    if args.max_probes < 1 or args.bisect < 0:
        p.error(f"--max-probes: expected 1 or more, --bisect 0 or more; found {args.max_probes}, {args.bisect}")
    args.warmup_s = 2.0 * args.time_scale
    shop = Shop.from_args(args) if args.shop else None
    with tempfile.TemporaryDirectory(prefix="load-capacity-") as tmp:
        summary = search(args, Path(tmp), Mode("local", args.workers))
        distributed = search(args, Path(tmp), Mode("distributed", args.distributed)) if args.distributed else None
        through_shop = None
        if shop is not None:
            shop_args = replace_ns(args, start=args.shop_start or args.start)
            through_shop = search(shop_args, Path(tmp), Mode("shop", 0, shop))
            through_shop.update(shop=shop.script.stem, psp=shop.face, adapter=str(shop.adapter))
    if not args.no_store:
        from loadtests.validity import store_capacity

        for figures in (summary, distributed):
            if figures and figures["max_flows_per_s"]:
                print(f"stored ({figures['workers']} workers): {store_capacity(figures)}", flush=True)
    summary["distributed"] = distributed
    summary["shop"] = through_shop
    print(json.dumps(summary, sort_keys=True))


def replace_ns(ns: argparse.Namespace, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **changes})


if __name__ == "__main__":
    main()
