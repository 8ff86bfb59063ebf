"""One results document for every producer (``simulate``, ``check``, ``load``, sweep points).

:func:`build_results` pools the :class:`~sim.check.CheckSummary` of each replication into the shape of
``docs/results.md``: rates with 95% confidence intervals (a t-interval over replications, or a Wilson
score interval for a single one), window lengths, money at stake, end states, a timeline and example
histories. :func:`canonical_json` makes the bytes a pure function of the content (sorted keys, floats
rounded to 9 significant digits), so two runs with the same scenario and seed give identical files
outside ``run_info``; :func:`write_results` never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sim.check import CheckSummary
from sim.errors import ConfigError
from sim.vocabulary import ANOMALY_CLASSES

if TYPE_CHECKING:  # rich is imported only when a table is drawn
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "SCHEMA_VERSION",
    "MAX_WINDOW_SAMPLES",
    "build_results",
    "canonical_json",
    "write_results",
    "load_results",
    "run_info",
    "summary_table",
    "print_summary",
    "human_duration",
    "t_interval",
    "wilson_interval",
]

SCHEMA_VERSION = 1
MAX_WINDOW_SAMPLES = 500
RESULTS_FILE = "results.json"
_Z95 = 1.959963984540054  # standard normal quantile at 0.975
_VERSIONED = ("checkout-chaos", "simpy", "locust", "numpy", "scipy", "pydantic", "rich", "matplotlib",
              "fastapi", "uvicorn", "httpx", "dask")
_EXAMPLE_ROLES = ("first", "worst", "last")

# --------------------------------------------------------------------------------------------------
# Building


def build_results(
    kind: str,
    summaries: list[CheckSummary],
    *,
    scenario: dict[str, Any] | None,
    scenario_name: str | None,
    seed: int | None,
    metrics: list[dict[str, Any]] | None = None,
    faults: list[dict[str, Any]] | None = None,
    horizon_s: float | None,
    warmup_s: float | None,
    end_s: float | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document (``docs/results.md``) of ``summaries``, one per replication.

    ``horizon_s``/``warmup_s``/``end_s`` given as ``None`` are taken from the first summary. ``metrics``
    holds one dict per replication (``{actor: {metric: value}}``); they are averaged, ``timeouts``
    summed. ``extra`` adds top-level keys (``live`` for live runs).
    """
    first = summaries[0] if summaries else None
    orders = [s.orders for s in summaries]
    anomalies = {cls: _pool_class(cls, summaries) for cls in ANOMALY_CLASSES}
    end_states: dict[str, int] = {}
    for s in summaries:
        for name, n in s.end_states.items():
            end_states[name] = end_states.get(name, 0) + n
    timeline = next((s.timeline for s in summaries if s.timeline), None)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "scenario": scenario,
        "scenario_name": scenario_name,
        "seed": seed,
        "replications": len(summaries),
        "orders": sum(orders),
        "orders_per_replication": orders,
        "horizon_s": horizon_s if horizon_s is not None or first is None else first.horizon,
        "warmup_s": warmup_s if warmup_s is not None or first is None else first.warmup,
        "end_s": end_s if end_s is not None or first is None else first.end,
        "anomalies": anomalies,
        "end_states": dict(sorted(end_states.items())),
        "metrics": _pool_metrics(metrics or []),
        "timeline": timeline,
        "faults": list(faults or []),
        "examples": {cls: _pool_examples(cls, summaries) for cls in ANOMALY_CLASSES},
    }
    if extra:
        doc.update(extra)
    return doc


