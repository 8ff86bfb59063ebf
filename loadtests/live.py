"""The live run: services, Locust, fault windows, drain, histories, checker, results.

:func:`run_live` is what ``checkout-chaos load`` (and ``compare``, and the capacity benchmark) call:

1. start the mock provider and the reference checkout (``loadtests.service.runner``) — without the
   scenario's fault windows, which this orchestrator applies itself on the load's clock (below);
   with ``--target`` the reference checkout stays idle and the buyers drive the target through its
   adapter while the mock provider plays the payment provider;
2. warn when the plan exceeds what the machine sustains or the window is shorter than the story
   (``loadtests.validity.preflight``); write the plan (``loadtests.plan.Plan``) and start Locust
   headless (or with its web UI on loopback, ``web``): one process, or a master and ``workers`` local
   worker processes, or (``master``) a master alone that ``expect_workers`` workers on other machines
   join (Locust's own distributed mode; workers talk to the master only over its message channel);
   wait until every scheduler is up, then fix the load epoch (``go.json``) a moment ahead;
   Every Locust process also samples the pages of the orders its buyers created
   (``loadtests.sampler``, ``live.order_sample_*``): ``order.observed`` events, counted apart from the
   buyers' calls (``live.order_samples``);
3. apply each fault window at its (scaled) start and end through ``Services.set_faults`` while the
   arrivals run for ``horizon / time_scale`` wall seconds, then let the buyers in flight, the timers
   and the notifications drain;
4. stop Locust (its statistics land in ``DIR/locust/locust_stats.csv``), export both services'
   histories, rebase them onto the load's clock and merge them with every client history
   (``DIR/history.jsonl``), run the checker and build a results document (``kind = "live"``, the schema
   of ``docs/results.md``) with a ``live`` section: arrivals planned and achieved, late starts, start
   lag, latencies from the scheduled start, error rate, Locust's per-endpoint statistics — and whether
   the run is valid by its own health checks (``loadtests.validity.assess``: ``valid``, ``validity``).

Everything started here is stopped here, whatever happens (``finally``). The run is bounded: at most
``max_orders`` arrivals, and every wait has a deadline.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from sim.errors import ConfigError, TargetError
from sim.scenario import Scenario, Threshold, format_duration

from loadtests.adapter import Adapter, load_adapter
from loadtests.history import CLIENT_GLOB, merge, write_jsonl
from loadtests.service.psp_clients import HANDOFFS as CLIENT_HANDOFFS, checkout_psp
from loadtests.validity import assess, preflight
from loadtests.plan import (DEFAULT_LATE_TOLERANCE, DEFAULT_MAX_ORDERS, PLAN_ENV, ROLE_ENV, Plan, LiveWindow,
                            arrival_times, expected_arrivals, live_window, write_json_atomic)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
GO_AHEAD = 0.3  # wall seconds between fixing the load epoch and scenario t = 0


@dataclass
class LiveOptions:
    out: Path
    time_scale: float | None = None
    run_time: float | None = None  # wall seconds of arrivals (default live.run_time)
    drain: float | None = None  # wall seconds (default live.drain)
    workers: int = 0  # 0: one Locust process; N: a master and N local workers
    master: bool = False  # a Locust master only; ``expect_workers`` workers join it (``checkout-chaos load-worker``)
    expect_workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_port: int = 5557
    worker_timeout: float = 600.0  # how long a --master run waits for its workers
    web: bool = False  # Locust's web UI on loopback (``web_port``), for watching the run
    web_port: int = 8089
    target: str | None = None
    target_config: str | Path | None = None
    allow_remote: bool = False
    provider_host: str = "127.0.0.1"
    provider_port: int = 0
    psp: tuple[str, ...] = ()  # PSP faces the mock provider serves beside native (the target's SDK speaks one)
    notify_secret: str | None = None
    max_orders: int = DEFAULT_MAX_ORDERS
    late_tolerance: float = DEFAULT_LATE_TOLERANCE
    connections: int = 512
    ready_timeout: float = 60.0
    progress: bool = True
    warn_preflight: bool = True  # log the preflight's warnings (compare prints them itself, before simulating)
    command: list[str] | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


def check_loopback(url: str, allow_remote: bool, what: str = "--target") -> None:
    host = urlparse(url).hostname
    if not host or urlparse(url).scheme not in ("http", "https"):
        raise ConfigError(f"{what} {url}: expected an http(s) URL such as http://127.0.0.1:8000")
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(f"{what} {url}: {host} is not a loopback address; a live run sends real load and real "
                          "(mock) payments there: pass --allow-remote to confirm")


def _with_handoff(adapter: Adapter, face: str, handoff: dict[str, str]) -> Adapter:
    """The reference adapter with the hand-off the reference checkout gives when it pays through ``face``."""
    data = dict(adapter.to_dict())
    data["start_payment"] = {**data["start_payment"], "handoff": {face: dict(handoff)}}
    return Adapter({**data, "psp": face}, adapter.source)


def run_live(scenario: Scenario, opts: LiveOptions) -> dict[str, Any]:
    """Run ``scenario`` live and return its results document (``kind = "live"``)."""
    started = time.time()
    window = live_window(scenario, opts.time_scale, opts.run_time, opts.drain)
    if opts.workers < 0:
        raise ConfigError(f"--workers: expected 0 or more, found {opts.workers}")
    check_distribution(opts)
    if opts.max_orders < 1:
        raise ConfigError(f"--max-orders: expected a positive integer, found {opts.max_orders}")
    expected = expected_arrivals(scenario.load, window.horizon)
    if expected > opts.max_orders:
        raise ConfigError(
            f"the run expects ~{expected:,.0f} orders ({scenario.load.arrival_rate:g}/s over "
            f"{format_duration(window.horizon)} of scenario time), more than --max-orders {opts.max_orders:,}: "
            "shorten --run-time or lower --time-scale, or raise --max-orders")
    if opts.target:
        check_loopback(opts.target, opts.allow_remote)
        if not opts.target_config:
            raise ConfigError("--target needs --target-config FILE (the adapter: endpoints and JSON fields; "
                              "start from loadtests/adapters/reference.toml)")
    if opts.provider_host not in LOOPBACK and not opts.allow_remote:
        raise ConfigError(f"--provider-host {opts.provider_host}: not a loopback address; pass --allow-remote")
    reference_psp = "native" if opts.target else checkout_psp(opts.psp)
    adapter = load_adapter(opts.target_config).for_psp(opts.psp)  # the buyers complete the --psp face's hand-off
    if reference_psp in CLIENT_HANDOFFS:  # the reference checkout hands over that PSP's own hand-off
        adapter = _with_handoff(adapter, reference_psp, CLIENT_HANDOFFS[reference_psp])
    pre = preflight(scenario, window, _slots(opts) if _slots(opts) > 1 else opts.workers)
    for warning in pre["warnings"] if opts.warn_preflight else ():
        opts.log(f"warning: this run {warning}")
    out = Path(opts.out)
    client_dir, locust_dir, data_dir = out / "client", out / "locust", out / "services"
    _fresh_dirs(client_dir, locust_dir, data_dir)

    from loadtests.service.runner import start_services

    opts.log(f"starting the mock provider{' and the reference checkout' if not opts.target else ''} "
             f"(time scale {window.time_scale:g}) ...")
    services = start_services(scenario.model_copy(update={"faults": ()}), data_dir, window.time_scale,
                              host=opts.provider_host, allow_remote=opts.allow_remote,
                              notify_secret=opts.notify_secret, ports=(opts.provider_port, 0), faces=opts.psp,
                              checkout_psp=reference_psp)
    procs: list[subprocess.Popen] = []
    faults: FaultSchedule | None = None
    interrupted_at: float | None = None  # scenario time of a Ctrl-C during the load or the drain
    try:
        plan = Plan(scenario=scenario.resolved(), checkout_url=opts.target or services.checkout_url,
                    provider_url=services.provider_url, adapter=adapter.to_dict(), time_scale=window.time_scale,
                    horizon=window.horizon, end=window.end, slots=_slots(opts),
                    run_id=secrets.token_hex(4), client_dir=str(client_dir.resolve()), max_orders=opts.max_orders,
                    late_tolerance=opts.late_tolerance, connections=opts.connections,
                    synthesize_orders=bool(opts.target), allow_remote=opts.allow_remote)
        plan_path = client_dir / "plan.json"
        write_json_atomic(plan_path, plan.to_json())
        budget = opts.ready_timeout + window.wall + 120
        budget += opts.worker_timeout if opts.master else 0
        procs = start_locust(plan_path, opts.workers, locust_dir, budget, opts, plan.checkout_url)
        if opts.web:
            opts.log(f"Locust's web UI: http://127.0.0.1:{opts.web_port}/ (until the run ends)")
        if opts.master:
            opts.log(f"Locust master listening on {opts.master_bind_host}:{opts.master_port}: start "
                     f"{opts.expect_workers} worker{'s' if opts.expect_workers != 1 else ''}, one per load machine: "
                     f"checkout-chaos load-worker --master-host <this host> --master-port {opts.master_port}")
        _wait_files(client_dir, "ready-", plan.slots, opts.worker_timeout if opts.master else opts.ready_timeout,
                    procs, "Locust workers ready" if opts.master else "Locust processes ready")
        epoch = time.time() + GO_AHEAD
        write_json_atomic(client_dir / "go.json", {"load_epoch": epoch})
        which = ("provider",) if opts.target else ("provider", "checkout")
        services.set_calendar(epoch, which)  # run.start is the date-time of the load's t = 0
        faults = FaultSchedule(services, scenario, epoch, window.time_scale, which)
        faults.start()
        opts.log(f"load: {expected:,.0f} orders expected over {window.load_wall:.1f}s, then {window.drain_wall:.1f}s "
                 f"of drain ({format_duration(window.horizon)} + {format_duration(window.drain)} of scenario time)")
        try:
            _wait_until(epoch, window, opts.progress, procs, services)
            _wait_files(client_dir, "done-", plan.slots, 30.0, procs, "Locust processes done", suffix=".json")
        except KeyboardInterrupt:  # keep what was measured: stop, read what the histories hold, mark partial
            interrupted_at = max(0.0, (time.time() - epoch) * window.time_scale)
            opts.log(f"interrupted at {interrupted_at:.1f}s of scenario time: stopping the load and checking "
                     "what was measured ...")
            window = dataclasses.replace(window, horizon=min(window.horizon, max(interrupted_at, window.warmup)),
                                         end=min(window.end, max(interrupted_at, window.warmup)))
        stop_locust(procs)
        faults.stop()
        extra: list[dict[str, Any]] = []
        if opts.target:  # observation ends when the target's order states have been read
            extra = final_order_states(adapter, opts.target, client_dir, epoch, window.time_scale)
            window = dataclasses.replace(window, end=max(window.end, (time.time() - epoch) * window.time_scale))
        services.check_alive()  # a service that died says which and why, not a connection error
        service_events = services.history()
    finally:
        if faults is not None:
            faults.stop()
        for p in procs:
            _kill(p)
        services.stop()
    offset = (epoch - services.start_epoch) * window.time_scale
    doc = build_live_results(scenario, window, plan, out, service_events, offset, extra, faults.applied,
                             started, opts, pre)
    if interrupted_at is not None:
        doc["partial"] = {"reason": "interrupted", "interrupted_at_s": round(interrupted_at, 3),
                          # the schedulers write their counters (started, late, dropped) only at the end
                          "arrival_counters_complete": len(list((out / "client").glob("done-*.json"))) >= plan.slots}
    return doc


def _slots(opts: LiveOptions) -> int:
    """Locust processes that play arrivals: one, the local workers, or the workers a master expects."""
    return max(1, opts.expect_workers if opts.master else opts.workers)


def check_distribution(opts: LiveOptions) -> None:
    """``--master`` / ``--expect-workers`` / ``--web`` make sense together (usage errors otherwise)."""
    if opts.master:
        if opts.workers:
            raise ConfigError("--master runs no local workers (start them with 'checkout-chaos load-worker'): "
                              "drop --workers")
        if opts.expect_workers < 1:
            raise ConfigError(f"--master needs --expect-workers N (1 or more), found {opts.expect_workers}")
        if opts.master_bind_host not in LOOPBACK and not opts.allow_remote:
            raise ConfigError(f"--master-bind-host {opts.master_bind_host}: not a loopback address; workers on other "
                              "machines reach the master there: pass --allow-remote to confirm")
    elif opts.expect_workers:
        raise ConfigError("--expect-workers needs --master")
    for flag, port in (("--master-port", opts.master_port), ("--web-port", opts.web_port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{flag}: expected a port between 1 and 65535, found {port}")


def _fresh_dirs(client_dir: Path, locust_dir: Path, data_dir: Path) -> None:
    """Empty the harness's own subdirectories of a previous run into the same DIR."""
    for d in (client_dir, locust_dir):
        d.mkdir(parents=True, exist_ok=True)
        for p in d.iterdir():
            if p.is_file() and (p.suffix in (".jsonl", ".json", ".csv", ".log", ".txt") or p.name.startswith("ready-")):
                p.unlink()
    if data_dir.exists():
        if not (data_dir / "run.json").exists() and any(data_dir.iterdir()):
            raise ConfigError(f"{data_dir}: exists and is not a services data directory of a previous run; "
                              "choose another --out")
        shutil.rmtree(data_dir)


