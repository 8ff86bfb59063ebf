"""Parameter sweeps: a grid of scenario variants on common random numbers, run as fine-grained tasks.

A sweep is the cartesian product of ``--vary`` values (``order_service.order_ttl=5m,15m,30m`` ×
``load.arrival_rate=2,4``) times the ``--compare`` variants (``order_service.close_policy=naive,
close_trade_then_order``). Every point is the base scenario with its parameters applied through
:meth:`~sim.scenario.Scenario.with_overrides`, so a typo is the same :class:`~sim.errors.ConfigError`
as in a scenario file, and every point keeps the base seed: replication *r* of every point draws its
arrivals, buyers and latencies from the same streams (:func:`sim.model.world.make_streams`), which is
what makes compared variants comparable on common random numbers.

The work is one task per (point, replication), handed to :func:`sim.runner.execute` (in process, a
local process pool, or a Dask cluster), so even a two-point sweep keeps every core busy. Each finished
task is pickled atomically under ``OUT/.partial/`` under a key derived from the point's resolved
scenario and the replication, so an interrupted sweep loses at most the tasks in flight and
``--resume`` runs only the rest; results are always assembled by (point, replication), never by
finishing order, so the documents do not depend on how (or in how many goes) the tasks ran.

Output: ``OUT/sweep.json`` (``kind = "sweep"``: ``vary``, ``compare`` and one results document of
``kind = "sweep_point"`` per point, see ``docs/results.md``), ``OUT/sweep.csv`` (one row per point
and anomaly class, occurred and unresolved rates with their intervals, for a spreadsheet) and
``OUT/anomalies.csv`` (one row per anomaly instance of every point and replication, the columns of
``check``'s file after ``point``, the swept keys and ``replication``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import pickle
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sim.errors import ConfigError
from sim.results import atomic_write
from sim.runner import execute, pool
from sim.scenario import Scenario, parse_value
from sim.vocabulary import ANOMALY_CLASSES

__all__ = [
    "SWEEP_FILE",
    "CSV_FILE",
    "PARTIAL_DIR",
    "CSV_COLUMNS",
    "Point",
    "SweepPlan",
    "split_values",
    "parse_axis",
    "expand_grid",
    "plan_sweep",
    "task_key",
    "PartialStore",
    "describe_runs",
    "point_document",
    "run_sweep",
    "sweep_csv",
    "write_sweep",
    "write_sweep_anomalies",
]

SWEEP_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
PARTIAL_DIR = ".partial"
# After the parameter columns, in this order (docs/results.md, "sweep.csv", describes them).
_MEASURE_COLUMNS = ("orders", "rate", "ci95_low", "ci95_high")
CSV_COLUMNS = ("class", "observable",
               *(f"occurred_{c}" for c in _MEASURE_COLUMNS), *(f"unresolved_{c}" for c in _MEASURE_COLUMNS),
               "repaired_share", "repair_p50_s", "repair_p99_s", "held_at_end_cny_total",
               "occurred_count", "unresolved_count", "orders")
_PARTIAL_FORMAT = 2  # bump when the pickled payload changes shape (2: ClassStats gained open flags and order counts)

# --------------------------------------------------------------------------------------------------
# The grid


def split_values(text: str) -> list[str]:
    """``"5m,15m,30m"`` -> ``["5m", "15m", "30m"]``; commas inside ``[...]``, ``{...}`` or quotes do not split."""
    out: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [v.strip() for v in out]


def parse_axis(spec: str, flag: str = "--vary") -> tuple[str, list[Any]]:
    """``"order_service.order_ttl=5m,15m"`` -> ``("order_service.order_ttl", ["5m", "15m"])``.

    Each value is read as TOML (numbers, booleans, lists, inline tables), else kept as a bare word —
    exactly like ``--set``; the values are kept as written, for the documents and the CSV.
    """
    example = f"for example {flag} order_service.order_ttl=15m,30m"
    if "=" not in spec:
        raise ConfigError(f"{flag} {spec!r}: expected key.path=value1,value2,..., {example}")
    key, raw = spec.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{flag} {spec!r}: the key before '=' is empty, {example}")
    texts = split_values(raw)
    if any(not t for t in texts):
        raise ConfigError(f"{flag} {spec!r}: an empty value (two commas in a row, or a trailing comma?)")
    values = [parse_value(t) for t in texts]
    seen: list[str] = []
    for t, v in zip(texts, values):
        canon = json.dumps(v, sort_keys=True)
        if canon in seen:
            raise ConfigError(f"{flag} {key}: the value {t!r} is given twice")
        seen.append(canon)
    return key, values


def expand_grid(vary: dict[str, list[Any]], compare: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, as ``params`` dicts: the cartesian product of the ``vary`` values (first key
    slowest) and, innermost, of the ``compare`` values — compared variants of one grid point are
    neighbours."""
    keys = list(vary) + list(compare)
    axes = [vary[k] for k in vary] + [compare[k] for k in compare]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