def _pool_class(cls: str, summaries: Sequence[CheckSummary]) -> dict[str, Any]:
    stats = [s.per_class[cls] for s in summaries]
    count = sum(st.count for st in stats)
    per_rep = [st.count / s.orders if s.orders else None for st, s in zip(stats, summaries)]
    rates = [r for r in per_rep if r is not None]
    if len(rates) >= 2:
        rate = sum(rates) / len(rates)
        ci: list[float] | None = list(t_interval(rates))
        method: str | None = "t"
    elif len(rates) == 1:
        s, st = next((s, st) for s, st in zip(summaries, stats) if s.orders)
        rate = st.count / s.orders
        ci, method = list(wilson_interval(st.count, s.orders)), "wilson"
    else:
        rate, ci, method = 0.0, None, None
    n_windows = sum(st.n_windows for st in stats)
    weighted = [(w, st.n_windows / len(st.windows)) for st in stats if st.windows for w in st.windows]
    window_s = None
    if n_windows:
        window_s = {
            "median": _weighted_quantile(weighted, 0.5),
            "p99": _weighted_quantile(weighted, 0.99),
            "max": max(st.window_max for st in stats),
            "mean": sum(st.window_sum for st in stats) / n_windows,
        }
    return {
        "count": count,
        "repaired": sum(st.repaired for st in stats),
        "rate": rate,
        "ci95": ci,
        "ci_method": method,
        "per_replication": per_rep,
        "window_s": window_s,
        "window_samples": _pooled_samples(weighted),
        "amount": sum(st.amount_fen for st in stats) / 100.0,
    }


