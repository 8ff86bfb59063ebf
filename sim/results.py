"""One results document for every producer (``simulate``, ``check``, ``load``, sweep points).

:func:`build_results` pools the :class:`~sim.check.CheckSummary` of each replication into the shape of
``docs/results.md``: for every class the orders where it occurred, was repaired and was left unresolved,
each as a share of counted orders with a pooled exact (Clopper–Pearson) interval and, beside it, the
between-replication interval; time to repair by Kaplan–Meier (open instances censored at the end);
money held at the end (total and per replication); end states, a timeline and example histories. :func:`canonical_json` makes the bytes a pure function of the content (sorted keys, floats
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
from typing import TYPE_CHECKING, Any, Callable, Sequence

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
    "exact_interval",
    "between_interval",
    "dispersion_p",
    "effective_interval",
    "incidence",
    "kaplan_meier_quantiles",
    "buyer_sentence",
    "observability",
]

SCHEMA_VERSION = 2
OVERDISPERSION_P = 0.05  # below it the replications vary more than binomially
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
        "orders_without_creation": sum(getattr(s, "orders_uncreated", 0) for s in summaries),
        "horizon_s": horizon_s if horizon_s is not None or first is None else first.horizon,
        "warmup_s": warmup_s if warmup_s is not None or first is None else first.warmup,
        "end_s": end_s if end_s is not None or first is None else first.end,
        "anomalies": anomalies,
        "end_states": dict(sorted(end_states.items())),
        "metrics": _pool_metrics(metrics or []),
        "timeline": timeline,
        "faults": list(faults or []),
        "examples": {cls: _pool_examples(cls, summaries) for cls in ANOMALY_CLASSES},
        "observable": observability(summaries),
    }
    for cls in doc["observable"]["not_observable"]:
        anomalies[cls]["observable"] = False
    if extra:
        doc.update(extra)
    return doc


def observability(summaries: Sequence[CheckSummary]) -> dict[str, Any]:
    """What the histories observed and so which classes they can decide (``docs/results.md``, "Observable").

    The checker decides it per history (:attr:`CheckSummary.observed`, :attr:`ClassStats.observable`); over
    several replications a source counts as observed, and a class as decidable, only if it is in every one.
    """
    sources: dict[str, bool] = {}
    how: dict[str, str] = {}
    for s in summaries:
        for src, ok in (getattr(s, "observed", None) or {}).items():
            sources[src] = sources.get(src, True) and bool(ok)
        for src, text in (getattr(s, "observed_how", None) or {}).items():
            how[src] = text if how.get(src, text) == text else "varies between replications"
    classes = {cls: all(getattr(s.per_class[cls], "observable", True) for s in summaries) for cls in ANOMALY_CLASSES}
    money = {getattr(s, "money_from", "ledger") for s in summaries}
    return {
        "sources": sources,
        "how": how,
        "money_from": money.pop() if len(money) == 1 else "varies between replications",
        "classes": classes,
        "not_observable": [cls for cls, ok in classes.items() if not ok],
    }


def _pool_class(cls: str, summaries: Sequence[CheckSummary]) -> dict[str, Any]:
    """One class over the replications: occurred, repaired and unresolved (orders, instances, rates with
    intervals), time to repair (Kaplan–Meier, open instances censored) and money (total and per replication)."""
    stats = [s.per_class[cls] for s in summaries]
    orders = [_rate_orders(s) for s in summaries]
    count = sum(st.count for st in stats)
    repaired = sum(st.repaired for st in stats)
    occ_orders = [getattr(st, "orders_occurred", min(st.count + st.repaired, n)) for st, n in zip(stats, orders)]
    unres_orders = [getattr(st, "orders_unresolved", min(st.count, n)) for st, n in zip(stats, orders)]
    measures = {
        "occurred": (occ_orders, count + repaired),
        "repaired": ([o - u for o, u in zip(occ_orders, unres_orders)], repaired),
        "unresolved": (unres_orders, count),
    }
    out: dict[str, Any] = {}
    for name, (per_rep_orders, instances) in measures.items():
        est = incidence(per_rep_orders, orders)
        out[f"{name}_count"] = instances
        out[f"{name}_orders"] = sum(per_rep_orders)
        for key, value in est.items():
            out[f"{name}_{key}"] = value
    # v1 names, same meaning: unresolved instances, repaired instances, the unresolved rate and its interval
    out.update(count=count, repaired=repaired, rate=out["unresolved_rate"], ci95=out["unresolved_ci95"],
               ci_method=out["unresolved_ci_method"], per_replication=out["unresolved_per_replication"])

    n_windows = sum(st.n_windows for st in stats)
    weighted = [(w, st.n_windows / len(st.windows), bool(flag))
                for st in stats if st.windows
                for w, flag in zip(st.windows, getattr(st, "windows_open", None) or [False] * len(st.windows))]
    window_s = None
    if n_windows:
        pairs = [(w, wt) for w, wt, _ in weighted]
        window_s = {
            "median": _weighted_quantile(pairs, 0.5),
            "p99": _weighted_quantile(pairs, 0.99),
            "max": max(st.window_max for st in stats),
            "mean": sum(st.window_sum for st in stats) / n_windows,
        }
    samples = _pooled_samples(weighted)
    out.update(
        window_s=window_s,
        window_samples=[v for v, _ in samples],
        window_samples_open=[o for _, o in samples],
        repair_s=_repair_times(weighted, repaired, count),
    )
    amounts = [st.amount_fen / 100.0 for st in stats]
    total = sum(st.amount_fen for st in stats) / 100.0
    out.update(amount=total, amount_total=total, amount_per_replication=_mean_interval(amounts))
    return out


def _rate_orders(s: CheckSummary) -> int:
    """The orders a rate is a share of: those counted, plus those in the window with an anomaly but no
    ``order.created`` (a charge without an order is an order to the buyer who paid)."""
    return s.orders + getattr(s, "orders_uncreated", 0)


def incidence(affected: Sequence[int], orders: Sequence[int]) -> dict[str, Any]:
    """Share of counted orders affected, pooled over replications, with its 95% interval.

    ``affected[i]`` of ``orders[i]`` orders in replication *i*. ``rate`` = sum(affected) / sum(orders);
    ``ci95_exact`` is the Clopper–Pearson interval of that pooled count (orders as independent trials);
    ``ci95_between`` the Student-t interval from the spread between replications (two or more
    replications with orders). ``ci95`` is the interval to read: the exact one, unless the replications
    vary more than binomially (``dispersion_p`` < 0.05, a chi-square test of the per-replication
    counts) — then orders are not independent draws (one fault window or backlog hits many at once), and
    ``ci95`` is the Clopper–Pearson interval at the effective number of orders that the between-
    replication variance implies (Korn & Graubard), never narrower than the exact one. Either way it
    contains ``rate``, is ``[0, upper]`` for a zero count and stays within [0, 1].
    """
    pairs = [(min(max(int(k), 0), n), n) for k, n in zip(affected, orders)]
    per_rep = [k / n if n else None for k, n in pairs]
    used = [(k, n) for k, n in pairs if n]
    total_k = sum(k for k, _ in used)
    total_n = sum(n for _, n in used)
    if not total_n:
        return {"rate": 0.0, "ci95": None, "ci_method": None, "ci95_exact": None, "ci95_between": None,
                "dispersion_p": None, "per_replication": per_rep}
    rate = total_k / total_n
    exact = list(exact_interval(total_k, total_n))
    between = list(between_interval(used)) if len(used) >= 2 and 0 < total_k < total_n else None
    disp = dispersion_p(used) if len(used) >= 2 else None
    ci, method = exact, "clopper-pearson"
    if disp is not None and disp < OVERDISPERSION_P:
        lo, hi = effective_interval(used)
        ci, method = [min(exact[0], lo), max(exact[1], hi)], "clopper-pearson-effective-n"
    return {"rate": rate, "ci95": ci, "ci_method": method, "ci95_exact": exact, "ci95_between": between,
            "dispersion_p": disp, "per_replication": per_rep}


def effective_interval(used: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Clopper–Pearson at an effective sample size (Korn & Graubard 1998): the pooled rate p with the
    between-replication variance v stands for p(1-p)/v independent orders, shrunk by (z/t_{R-1})^2 for
    having only R replications to estimate v from."""
    from scipy.special import betaincinv, stdtrit

    r = len(used)
    n_total = sum(n for _, n in used)
    p = sum(k for k, _ in used) / n_total
    se = _ratio_se(used)
    if p <= 0.0 or p >= 1.0 or se <= 0.0:
        return exact_interval(round(p * n_total), n_total)
    n_eff = p * (1 - p) / (se * se) * (_Z95 / float(stdtrit(r - 1, 0.975))) ** 2
    n_eff = min(n_eff, float(n_total))
    k_eff = p * n_eff
    lo = float(betaincinv(k_eff, n_eff - k_eff + 1, 0.025))
    hi = float(betaincinv(k_eff + 1, n_eff - k_eff, 0.975))
    return lo, hi