# --------------------------------------------------------------------------------------------------
# Locust processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_locust(plan_path: Path, workers: int, locust_dir: Path, run_time: float, opts: LiveOptions | None = None,
                 host: str | None = None) -> list[subprocess.Popen]:
    """Locust: one process, or a master and ``workers`` local workers, or (``opts.master``) a master alone
    that remote workers join. The first process is the master. Workers get no plan file: the master sends
    them the plan over Locust's message channel (``loadtests/locustfile.py``)."""
    opts = opts or LiveOptions(out=locust_dir.parent)
    env = {**os.environ, PLAN_ENV: str(plan_path.resolve()), "PYTHONUNBUFFERED": "1"}
    env.pop(ROLE_ENV, None)
    worker_env = {k: v for k, v in env.items() if k != PLAN_ENV} | {ROLE_ENV: "worker"}
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
    if opts.web:  # the web UI on loopback, the run started at once as with --headless
        head = ["--autostart", "--web-host", "127.0.0.1", "--web-port", str(opts.web_port)]
    else:
        head = ["--headless", "--only-summary"]
    head += ["--run-time", f"{int(math.ceil(run_time))}s", "--stop-timeout", "2",
             "--csv", str(locust_dir / "locust"), "--exit-code-on-error", "0"]
    if host:
        head += ["--host", host]
    n = max(1, opts.expect_workers if opts.master else workers)
    procs = []

    def spawn(argv: list[str], name: str, environ: dict[str, str]) -> subprocess.Popen:
        with open(locust_dir / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
                                    start_new_session=True)

    if workers <= 0 and not opts.master:
        procs.append(spawn(base + head + ["-u", "1", "-r", "1"], "locust", env))
        return procs
    bind, port = (opts.master_bind_host, opts.master_port) if opts.master else ("127.0.0.1", _free_port())
    procs.append(spawn(base + head + ["-u", str(n), "-r", str(n), "--master", "--expect-workers", str(n),
                                      "--master-bind-host", bind, "--master-bind-port", str(port)], "master", env))
    if not opts.master:
        for i in range(n):
            procs.append(spawn(worker_argv("127.0.0.1", port), f"worker-{i}", worker_env))
    return procs