def t_interval(rates: Sequence[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean of per-replication rates, clipped at 0."""
    from scipy.stats import t as student_t

    n = len(rates)
    mean = sum(rates) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1))
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return max(0.0, mean - half), mean + half


def wilson_interval(count: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of ``count`` events in ``n`` orders (count capped at n)."""
    k = min(count, n)
    p = k / n
    z2 = _Z95 * _Z95
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact bounds where rounding would leave 1e-17
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _weighted_quantile(items: Sequence[tuple[float, float]], q: float) -> float | None:
    """The smallest sample whose cumulative weight reaches ``q`` of the total (inverted CDF)."""
    if not items:
        return None
    ordered = sorted(items)
    total = sum(w for _, w in ordered)
    target = q * total
    acc = 0.0
    for value, weight in ordered:
        acc += weight
        if acc >= target - 1e-12 * total:
            return value
    return ordered[-1][0]


def _pooled_samples(items: Sequence[tuple[float, float]]) -> list[float]:
    """At most MAX_WINDOW_SAMPLES window lengths, ascending: all of them, or evenly spaced quantiles."""
    if not items:
        return []
    weights = {w for _, w in items}
    if len(items) <= MAX_WINDOW_SAMPLES and len(weights) == 1:
        return sorted(v for v, _ in items)
    ordered = sorted(items)
    total = sum(w for _, w in ordered)
    out: list[float] = []
    acc, i = 0.0, 0
    for k in range(MAX_WINDOW_SAMPLES):
        target = (k + 0.5) / MAX_WINDOW_SAMPLES * total
        while i < len(ordered) - 1 and acc + ordered[i][1] < target:
            acc += ordered[i][1]
            i += 1
        out.append(ordered[i][0])
    return out


def _pool_metrics(per_rep: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric leaf over the replications that report it; ``timeouts`` summed."""
    if not per_rep:
        return {}
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for m in per_rep for k in m))
    for key in keys:
        values = [m[key] for m in per_rep if key in m]
        if all(isinstance(v, dict) for v in values):
            out[key] = _pool_metrics(values)
        elif all(_is_number(v) for v in values):
            out[key] = sum(values) if key == "timeouts" else sum(values) / len(values)
        else:
            out[key] = values[0]
    return out


def _pool_examples(cls: str, summaries: Sequence[CheckSummary]) -> list[dict[str, Any]]:
    """First (earliest start), worst (longest window) and last (latest start) across replications."""
    best: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for ex in (s.examples or {}).get(cls, ()):
            roles = ex.get("roles") or [ex.get("role")]
            if "first" in roles and ("first" not in best or ex["start"] < best["first"]["start"]):
                best["first"] = ex
            if "worst" in roles and ("worst" not in best or ex["window_s"] > best["worst"]["window_s"]):
                best["worst"] = ex
            if "last" in roles and ("last" not in best or ex["start"] >= best["last"]["start"]):
                best["last"] = ex
    out: list[dict[str, Any]] = []
    for role in _EXAMPLE_ROLES:
        ex = best.get(role)
        if ex is None:
            continue
        same = next((o for o in out if o["_src"] is ex), None)
        if same is not None:
            same["roles"].append(role)
            continue
        item = {k: v for k, v in ex.items() if k not in ("role", "roles")}
        item.update(role=role, roles=[role], _src=ex)
        out.append(item)
    for item in out:
        del item["_src"]
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------------
# Bytes on disk


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _canonical(item())
    if hasattr(value, "to_dict"):
        return _canonical(value.to_dict())
    raise TypeError(f"cannot write {type(value).__name__} into a results document")


def canonical_json(doc: dict[str, Any]) -> str:
    """JSON text that depends only on the content: sorted keys, 9 significant digits, NaN/inf -> null.

    Objects are indented one key per line; lists of numbers and short objects stay on one line, so a
    timeline or an event reads as one line and two documents diff well.
    """
    out: list[str] = []
    _emit(_canonical(doc), 0, out)
    out.append("\n")
    return "".join(out)


_INLINE_CHARS = 240


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def _emit(value: Any, depth: int, out: list[str]) -> None:
    if isinstance(value, (dict, list)) and value:
        text = _compact(value)
        scalars = isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)
        if scalars or len(text) <= _INLINE_CHARS:
            out.append(text)
            return
        pad = "\n" + " " * (depth + 1)
        if isinstance(value, dict):
            out.append("{")
            for i, key in enumerate(sorted(value)):
                out.append(("," if i else "") + pad + json.dumps(key, ensure_ascii=False) + ": ")
                _emit(value[key], depth + 1, out)
            out.append("\n" + " " * depth + "}")
        else:
            out.append("[")
            for i, item in enumerate(value):
                out.append(("," if i else "") + pad)
                _emit(item, depth + 1, out)
            out.append("\n" + " " * depth + "]")
        return
    out.append(_compact(value))


def write_results(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/results.json`` atomically (temp file in the same directory, then ``os.replace``)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{out}: cannot create the output directory (a file is in the way)") from None
    target = out / RESULTS_FILE
    atomic_write(target, canonical_json(doc))
    return target


def atomic_write(target: Path, data: str | bytes) -> None:
    """Write ``target`` all at once: a temporary file in the same directory, then a rename.

    A reader (or a crash) never sees half a file.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results document; raise :class:`ConfigError` for a missing file, bad JSON or wrong schema."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such results file (write one with simulate, check or load --out)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read results file ({exc.__class__.__name__})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a JSON object (a results document), found {type(doc).__name__}")
    if "schema_version" not in doc:
        raise ConfigError(f"{p}: missing schema_version (expected {SCHEMA_VERSION}); is this a results document?")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(
            f"{p}: schema_version: expected {SCHEMA_VERSION}, found {doc['schema_version']!r} "
            "(written by another version of checkout-chaos?)"
        )
    return doc


def run_info(started: float, command: list[str] | None) -> dict[str, Any]:
    """What is not a function of scenario and seed: wall time (``started`` is a ``time.time()``), host, versions."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "wall_s": round(time.time() - started, 3),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else list(sys.argv),
    }


# --------------------------------------------------------------------------------------------------
# Terminal summary


def human_duration(seconds: float | None) -> str:
    """``0.35`` -> ``350ms``, ``42`` -> ``42s``, ``725`` -> ``12m05s``, ``3720`` -> ``1h02m``, ``97200`` -> ``1d03h``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f}ms" if s > 0 else "0s"
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}m{sec:02d}s"
    if s < 86400:
        h, m = divmod(int(round(s / 60)), 60)
        return f"{h}h{m:02d}m"
    d, h = divmod(int(round(s / 3600)), 24)
    return f"{d}d{h:02d}h"