def _ratio_se(used: Sequence[tuple[int, int]]) -> float:
    """Standard error of the pooled rate from the replications' spread (ratio estimator)."""
    r = len(used)
    n_total = sum(n for _, n in used)
    p = sum(k for k, _ in used) / n_total
    return math.sqrt(r / (r - 1) * sum((k - p * n) ** 2 for k, n in used)) / n_total


def exact_interval(k: int, n: int) -> tuple[float, float]:
    """95% Clopper–Pearson interval of ``k`` events in ``n`` orders: ``[0, upper]`` for k = 0 (never [0, 0])."""
    from scipy.special import betaincinv  # the beta quantile (scipy.stats.beta.ppf) without its overhead

    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, 0.025))
    hi = 1.0 if k >= n else float(betaincinv(k + 1, n - k, 0.975))
    return lo, hi


def between_interval(used: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """95% Student-t interval of the pooled rate from the spread of ``(count, orders)`` between replications.

    The ratio estimator's standard error, sqrt(R/(R-1) * sum((k_i - p n_i)^2)) / N, equals the usual
    s/sqrt(R) of per-replication rates when every replication has the same orders. Clipped to [0, 1].
    """
    from scipy.special import stdtrit  # Student-t quantile

    n_total = sum(n for _, n in used)
    p = sum(k for k, _ in used) / n_total
    half = float(stdtrit(len(used) - 1, 0.975)) * _ratio_se(used)
    return max(0.0, p - half), min(1.0, p + half)


def dispersion_p(used: Sequence[tuple[int, int]]) -> float | None:
    """p-value of the chi-square test that the replications' counts are binomial with one common rate
    (small: they vary more than binomially). ``None`` when the pooled rate is 0 or 1 (nothing varies)."""
    from scipy.special import chdtrc  # chi-square survival function

    n_total = sum(n for _, n in used)
    p = sum(k for k, _ in used) / n_total
    if p <= 0.0 or p >= 1.0:
        return None
    stat = sum((k - p * n) ** 2 / (n * p * (1 - p)) for k, n in used)
    return float(chdtrc(len(used) - 1, stat))


def _mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean of per-replication values with a 95% Student-t interval (null for one replication)."""
    if not values:
        return {"mean": 0.0, "ci95": None, "values": []}
    mean = sum(values) / len(values)
    ci = None
    if len(values) >= 2:
        lo, hi = t_interval(values, clip=False)
        ci = [lo, hi]
    return {"mean": mean, "ci95": ci, "values": list(values)}


def _repair_times(weighted: Sequence[tuple[float, float, bool]], repaired: int, unresolved: int) -> dict[str, Any] | None:
    """Time to repair by Kaplan–Meier: repaired windows are events, windows still open at the end are
    censored at end - start. ``median``/``p99`` are null when the estimate never falls that far (not
    reached); ``repaired_share`` is the exact share of instances repaired by the end."""
    total = repaired + unresolved
    if not total:
        return None
    times = [w for w, _, _ in weighted]
    observed = [not o for _, _, o in weighted]
    weights = [wt for _, wt, _ in weighted]
    q = kaplan_meier_quantiles(times, observed, weights, (0.5, 0.99)) if times else {0.5: None, 0.99: None}
    return {"median": q[0.5], "p99": q[0.99], "repaired_share": repaired / total, "censored": unresolved,
            "method": "kaplan-meier"}


def kaplan_meier_quantiles(times: Sequence[float], observed: Sequence[bool], weights: Sequence[float] | None,
                           probs: Sequence[float]) -> dict[float, float | None]:
    """For each ``q`` in ``probs``, the smallest time by which the Kaplan–Meier estimate says a share
    ``q`` was repaired (survival <= 1 - q); ``None`` when it is not reached.

    Equal weights use ``scipy.stats.ecdf`` on ``CensoredData``; a pooled sample whose replications were
    subsampled differently carries weights, which scipy's estimator does not take, so that case uses
    the same product-limit formula with weighted counts (events before censorings at equal times).
    """
    import numpy as np

    t = np.asarray(times, dtype=float)
    ev = np.asarray(observed, dtype=bool)
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)
    if not ev.any():
        return {q: None for q in probs}
    if np.allclose(w, w[0]):
        from scipy.stats import CensoredData, ecdf

        res = ecdf(CensoredData(uncensored=t[ev], right=t[~ev]))
        grid, surv = res.sf.quantiles, res.sf.probabilities
    else:
        grid = np.unique(t[ev])
        surv = np.empty(len(grid))
        s = 1.0
        for i, x in enumerate(grid):
            at_risk = w[t >= x].sum()
            s *= 1.0 - w[(t == x) & ev].sum() / at_risk
            surv[i] = s
    out: dict[float, float | None] = {}
    for q in probs:
        hit = np.nonzero(surv <= 1.0 - q + 1e-12)[0]
        out[q] = float(grid[hit[0]]) if len(hit) else None
    return out


def t_interval(rates: Sequence[float], clip: bool = True) -> tuple[float, float]:
    """95% Student-t interval of the mean of per-replication values (clipped at 0 unless ``clip`` is False)."""
    from scipy.stats import t as student_t

    n = len(rates)
    mean = sum(rates) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1))
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return (max(0.0, mean - half) if clip else mean - half), mean + half


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


def _pooled_samples(items: Sequence[tuple[float, float, bool]]) -> list[tuple[float, bool]]:
    """At most MAX_WINDOW_SAMPLES (window, still open) pairs, ascending: all of them, or evenly spaced
    quantiles of the weighted pool (at equal windows a repaired one sorts before an open one)."""
    if not items:
        return []
    weights = {w for _, w, _ in items}
    if len(items) <= MAX_WINDOW_SAMPLES and len(weights) == 1:
        return sorted((v, o) for v, _, o in items)
    ordered = sorted(items, key=lambda x: (x[0], x[2]))
    total = sum(w for _, w, _ in ordered)
    out: list[tuple[float, bool]] = []
    acc, i = 0.0, 0
    for k in range(MAX_WINDOW_SAMPLES):
        target = (k + 0.5) / MAX_WINDOW_SAMPLES * total
        while i < len(ordered) - 1 and acc + ordered[i][1] < target:
            acc += ordered[i][1]
            i += 1
        out.append((ordered[i][0], ordered[i][2]))
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
    if doc["schema_version"] == 1:
        raise ConfigError(
            f"{p}: schema_version 1: written by an older checkout-chaos, before results recorded the anomalies "
            "that occurred and were repaired beside those left unresolved; run the simulate/check/load again to "
            "get schema_version 2 (`checkout-chaos report` still draws a version 1 file)"
        )
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


# What a buyer (or, for the merchant's own books, an order) lived through, per class.
BUYER_EXPERIENCE: dict[str, tuple[str, str]] = {
    "paid_but_closed": ("buyers", "paid for an order that was then closed"),
    "success_shown_then_closed": ("buyers", "were told 'paid' and then saw the order closed"),
    "failure_shown_but_charged": ("buyers", "were told 'failed' while charged"),
    "double_charge": ("buyers", "were charged more than once"),
    "charge_without_order": ("buyers", "were charged with no order to show for it"),
    "order_paid_without_charge": ("orders", "were marked paid with no charge behind them"),
    "stuck_pending": ("buyers", "waited on a payment left undecided past its deadline"),
    "bnpl_stuck_unfinished": ("buyers", "had a BNPL agreement left unfinished after delivery"),
    "bnpl_false_overdue": ("buyers", "were marked overdue on a BNPL agreement they had paid"),
    "bnpl_deduction_failed": ("buyers", "had a BNPL deduction fail"),
    "ledger_imbalance": ("orders", "had an unbalanced ledger entry"),
    "amount_mismatch": ("buyers", "were charged an amount other than the order's"),
    "over_refund": ("orders", "were refunded more than was charged"),
    "refund_to_wrong_party": ("buyers", "had their refund sent to someone else"),
    "duplicate_fulfilment": ("orders", "were fulfilled twice"),
    "oversold": ("orders", "were sold again after their stock was released"),
    "bnpl_double_deduction": ("buyers", "paid a BNPL agreement twice"),
    "refunded_and_shipped": ("orders", "were refunded on a cancel accepted after their goods had shipped"),
}


def share_text(rate: float | None) -> str:
    """A share of orders as a person says it: ``0.7`` -> ``70%``, ``0.042`` -> ``4.2%``, ``3e-4`` -> ``1 in 3,300``."""
    if rate is None:
        return "—"
    if rate <= 0:
        return "0%"
    if rate >= 0.0995:
        return f"{rate * 100:.0f}%"
    if rate >= 0.00995:
        return f"{rate * 100:.2g}%"
    n = 1.0 / rate
    digits = max(0, int(math.floor(math.log10(n))) - 1)
    return f"1 in {round(n, -digits):,.0f}"


def _of(rate: float | None, who: str) -> str:
    text = share_text(rate)
    return f"{text} {who}" if text.startswith("1 in") else f"{text} of {who}"


def buyer_sentence(cls: str, a: dict[str, Any], duration: Any = None) -> str | None:
    """``70% of buyers were told 'failed' while charged; all were repaired, median after 4m00s`` (None when
    the class never occurred). ``duration`` formats seconds (default :func:`human_duration`)."""
    fmt_d = duration or human_duration
    occurred_orders = a.get("occurred_orders")
    if occurred_orders is None:  # a schema 1 document: only unresolved instances are known
        if not a.get("count"):
            return None
        who, what = BUYER_EXPERIENCE.get(cls, ("orders", f"had {cls}"))
        return f"{_of(a.get('rate'), who)} {what} and were left so at the end"
    if not occurred_orders:
        return None
    who, what = BUYER_EXPERIENCE.get(cls, ("orders", f"had {cls}"))
    unresolved = a.get("unresolved_orders") or 0
    text = f"{_of(a.get('occurred_rate'), who)} ({occurred_orders:,}) {what}"
    repair = a.get("repair_s") or {}
    median = repair.get("median")
    after = f", median after {fmt_d(median)}" if median is not None else ", median not reached"
    if not unresolved:
        text += ("; it was repaired" if occurred_orders == 1 else "; all were repaired") + after
    elif unresolved == occurred_orders:
        text += ("; it was" if occurred_orders == 1 else "; all were") + " still unresolved at the end"
    else:
        fixed = occurred_orders - unresolved
        text += (f"; {fixed:,} {'was' if fixed == 1 else 'were'} repaired{after}; {unresolved:,} "
                 f"({_of(a.get('unresolved_rate'), who)}) {'was' if unresolved == 1 else 'were'} still unresolved at the end")
    return text


def _rate_ci(rate: float | None, ci: Sequence[float] | None) -> str:
    if ci is None:
        return format_rate(rate)
    return f"{format_rate(rate)} [{format_rate(ci[0])}, {format_rate(ci[1])}]"


def _repair_cell(repair: dict[str, Any] | None, key: str) -> str:
    if not repair:
        return "—"
    value = repair.get(key)
    return human_duration(value) if value is not None else "not reached"


_WIDE_COLUMNS = ("occurred", "occurred rate [95% CI]", "unresolved", "unresolved rate [95% CI]", "repaired",
                 "repair p50", "repair p99", "held (¥, total)")
_COMPACT_COLUMNS = ("occurred", "occurred rate", "unresolved", "unresolved rate", "repair p50", "held (¥, total)")
_HEADERS = {"occurred": "occurred\n(orders)", "unresolved": "unresolved\n(orders)",
            "occurred rate [95% CI]": "occurred rate\n[95% CI]", "unresolved rate [95% CI]": "unresolved rate\n[95% CI]",
            "occurred rate": "occurred\nrate", "unresolved rate": "unresolved\nrate",
            "repaired": "repaired\nby end", "repair p50": "repair p50\n(KM)", "repair p99": "repair p99\n(KM)",
            "held (¥, total)": "held at end\n(¥, total)"}
_WIDE_TABLE = 160  # characters the wide table needs


def summary_table(doc: dict[str, Any], compact: bool = False) -> "Table":
    """One row per anomaly class: orders where it occurred and where it was left unresolved, each with its
    rate per order and 95% interval, the share repaired, Kaplan–Meier time to repair, money held.

    ``compact`` drops the intervals and p99 to fit an 80-column terminal.
    """
    from rich import box
    from rich.table import Table

    n_rep = doc.get("replications") or 0
    over = f" over {n_rep} replications" if n_rep > 1 else ""
    title = f"anomalies in {doc.get('orders', 0):,} orders{over}"
    extra = doc.get("orders_without_creation") or 0
    if extra:
        title += (f" and {extra:,} charged without an order (rates are shares of the "
                  f"{doc.get('orders', 0) + extra:,} together)")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("anomaly", no_wrap=True)
    columns = _COMPACT_COLUMNS if compact else _WIDE_COLUMNS
    for name in columns:
        table.add_column(_HEADERS.get(name, name), justify="right", no_wrap=True)
    anomalies = doc.get("anomalies") or {}
    for cls in [c for c in ANOMALY_CLASSES if c in anomalies] + [c for c in anomalies if c not in ANOMALY_CLASSES]:
        a = anomalies[cls]
        repair = a.get("repair_s")
        share = (repair or {}).get("repaired_share")
        cells = {
            "occurred": f"{a.get('occurred_orders', 0):,}",
            "occurred rate [95% CI]": _rate_ci(a.get("occurred_rate"), a.get("occurred_ci95")),
            "occurred rate": format_rate(a.get("occurred_rate")),
            "unresolved": f"{a.get('unresolved_orders', 0):,}",
            "unresolved rate [95% CI]": _rate_ci(a.get("unresolved_rate"), a.get("unresolved_ci95")),
            "unresolved rate": format_rate(a.get("unresolved_rate")),
            "repaired": "—" if share is None else f"{share:.0%}",
            "repair p50": _repair_cell(repair, "median"),
            "repair p99": _repair_cell(repair, "p99"),
            "held (¥, total)": _money(a.get("amount") or 0.0),
        }
        if a.get("observable") is False:  # the histories could not decide it: its zeros mean "not known"
            table.add_row(cls, "not observable", *("—" for _ in columns[1:]), style="dim")
            continue
        quiet = not a.get("occurred_orders")
        table.add_row(cls, *(cells[c] for c in columns), style="dim" if quiet else None)
    methods = sorted({a.get("occurred_ci_method") for a in anomalies.values()} |
                     {a.get("unresolved_ci_method") for a in anomalies.values()} - {None})
    total = " (totals over all replications)" if n_rep > 1 else ""
    table.caption = (f"occurred / unresolved: orders where the class arose / was still open at the end{total}; rates: "
                     "share of counted orders; repaired: share of instances repaired by the end; repair p50/p99: "
                     "Kaplan–Meier time to repair, open instances censored at the end; held: CNY held by unresolved "
                     f"instances at the end{', summed over replications' if n_rep > 1 else ''}. "
                     f"95% CIs: {', '.join(methods) or 'none'} (docs/results.md).")
    table.caption_justify = "left"
    return table


# metric -> (header with unit, how replications are combined)
_METRIC_HEADERS = {"utilization": ("util\n(share busy)", "mean"), "wait_mean_s": ("wait mean\n(time)", "mean"),
                   "wait_p99_s": ("wait p99\n(time)", "mean"), "queue_mean": ("queue\n(requests)", "mean"),
                   "timeouts": ("timeouts\n(requests)", "total"), "served": ("served\n(requests)", "mean"),
                   "busy_mean": ("busy\n(workers)", "mean"), "rejected": ("queue full\n(requests)", "mean"),
                   "shed": ("shed 503\n(requests)", "mean"), "dropped": ("dropped\n(requests)", "mean"),
                   "goodput_per_s": ("goodput\n(pays/s)", "mean"), "offered_per_s": ("offered\n(pays/s)", "mean"),
                   "create_failed": ("create failed\n(orders)", "mean"), "resends": ("re-sent\n(requests)", "mean")}


def _metric_cell(name: str, v: Any) -> str:
    if v is None:
        return "—"
    if not _is_number(v):
        return str(v)
    if name.endswith("_per_s"):  # a rate, not a duration
        return f"{v:,.2f}/s"
    if name.endswith("_s"):
        return human_duration(v)
    if name == "utilization":
        return f"{v:.0%}" if v >= 0.01 or v == 0 else f"{v:.2%}"
    if float(v).is_integer() or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.2g}"


def _metrics_table(metrics: dict[str, Any], replications: int = 1) -> "Table":
    from rich import box
    from rich.table import Table

    columns = list(dict.fromkeys(k for m in metrics.values() if isinstance(m, dict) for k in m))
    several = replications > 1
    title = "capacity-limited actors" + (f" ({replications} replications: mean/rep = mean of the replications, "
                                         "total = summed over them)" if several else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("actor", no_wrap=True)
    for c in columns:
        header, how = _METRIC_HEADERS.get(c, (c, "mean"))
        if several:
            header += "\ntotal" if how == "total" else "\nmean/rep"
        table.add_column(header, justify="right", no_wrap=True)
    for actor, m in metrics.items():
        if not isinstance(m, dict):
            continue
        table.add_row(actor, *(_metric_cell(c, m.get(c)) for c in columns))
    return table


def _mean_count(m: dict[str, Any]) -> Callable[[str], str]:
    """A formatter of ``m``'s counts (means per replication): whole numbers bare, others to one decimal."""
    def n(key: str) -> str:
        v = m.get(key) or 0
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    return n


def after_sales_line(a: dict[str, Any]) -> str:
    """The after-sales metrics (seed 003; means per replication) as one sentence."""
    n = _mean_count(a)

    fen = a.get("refunded_and_shipped_fen") or 0
    return (f"after-sales (mean per replication): {n('requested')} requests, {n('accepted')} refunded "
            f"({n('defect_refunds')} for a defect), refused {n('refused_shipped')} as shipped, "
            f"{n('refused_declined')} by the merchant, {n('refused_no_defect')} without a defect; "
            f"{n('complaints')} complaints; {n('refunded_and_shipped')} refunded and shipped "
            f"(¥{fen / 100:,.2f}, the merchant's loss)")


def bnpl_unpaid_line(m: dict[str, Any]) -> str:
    """The pay-after-use agreements unpaid at the end after a failed deduction (means per replication),
    split by what their buyers' accounts hold then, as one sentence."""
    n = _mean_count(m)

    fen = m.get("unpaid_fen") or 0
    return (f"pay-after-use agreements unpaid at the end after a failed deduction (mean per replication): "
            f"{n('unpaid')} (¥{fen / 100:,.2f}); their buyers' accounts then: {n('collectable')} hold the amount "
            f"on the methods the provider deducts from (one more attempt would collect it), {n('top_up_coming')} "
            f"short with a top-up on its way, {n('short')} short on every method with no top-up coming")


def support_line(m: dict[str, Any]) -> str:
    """The platform customer service's tickets (means per replication) as one sentence."""
    n = _mean_count(m)

    return (f"customer service (mean per replication): {n('tickets')} tickets from buyers charged for an order "
            f"that did not account for it; agents refunded {n('refunded')}, reversed {n('reversed')} debits on "
            f"closed trades, filled in {n('filled_in')} orders, and found {n('nothing')} already put right "
            f"(the agents' queue: the support row of the metrics)" + _escalations(n, m))


def _escalations(n, m: dict[str, Any]) -> str:
    if "escalations" not in m:
        return ""
    return (f"; {n('escalations')} after-sales escalations of a refused cancel: {n('escalations_refunded')} "
            f"cancelled and refunded, {n('escalations_shipped')} found shipped by the time an agent ruled, "
            f"{n('escalations_not_upheld')} not upheld, {n('escalations_moot')} put right meanwhile")


def notify_outages_line(m: dict[str, Any]) -> str:
    """The notification endpoint's outages (means per replication) as one sentence."""
    n = _mean_count(m)

    return (f"notification endpoint outages (mean per replication): {n('outages_in_window')} began in the "
            f"measurement window, down {100 * (m.get('down_fraction_window') or 0):.1f}% of it "
            f"({n('outages')} outages, down {100 * (m.get('down_fraction') or 0):.1f}% of the whole run); "
            f"{n('attempts_refused')} delivery attempts for the window's orders met it down")


def merchant_batch_line(m: dict[str, Any]) -> str:
    """The batch merchants' finish jobs (means per replication, the whole run) as one sentence."""
    n = _mean_count(m)

    return (f"batch merchants' finish jobs (mean per replication, whole run): {n('runs')} runs, "
            f"{n('skipped_paused')} skipped while the big-promotion plan paused them (merchant.batch_paused), "
            f"{n('skipped_running')} skipped because the previous run still ran")


SENTENCE_METRICS = {"after_sales": after_sales_line, "bnpl_unpaid": bnpl_unpaid_line, "support_tickets": support_line,
                    "notify_outages": notify_outages_line, "merchant_batch": merchant_batch_line}


def sentence_metrics(metrics: dict[str, Any]) -> list[str]:
    """Pop the metrics told as sentences (after-sales, unpaid pay-after-use agreements) from ``metrics``
    and return their sentences, in a fixed order."""
    lines = []
    for key, line in SENTENCE_METRICS.items():
        m = metrics.pop(key, None)
        if isinstance(m, dict) and m:
            lines.append(line(m))
    return lines


def print_summary(doc: dict[str, Any], console: "Console | None" = None) -> None:
    """The summary table (and the metrics table when present) on ``console``."""
    from rich.console import Console

    if console is None:  # piped output: wide enough for the table, not the 80-column fallback
        console = Console() if sys.stdout.isatty() else Console(width=_WIDE_TABLE)
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
    anomalies = doc.get("anomalies") or {}
    lines = [buyer_sentence(c, anomalies[c]) for c in sorted(anomalies, key=lambda c: -(anomalies[c].get("occurred_rate") or 0))]
    for line in filter(None, lines):
        console.print(f"{line}.", highlight=False)
    metrics = dict(doc.get("metrics") or {})
    sentences = sentence_metrics(metrics)
    if metrics:
        console.print(_metrics_table(metrics, doc.get("replications") or 1))
    for line in sentences:
        console.print(line, highlight=False)
    states = doc.get("end_states") or {}
    if states:
        console.print("end states: " + ", ".join(f"{k} {v:,}" for k, v in sorted(states.items(), key=lambda kv: -kv[1])))