@dataclass(frozen=True)
class Point:
    index: int
    params: dict[str, Any]
    scenario: Scenario


@dataclass
class SweepPlan:
    base: Scenario
    vary: dict[str, list[Any]]
    compare: dict[str, list[Any]]
    points: list[Point] = field(default_factory=list)

    def tasks(self) -> list[tuple[int, int]]:
        """(point index, replication) for every run of the sweep, in document order."""
        return [(p.index, r) for p in self.points for r in range(p.scenario.run.replications)]


def plan_sweep(base: Scenario, vary_specs: Iterable[str] = (), compare_specs: Iterable[str] = ()) -> SweepPlan:
    """Parse ``--vary``/``--compare`` and build (and so validate) every point's scenario.

    Raises one :class:`ConfigError` listing every problem before anything runs.
    """
    vary: dict[str, list[Any]] = {}
    compare: dict[str, list[Any]] = {}
    for flag, specs, target in (("--vary", vary_specs, vary), ("--compare", compare_specs, compare)):
        for spec in specs:
            key, values = parse_axis(spec, flag)
            if key in vary or key in compare:
                raise ConfigError(f"{flag} {key}: this key is already swept (give each key once, with all its values)")
            target[key] = values
    if not vary and not compare:
        raise ConfigError("sweep: nothing to sweep: give at least one --vary key=v1,v2,... or --compare key=a,b")
    plan = SweepPlan(base, vary, compare)
    problems: list[str] = []
    # A bad key or value fails alone first, so the message names the flag and the value that was given.
    for flag, group in (("--vary", vary), ("--compare", compare)):
        for key, values in group.items():
            for value in values:
                try:
                    base.with_overrides({key: value}, source=flag)
                except ConfigError as exc:
                    for line in str(exc).splitlines():
                        if line not in problems:
                            problems.append(line)
    if problems:
        raise ConfigError("\n".join(problems))
    for i, params in enumerate(expand_grid(vary, compare)):
        try:
            scenario = base.with_overrides(params, source=_describe_params(params))
        except ConfigError as exc:  # a combination that is invalid only together (warmup >= horizon ...)
            problems.extend(line for line in str(exc).splitlines() if line not in problems)
            continue
        plan.points.append(Point(i, params, scenario))
    if problems:
        raise ConfigError("\n".join(problems))
    return plan


def describe_runs(plan: SweepPlan) -> str:
    """``"6 points x 5 replications = 30 runs"`` (or the range when ``run.replications`` is swept)."""
    reps = sorted({p.scenario.run.replications for p in plan.points})
    n_points, n_runs = len(plan.points), len(plan.tasks())
    points = f"{n_points} point{'s' if n_points != 1 else ''}"
    if len(reps) == 1:
        return f"{points} x {reps[0]} replication{'s' if reps[0] != 1 else ''} = {n_runs} runs"
    return f"{points} ({reps[0]}-{reps[-1]} replications each) = {n_runs} runs"


def _describe_params(params: dict[str, Any]) -> str:
    return "sweep point " + ", ".join(f"{k}={_cell(v)}" for k, v in params.items())


# --------------------------------------------------------------------------------------------------
# Finished runs on disk (Ctrl-C keeps them, --resume reuses them)