def format_rate(value: float | None) -> str:
    """``0.0031`` -> ``3.1e-3``, ``0.125`` -> ``0.125``, ``0`` -> ``0``."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 0.01:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _money(cny: float) -> str:
    return f"¥{cny:,.2f}"


_WIDE_COLUMNS = ("count", "repaired", "rate", "95% CI", "window p50", "window p99", "at stake")
_COMPACT_COLUMNS = ("count", "repaired", "rate", "window p50", "at stake")
_WIDE_TABLE = 112  # characters the wide table needs


def summary_table(doc: dict[str, Any], compact: bool = False) -> "Table":
    """One row per anomaly class: count, repaired, rate, 95% CI, window p50/p99, money at stake.

    ``compact`` drops the interval and p99 columns to fit an 80-column terminal.
    """
    from rich import box
    from rich.table import Table

    n_rep = doc.get("replications") or 0
    title = f"anomalies in {doc.get('orders', 0):,} orders" + (f" ({n_rep} replications)" if n_rep > 1 else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("anomaly", no_wrap=True)
    columns = _COMPACT_COLUMNS if compact else _WIDE_COLUMNS
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    anomalies = doc.get("anomalies") or {}
    for cls in [c for c in ANOMALY_CLASSES if c in anomalies] + [c for c in anomalies if c not in ANOMALY_CLASSES]:
        a = anomalies[cls]
        ci = a.get("ci95")
        win = a.get("window_s") or {}
        cells = {
            "count": f"{a.get('count', 0):,}",
            "repaired": f"{a.get('repaired', 0):,}",
            "rate": format_rate(a.get("rate")),
            "95% CI": f"[{format_rate(ci[0])}, {format_rate(ci[1])}]" if ci else "—",
            "window p50": human_duration(win.get("median")),
            "window p99": human_duration(win.get("p99")),
            "at stake": _money(a.get("amount") or 0.0),
        }
        quiet = not a.get("count") and not a.get("repaired")
        table.add_row(cls, *(cells[c] for c in columns), style="dim" if quiet else None)
    return table


_METRIC_HEADERS = {"utilization": "util", "wait_mean_s": "wait mean", "wait_p99_s": "wait p99",
                   "queue_mean": "queue", "timeouts": "timeouts", "served": "served"}


def _metrics_table(metrics: dict[str, Any]) -> "Table":
    from rich import box
    from rich.table import Table

    columns = list(dict.fromkeys(k for m in metrics.values() if isinstance(m, dict) for k in m))
    table = Table(title="capacity-limited actors", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("actor", no_wrap=True)
    for c in columns:
        table.add_column(_METRIC_HEADERS.get(c, c), justify="right", no_wrap=True)
    for actor, m in metrics.items():
        if not isinstance(m, dict):
            continue
        cells = []
        for c in columns:
            v = m.get(c)
            if v is None:
                cells.append("—")
            elif c.endswith("_s") and _is_number(v):
                cells.append(human_duration(v))
            elif isinstance(v, float) and not v.is_integer():
                cells.append(f"{v:.3g}")
            else:
                cells.append(f"{int(v):,}" if _is_number(v) else str(v))
        table.add_row(actor, *cells)
    return table


def print_summary(doc: dict[str, Any], console: "Console | None" = None) -> None:
    """The summary table (and the metrics table when present) on ``console``."""
    from rich.console import Console

    if console is None:  # piped output: wide enough for the table, not the 80-column fallback
        console = Console() if sys.stdout.isatty() else Console(width=120)
    head = [doc.get("kind", "results")]
    if doc.get("scenario_name"):
        head.append(f"scenario {doc['scenario_name']}")
    if doc.get("seed") is not None:
        head.append(f"seed {doc['seed']}")
    window = []
    if doc.get("warmup_s"):
        window.append(f"warmup {human_duration(doc['warmup_s'])}")
    if doc.get("horizon_s") is not None:
        window.append(f"horizon {human_duration(doc['horizon_s'])}")
    if doc.get("end_s") is not None:
        window.append(f"observed to {human_duration(doc['end_s'])}")
    console.print(" · ".join(head + window))
    console.print(summary_table(doc, compact=console.width < _WIDE_TABLE))
    metrics = doc.get("metrics")
    if metrics:
        console.print(_metrics_table(metrics))
    states = doc.get("end_states") or {}
    if states:
        console.print("end states: " + ", ".join(f"{k} {v:,}" for k, v in sorted(states.items(), key=lambda kv: -kv[1])))