def worker_argv(master_host: str, master_port: int) -> list[str]:
    """The command line of one Locust worker of this harness (``load --workers`` and ``load-worker``)."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", "--worker",
            "--master-host", master_host, "--master-port", str(master_port)]


def stop_locust(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the master (it writes its statistics and tells the workers to quit), then reap all."""
    if not procs:
        return
    master = procs[0]
    if master.poll() is None:
        master.send_signal(signal.SIGTERM)
    try:
        master.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill(master)
    for p in procs[1:]:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill(p)


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait(timeout=10)


def _check_alive(procs: list[subprocess.Popen], what: str) -> None:
    for p in procs:
        if p.poll() is not None:
            raise TargetError(f"a Locust process exited with {p.returncode} while waiting for {what}; "
                              f"see its log in the locust/ directory of --out")


def _wait_files(d: Path, prefix: str, n: int, timeout: float, procs: list[subprocess.Popen], what: str,
                suffix: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        failed = list(d.glob("failed-*.txt"))
        if failed:
            raise TargetError(f"the arrival scheduler failed:\n{failed[0].read_text()[-2000:]}")
        if len([p for p in d.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]) >= n:
            return
        _check_alive(procs, what)
        if time.monotonic() > deadline:
            raise TargetError(f"timed out after {timeout:g}s waiting for {what} (see {d.parent / 'locust'})")
        time.sleep(0.02)


def _wait_until(epoch: float, window: LiveWindow, progress: bool, procs: list[subprocess.Popen],
                services: Any = None) -> None:
    """Sleep through the load and the drain, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    end = epoch + window.wall
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("left"),
                  TimeRemainingColumn(), console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("load", total=window.wall)
        while True:
            now = time.time()
            if now >= end:
                break
            bar.update(task, completed=max(0.0, now - epoch),
                       description="load" if now < epoch + window.load_wall else "drain")
            _check_alive(procs, "the end of the run")
            if services is not None:
                services.check_alive()
            time.sleep(min(0.2, end - now))
        bar.update(task, completed=window.wall, description="done")


# --------------------------------------------------------------------------------------------------
# Fault windows on the load's clock


class FaultSchedule(threading.Thread):
    """Applies the scenario's fault windows through ``Services.set_faults`` at their scaled times.

    At every window boundary the overrides of all windows then active (later windows win on a shared
    key) replace the services' run-time overrides; ``applied`` records when and what.
    """

    def __init__(self, services: Any, scenario: Scenario, epoch: float, time_scale: float,
                 which: tuple[str, ...]) -> None:
        super().__init__(name="fault-windows", daemon=True)
        self.services, self.windows, self.epoch, self.k, self.which = services, scenario.faults, epoch, time_scale, which
        self.applied: list[dict[str, Any]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        times = sorted({w.start for w in self.windows} | {w.end for w in self.windows})
        for b in times:
            if self._stop_event.wait(max(0.0, self.epoch + b / self.k - time.time())):
                return
            merged: dict[str, Any] = {}
            for w in self.windows:
                if w.start <= b < w.end:
                    merged.update(w.set)
            record: dict[str, Any] = {"t": b, "set": merged, "late_s": round(time.time() - self.epoch - b / self.k, 4)}
            try:
                self.services.set_faults(merged, self.which)
            except Exception as exc:  # recorded in the results; the run goes on
                record["error"] = f"{exc.__class__.__name__}: {exc}"
            self.applied.append(record)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# A target: the orders' end states, read through the adapter


def final_order_states(adapter: Adapter, target: str, client_dir: Path, epoch: float,
                       time_scale: float) -> list[dict[str, Any]]:
    """An ``order.observed`` (``final: true``) for every order the buyers created on a target (whose own
    history the harness cannot read): the state its page shows after the drain, at the time it was read.
    The samples taken during the run (``loadtests.sampler``) saw most states earlier; the checker takes the
    first observation of each state (docs/checker.md, "Judged from outside")."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    orders = []
    for path in sorted(client_dir.glob(CLIENT_GLOB)):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if '"order.created"' in line:
                    orders.append(json.loads(line)["order"])
    base = target.rstrip("/")

    def read(order: str) -> dict[str, Any] | None:
        method, path, body = adapter.request("order_status", {"order": order})
        try:
            resp = client.request(method, base + path, json=body)
            answer = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        raw = adapter.field("order_status", "state", answer)
        cls = adapter.state_class(raw)
        if cls is None:
            return None
        return {"t": round((time.time() - epoch) * time_scale, 6), "type": "order.observed", "actor": "harness",
                "order": order, "state": cls, "raw_state": raw, "final": True, "observed_by": "adapter"}

    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        return [e for e in pool.map(read, orders) if e is not None]


# --------------------------------------------------------------------------------------------------
# Results


def read_locust_stats(path: Path) -> dict[str, Any]:
    """Locust's ``--csv`` request statistics: one row per (type, name), and the aggregate."""
    rows: list[dict[str, Any]] = []
    aggregated: dict[str, Any] | None = None
    if not path.exists():
        return {"requests": rows, "aggregated": None}

    def num(v: str | None) -> float | None:
        try:
            x = float(v) if v not in (None, "", "N/A") else None
        except ValueError:
            return None
        return x

    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            row = {"type": r.get("Type") or "", "name": r.get("Name"), "count": int(num(r.get("Request Count")) or 0),
                   "failures": int(num(r.get("Failure Count")) or 0), "median_ms": num(r.get("Median Response Time")),
                   "mean_ms": num(r.get("Average Response Time")), "p95_ms": num(r.get("95%")),
                   "p99_ms": num(r.get("99%")), "max_ms": num(r.get("Max Response Time")),
                   "rps": num(r.get("Requests/s"))}
            if row["name"] == "Aggregated":
                aggregated = row
            else:
                rows.append(row)
    return {"requests": rows, "aggregated": aggregated}


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def live_section(events: list[dict[str, Any]], done: list[dict[str, Any]], planned: int, expected: float,
                 window: LiveWindow, workers: int, target: str | None, adapter: str, locust: dict[str, Any],
                 merge_info: dict[str, Any], faults_applied: list[dict[str, Any]], late_tolerance: float,
                 scenario_live: Any = None) -> dict[str, Any]:
    """The ``live`` section of a live results document (what the generator did and what it measured)."""
    from loadtests.buyer import MALFORMED_STATUS

    k = window.time_scale
    latencies: list[float] = []
    by_op: dict[str, list[float]] = {}
    errors = calls = malformed = 0
    for e in events:
        typ = e["type"]
        if typ not in ("client.ok", "client.fail", "client.unknown"):
            continue
        calls += 1
        # timeouts, 5xx, broken connections (unknown) and refused connections (fail without a status);
        # a 4xx is the checkout's answer, not an error
        if typ == "client.unknown" or (typ == "client.fail" and "status" not in e):
            errors += 1
        elif e.get("status") in MALFORMED_STATUS and "refusal" not in e:  # a PSP's "read, refused" is not ours
            malformed += 1
        lat = e.get("latency")
        if isinstance(lat, (int, float)):
            latencies.append(lat)
            by_op.setdefault(e.get("op", "?"), []).append(lat)
    latencies.sort()
    sums = {key: sum(d.get(key, 0) for d in done) for key in ("planned", "started", "late", "dropped", "completed",
                                                               "flow_errors", "in_flight_at_end")}
    lags = sorted(x for d in done for x in d.get("lags", ()))
    lag_max = max((d.get("lag_max", 0.0) for d in done), default=0.0)
    achieved = sums["started"] - sums["late"]
    harness_errors = (sums["flow_errors"] + sums["dropped"] + malformed + (max(1, workers) - len(done))
                      + sum(1 for d in done if d.get("sampler_failed")))
    p50, p99 = _quantile(latencies, 0.5), _quantile(latencies, 0.99)
    ops = {}
    for op, xs in sorted(by_op.items()):
        xs.sort()
        ops[op] = {"count": len(xs), "p50_s": _quantile(xs, 0.5), "p99_s": _quantile(xs, 0.99), "max_s": xs[-1]}
    return {
        "target": target or "reference",
        "adapter": adapter,
        "time_scale": k,
        "workers": workers,
        "load_wall_s": window.load_wall,
        "drain_wall_s": window.drain_wall,
        "expected_arrivals": expected,
        "planned_arrivals": planned,
        "started": sums["started"],
        "late_starts": sums["late"],
        "dropped_arrivals": sums["dropped"],
        "achieved_arrivals": achieved,
        "achieved_arrival_ratio": achieved / planned if planned else None,
        "achieved_rate_per_s": achieved / window.horizon if window.horizon else None,
        "late_tolerance_wall_s": late_tolerance,
        "start_lag_wall_s": {"p50": _quantile(lags, 0.5), "p99": _quantile(lags, 0.99), "max": lag_max},
        "flows_completed": sums["completed"],
        "flows_in_flight_at_end": sums["in_flight_at_end"],
        "flows_unfinished_at_end": max(0, sums["started"] - sums["completed"] - sums["flow_errors"]),
        "flow_errors": sums["flow_errors"],
        "malformed_requests": malformed,
        "harness_errors": harness_errors,
        "requests": calls,
        "failures": errors,
        "error_rate": errors / calls if calls else 0.0,
        "p50_latency_s": p50,
        "p99_latency_s": p99,
        "p50_latency_wall_s": None if p50 is None else p50 / k,
        "p99_latency_wall_s": None if p99 is None else p99 / k,
        "latency_by_op": ops,
        "order_samples": order_samples_section(events, done, window, scenario_live, calls, target),
        "locust": locust,
        "history": merge_info,
        "faults_applied": faults_applied,
    }


def order_samples_section(events: list[dict[str, Any]], done: list[dict[str, Any]], window: LiveWindow,
                          scenario_live: Any, buyer_requests: int, target: str | None = None) -> dict[str, Any]:
    """``live.order_samples``: the order-page reads the harness added to the load (``loadtests.sampler``),
    counted apart from the buyers' calls, and the observations they and the final read gave."""
    def total(key: str) -> int:
        return sum(int(d.get(key, 0) or 0) for d in done)

    sampled = total("sample_requests")
    observed = final = 0
    for e in events:
        if e["type"] == "order.observed":
            if e.get("final"):
                final += 1
            else:
                observed += 1
    interval = getattr(scenario_live, "order_sample_interval", None)
    if not (target or getattr(scenario_live, "order_sample_reference", False)):
        interval = None  # the reference checkout is not sampled (its own events are read)
    return {
        "interval_s": interval or None,
        "rate_cap_per_wall_s": getattr(scenario_live, "order_sample_rate", None) if interval else None,
        "max_per_order": getattr(scenario_live, "order_sample_max", None) if interval else None,
        "requests": sampled,
        "errors": total("sample_errors"),
        "orders": total("sampled_orders"),
        "capped_orders": total("sample_capped_orders"),
        "late": total("sample_late"),
        "backoffs": total("sample_backoffs"),
        "lag_max_wall_s": max((float(d.get("sample_lag_max", 0.0) or 0.0) for d in done), default=0.0),
        "per_wall_s": sampled / window.wall if window.wall else None,
        "observations": observed,
        "final_reads": final,
        "share_of_requests": sampled / (sampled + buyer_requests) if sampled + buyer_requests else None,
    }


def build_live_results(scenario: Scenario, window: LiveWindow, plan: Plan, out: Path, service_events: list[dict],
                       offset: float, extra: list[dict], faults_applied: list[dict], started: float,
                       opts: LiveOptions, pre: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the histories, check them and assemble the results document (also writes history.jsonl)."""
    import json

    from sim.check import CheckConfig, check_events, write_anomalies_csv
    from sim.scenario import fault_spans
    from sim.vocabulary import TIMELINE_BUCKETS
    from sim.results import build_results, run_info

    client_dir = out / "client"
    files = sorted(client_dir.glob(CLIENT_GLOB))
    events, info = merge(service_events, files, offset, window, scenario.run.seed, extra)
    if opts.target:  # the checkout is seen from outside only: its order pages, not its own events
        events[0]["black_box"] = True
    write_jsonl(events, out / "history.jsonl")
    config = CheckConfig(warmup=window.warmup, horizon=window.horizon, end=window.end, black_box=bool(opts.target),
                         stuck_grace=scenario.order_service.stuck_grace, bnpl_finish_limit=scenario.bnpl.finish_limit,
                         bucket_s=max(1.0, window.horizon / TIMELINE_BUCKETS))
    summary = check_events(events, config)
    csv_path = write_anomalies_csv(out, [summary])  # one row per instance, beside results.json
    done = [json.loads(p.read_text()) for p in sorted(client_dir.glob("done-*.json"))]
    planned = sum(1 for _ in arrival_times(scenario.load, window.horizon, scenario.run.seed, plan.max_orders))
    live = live_section(events, done, planned, expected_arrivals(scenario.load, window.horizon), window,
                        _slots(opts) if opts.master else opts.workers,
                        opts.target, Adapter(plan.adapter).name, read_locust_stats(out / "locust" / "locust_stats.csv"),
                        info.to_dict(), faults_applied, plan.late_tolerance, scenario.live)
    doc = build_results("live", [summary], scenario=scenario.resolved(), scenario_name=scenario.name,
                        seed=scenario.run.seed, metrics=[], faults=fault_spans(scenario), horizon_s=window.horizon,
                        warmup_s=window.warmup, end_s=window.end, extra={"live": live})
    for cls in summary.not_observable:  # as `check` marks them: not decided, not 0
        if cls in doc["anomalies"]:
            doc["anomalies"][cls]["observable"] = False
    live["not_observable"] = summary.not_observable
    live["observed_how"] = summary.observed_how
    doc["run_info"] = run_info(started, opts.command if opts.command is not None else sys.argv)
    live["anomalies_csv"] = {"file": csv_path.name if csv_path else None, "rows": len(summary.instances or ())}
    live["thresholds"] = evaluate_thresholds(scenario.thresholds, doc)
    pre = pre if pre is not None else preflight(scenario, window, opts.workers)
    live["preflight"] = pre
    mark_validity(doc, assess(live, scenario, pre))
    return doc


def mark_validity(doc: dict[str, Any], validity: dict[str, Any]) -> None:
    """``valid`` and ``validity`` at the top of a live results document (docs/live.md, "A run that is not valid")."""
    doc["valid"] = validity["valid"]
    doc["validity"] = validity


# --------------------------------------------------------------------------------------------------
# Thresholds


def observed(metric: str, doc: dict[str, Any]) -> float | None:
    """The value a threshold's metric reads from a results document (None when the run has none)."""
    live = doc.get("live") or {}
    if "." in metric:
        cls, name = metric.split(".")
        stats = (doc.get("anomalies") or {}).get(cls, {})
        return None if stats.get("observable") is False else stats.get(name)  # not observable: not 0
    return {"p99_latency": live.get("p99_latency_s"), "p50_latency": live.get("p50_latency_s"),
            "error_rate": live.get("error_rate"), "achieved_ratio": live.get("achieved_arrival_ratio")}.get(metric)


def evaluate_thresholds(rules: tuple[Threshold, ...], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each rule with the value observed and whether it holds (a rule with nothing observed fails)."""
    out = []
    for rule in rules:
        value = observed(rule.metric, doc)
        out.append({"rule": rule.text, "observed": value, "holds": value is not None and rule.holds(float(value))})
    return out