def task_key(scenario: Scenario, replication: int) -> str:
    """A file-name key for one run: a digest of the resolved scenario (seed included) and the replication.

    Two runs with equal keys are the same pure computation, so a stored result can stand in for it.
    """
    text = json.dumps(scenario.resolved(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    h = hashlib.sha256(f"{_PARTIAL_FORMAT}\n{replication}\n{text}".encode()).hexdigest()
    return f"{h[:24]}-r{replication}"


class PartialStore:
    """One pickle per finished run under ``OUT/.partial/``, each written atomically."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / PARTIAL_DIR

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pkl"

    def load(self, key: str) -> Any | None:
        p = self.path(key)
        try:
            with p.open("rb") as fh:
                payload = pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception:  # a truncated or foreign file: run it again
            return None
        if not isinstance(payload, dict) or payload.get("format") != _PARTIAL_FORMAT or payload.get("key") != key:
            return None
        return payload["result"]

    def save(self, key: str, result: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = pickle.dumps({"format": _PARTIAL_FORMAT, "key": key, "result": result},
                            protocol=pickle.HIGHEST_PROTOCOL)
        atomic_write(self.path(key), data)

    def count(self) -> int:
        return len(list(self.dir.glob("*.pkl"))) if self.dir.is_dir() else 0

    def reusable(self, plan: "SweepPlan") -> int:
        """How many of ``plan``'s runs are stored here (by key: same resolved scenario, seed and replication)."""
        if not self.dir.is_dir():
            return 0
        return sum(1 for pi, r in plan.tasks() if self.path(task_key(plan.points[pi].scenario, r)).exists())

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Running


def point_document(scenario: Scenario, reps: list[Any], kind: str = "sweep_point") -> dict[str, Any]:
    """The results document (docs/results.md) of one point's replications, in replication order.

    The same document :func:`sim.runner.simulate` builds, without ``run_info`` (a sweep has one for
    all its points), so a point's bytes depend only on its scenario and seed.
    """
    return pool(scenario, reps, kind)


def _progress(enabled: bool):
    """A rich progress bar on stderr: runs done/total, runs per second, elapsed and time left."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} runs/s" if speed else "– runs/s", style="progress.data.speed")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
        RateColumn(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False, disable=not enabled,
    )


def run_sweep(plan: SweepPlan, out_dir: str | Path, *, jobs: int = 1, dask: str | None = None,
              resume: bool = False, progress: bool = True, command: list[str] | None = None,
              label: str | None = None) -> dict[str, Any]:
    """Run every (point, replication) not already stored, and return the sweep document.

    Without ``resume`` any stored runs under ``out_dir`` are discarded first. Each finished run is
    stored before the next result is taken, so a ``KeyboardInterrupt`` (raised out of this function)
    keeps them all. The caller removes them (:meth:`PartialStore.clear`) once the documents are
    written.
    """
    from sim.model.model import run_replication
    from sim.results import run_info

    started = time.time()
    store = PartialStore(out_dir)
    if not resume:
        store.clear()
    all_tasks = plan.tasks()
    keys = {(pi, r): task_key(plan.points[pi].scenario, r) for pi, r in all_tasks}
    done: dict[tuple[int, int], Any] = {}
    if resume:
        for t in all_tasks:
            result = store.load(keys[t])
            if result is not None:
                done[t] = result
    reused = len(done)
    pending = [t for t in all_tasks if t not in done]
    todo = [(run_replication, (plan.points[pi].scenario, r)) for pi, r in pending]
    remaining = {p.index: p.scenario.run.replications for p in plan.points}
    for pi, _r in done:
        remaining[pi] -= 1
    docs: dict[int, dict[str, Any]] = {}

    def finish_point(pi: int) -> None:
        point = plan.points[pi]
        reps = [done.pop((pi, r)) for r in range(point.scenario.run.replications)]
        docs[pi] = point_document(point.scenario, reps)

    for pi, left in remaining.items():
        if left == 0:
            finish_point(pi)
    with _progress(progress) as bar:
        task = bar.add_task(label or f"sweep {plan.base.name or ''}".strip(), total=len(all_tasks),
                            completed=reused)
        for i, result in execute(todo, jobs, dask):
            t = pending[i]
            store.save(keys[t], result)
            done[t] = result
            remaining[t[0]] -= 1
            if remaining[t[0]] == 0:
                finish_point(t[0])
            bar.advance(task)
    doc = sweep_document(plan, [docs[p.index] for p in plan.points])
    doc["anomalies_csv"] = write_sweep_anomalies(plan, store, out_dir)
    info = run_info(started, command if command is not None else sys.argv)
    info.update(jobs=jobs if not dask else None, dask=dask, runs=len(all_tasks), runs_reused=reused,
                points=len(plan.points))
    doc["run_info"] = info
    return doc


def write_sweep_anomalies(plan: SweepPlan, store: PartialStore, out_dir: str | Path) -> dict[str, Any]:
    """``out_dir/anomalies.csv``: every instance of every point and replication, in (point, replication)
    order, each row led by ``point`` (its index in ``sweep.json``), the swept keys and ``replication``.

    The finished runs are read back from ``store`` one at a time, so memory holds one run, not the sweep.
    Returns ``{"file", "rows"}`` for the sweep document (``file`` None when no run kept its instances).
    """
    from sim.check import CSV_FILE, write_anomalies_csv

    keys = list(plan.vary) + list(plan.compare)
    rows = 0

    def runs() -> Iterable[tuple[list[str], Any]]:
        nonlocal rows
        for p in plan.points:
            cells = [str(p.index)] + [_cell(p.params.get(k)) for k in keys]
            for r in range(p.scenario.run.replications):
                result = store.load(task_key(p.scenario, r))
                if result is None:  # every run was stored before this is called
                    raise RuntimeError(f"sweep point {p.index} replication {r}: its stored run is missing")
                rows += len(result.summary.instances or ())
                yield cells + [str(r)], result.summary

    path = write_anomalies_csv(out_dir, runs(), lead_columns=("point", *keys, "replication"))
    return {"file": CSV_FILE if path is not None else None, "rows": rows}


def sweep_document(plan: SweepPlan, point_docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep document (docs/results.md, ``kind = "sweep"``) without ``run_info``."""
    from sim.results import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "scenario_name": plan.base.name,
        "vary": {k: list(v) for k, v in plan.vary.items()},
        "compare": {k: list(v) for k, v in plan.compare.items()},
        "points": [{"params": dict(p.params), "results": d} for p, d in zip(plan.points, point_docs)],
    }


# --------------------------------------------------------------------------------------------------
# Writing


def _cell(value: Any) -> str:
    """A CSV cell: numbers to 9 significant digits, words as written, lists/tables as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _measure_cells(a: dict[str, Any], measure: str) -> list[str]:
    """orders, rate and 95% interval of ``occurred`` or ``unresolved`` (a schema 1 point: unresolved only)."""
    if f"{measure}_rate" in a:
        ci = a.get(f"{measure}_ci95") or [None, None]
        return [_cell(a.get(f"{measure}_orders")), _cell(a.get(f"{measure}_rate")), _cell(ci[0]), _cell(ci[1])]
    if measure == "unresolved":
        ci = a.get("ci95") or [None, None]
        return ["", _cell(a.get("rate")), _cell(ci[0]), _cell(ci[1])]  # schema 1 counted instances, not orders
    return ["", "", "", ""]


def sweep_csv(doc: dict[str, Any]) -> str:
    """One row per point and anomaly class: the parameters, then :data:`CSV_COLUMNS`."""
    keys = list(doc.get("vary") or {}) + list(doc.get("compare") or {})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + list(CSV_COLUMNS))
    for point in doc["points"]:
        res = point["results"]
        anomalies = res.get("anomalies") or {}
        for cls in list(ANOMALY_CLASSES) + [c for c in anomalies if c not in ANOMALY_CLASSES]:
            a = anomalies.get(cls)
            if a is None:
                continue
            repair = a.get("repair_s") or {}
            w.writerow([_cell(point["params"].get(k)) for k in keys] + [
                cls, _cell(a.get("observable", True)),
                *_measure_cells(a, "occurred"), *_measure_cells(a, "unresolved"),
                _cell(repair.get("repaired_share")), _cell(repair.get("median")), _cell(repair.get("p99")),
                _cell(a.get("amount_total", a.get("amount"))),
                _cell(a.get("occurred_count")), _cell(a.get("unresolved_count", a.get("count"))),
                _cell(res.get("orders")),
            ])
    return buf.getvalue()


def write_sweep(doc: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/sweep.json`` (canonical JSON) and ``out_dir/sweep.csv``, each atomically."""
    from sim.results import canonical_json

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{out}: cannot create the output directory (a file is in the way)") from None
    json_path, csv_path = out / SWEEP_FILE, out / CSV_FILE
    atomic_write(json_path, canonical_json(doc).encode("utf-8"))
    atomic_write(csv_path, sweep_csv(doc).encode("utf-8"))
    return json_path, csv_path


