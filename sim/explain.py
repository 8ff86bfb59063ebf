"""What drives a rate: a Morris screening of a scenario's numeric inputs against each anomaly's rate.

A design review asks "what do we fix first". :func:`explain` answers it for one scenario: it picks the
scenario's numeric inputs (probabilities, the medians of its latency distributions, TTLs, timeouts and
intervals, or the ``--vary key=lo..hi`` ranges given), samples them with the Morris method
(SALib: ``r`` one-at-a-time trajectories through a ``levels``-level grid of the inputs' ranges), runs
the simulation at every sampled point and ranks the inputs, per anomaly class, by Morris ``mu*``: the
mean absolute change in the class's rate when the input moves across its whole range, other inputs
held where the trajectory is. ``mu*`` comes with a 95% bootstrap interval (SALib's resampling of the
elementary effects) and ``sigma`` (the effects' spread: interaction or non-linearity).

Every point runs on the scenario's seed — common random numbers: each point meets the same buyers,
arrivals and latency draws, so the difference between two neighbouring points is the input's doing,
not noise. The sample, the bootstrap and so the document depend only on the scenario, its seed and
the options (same seed, same bytes outside ``run_info``).

Each input is moved on a unit scale mapped to its range: linearly for probabilities and counts,
logarithmically for durations and distributions (``0.5x .. 2x`` by default, a latency distribution
scaled as a whole, keeping its shape). A rate is ``per order``: ``occurred`` counts every instance
(repaired ones too), ``unresolved`` only those still open at the end of observation.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sim.errors import ConfigError
from sim.scenario import Dist, Scenario, parse_duration, parse_value
from sim.vocabulary import ANOMALY_CLASSES

__all__ = ["Input", "DEFAULT_KEYS", "MEASURES", "default_inputs", "parse_vary", "plan_points", "explain",
           "point_rates", "draw_chart", "EXPLAIN_FILE", "CHART_STEM"]

EXPLAIN_FILE = "explain.json"
CHART_STEM = "explain"
MEASURES = ("occurred", "unresolved")
SCHEMA_VERSION = 1

# The default screening set (those the scenario leaves at 0 or switches off are skipped): the buyer,
# the timers and intervals under review, each actor's latency, and the failure probabilities.
DEFAULT_KEYS = (
    "user.pay_delay", "user.abandon_probability", "user.retry_probability", "user.retry_delay",
    "user.poll_interval", "user.cancel_probability", "user.wallet_balance", "user.top_up_delay",
    "app.request_timeout",
    "order_service.order_ttl", "order_service.sweep_interval",
    "order_service.notify_outage_every", "order_service.notify_outage_duration",
    "gateway.timeout", "gateway.service_time", "gateway.notify_latency", "gateway.notify_loss",
    "gateway.notify_duplicate",
    "bank.latency", "bank.decline_probability", "bank.risk_block_probability", "bank.risk_hold_probability",
    "bank.risk_hold_duration", "bank.response_loss",
    "merchant.ship_time", "merchant.delivery_time", "merchant.bnpl_finish_delay", "merchant.bnpl_finish_failure",
    "user.after_sales_probability", "user.after_sales_delay",
    "support.complaint_probability", "support.complaint_delay", "support.handle_time",
    "support.escalate_probability", "support.escalation_delay",
    "bnpl.sync_lag", "bnpl.deduction_failure", "bnpl.compensation_after", "bnpl.user_repay_delay",
    "reconciliation.interval", "reconciliation.statement_delay",
)


@dataclass(frozen=True)
class Input:
    """One screened input: a scenario key, its range, and how a unit-scale value becomes a scenario value."""

    key: str
    kind: str  # "probability" | "duration" | "dist" | "int" | "number"
    base: Any  # the scenario's value as written (resolved form)
    lo: float  # ends of the range: seconds, a probability, a count, or a factor on the distribution
    hi: float
    log: bool  # log scale between lo and hi (durations, distributions)

    def at(self, u: float) -> float:
        """The input's value (seconds, probability, count or factor) at ``u`` in [0, 1]."""
        if self.log and self.lo > 0:
            v = self.lo * (self.hi / self.lo) ** u
        else:
            v = self.lo + (self.hi - self.lo) * u
        return float(round(v)) if self.kind == "int" else v

    def override(self, u: float) -> Any:
        """The ``with_overrides`` value for ``u``."""
        v = self.at(u)
        if self.kind == "duration":
            return nice_duration(v)
        if self.kind == "dist":
            from sim.scenario import _make_dist

            return _scaled_dist(_make_dist(self.base, _dist_unit(self.base)), v)
        if self.kind == "int":
            return int(v)
        return float(f"{v:.4g}")

    def describe(self, v: float) -> str:
        """A value of this input as a reader writes it: ``15m``, ``0.05``, ``median 2m``."""
        if self.kind == "duration":
            return nice_duration(v)
        if self.kind == "dist":
            from sim.scenario import _make_dist

            d = _make_dist(self.base, _dist_unit(self.base))
            typical = _typical(d) * v
            shown = nice_duration(typical) if d.unit == "duration" else f"{typical:.3g}"
            return f"{_typical_name(d)} {shown}"
        if self.kind == "int":
            return str(int(v))
        return f"{v:.3g}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "base": self.base, "lo": self.describe(self.lo),
                "hi": self.describe(self.hi), "scale": "log" if self.log else "linear",
                "range": [self.lo, self.hi]}


def _dist_unit(value: Any) -> str:
    """A distribution as written is of durations (strings like "2m") or of plain numbers (CNY)."""
    if isinstance(value, dict):
        vals = [v for k, v in value.items() if k != "dist"]
        flat = [x for v in vals for x in (v if isinstance(v, list) else [v])]
        return "duration" if any(isinstance(x, str) for x in flat) else "number"
    return "duration" if isinstance(value, str) else "number"


def nice_duration(seconds: float) -> str:
    """A duration to 3 significant digits in its largest whole unit: ``151.2`` -> ``"2.52m"``, ``0.0025``
    -> ``"2.5ms"`` (what the scenario then holds, so the sampled value is readable and exact)."""
    if seconds <= 0:
        return "0s"
    seconds = float(f"{seconds:.4g}")  # 3599.99 is 1h, not 60m
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size:
            return f"{float(f'{seconds / size:.3g}'):g}{unit}"
    return f"{float(f'{seconds * 1000:.3g}'):g}ms"


def _typical(d: Dist) -> float:
    return {"lognormal": lambda: d.p("median"), "constant": lambda: d.p("value"),
            "uniform": lambda: (d.p("low") + d.p("high")) / 2}.get(d.kind, lambda: d.mean)()


def _typical_name(d: Dist) -> str:
    return {"lognormal": "median", "constant": "", "uniform": "mid"}.get(d.kind, "mean").strip() or "value"


def _scaled_dist(d: Dist, factor: float) -> Any:
    """``d`` with every value multiplied by ``factor`` (its shape kept), as a scenario value."""
    fmt = nice_duration if d.unit == "duration" else (lambda x: float(f"{x:.4g}"))
    if d.kind == "constant":
        return fmt(d.p("value") * factor)
    out: dict[str, Any] = {"dist": d.kind}
    for name, v in d.params:
        out[name] = [fmt(x * factor) for x in v] if isinstance(v, tuple) else fmt(v * factor)
    return out


def _node(resolved: dict[str, Any], key: str) -> Any:
    node: Any = resolved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _field_kind(section: str, name: str) -> str | None:
    """What the schema says a key is: probability, duration, dist, int, number (or None: not numeric)."""
    from sim.scenario import Scenario as S

    model = S.model_fields[section].annotation
    f = getattr(model, "model_fields", {}).get(name)
    if f is None:
        return None
    text = repr(f.annotation) + repr(f.metadata)
    if "_probability" in text:
        return "probability"
    if "Dist" in text:
        return "dist"
    if "parse_duration" in text or "_duration_or_off" in text:
        return "duration"
    if f.annotation is int:
        return "int"
    if f.annotation is float:
        return "number"
    return None


def _kind_of(scenario: Scenario, key: str) -> tuple[str, Any]:
    resolved = scenario.resolved()
    parts = key.split(".")
    try:
        base = _node(resolved, key)
    except KeyError:
        from sim.scenario import _suggest

        section = parts[0]
        choices = list(resolved.get(section, {})) if len(parts) == 2 and isinstance(resolved.get(section), dict) else []
        raise ConfigError(f"--vary {key}: unknown key{_suggest(parts[-1], choices)}") from None
    kind = _field_kind(parts[0], parts[1]) if len(parts) == 2 else None
    if kind is None:
        raise ConfigError(f"--vary {key}: expected a numeric input (a probability, duration, distribution, count or "
                          f"number), found {json.dumps(base, ensure_ascii=False)}")
    return kind, base


def _base_value(kind: str, base: Any) -> float | None:
    """The input's current value on its own scale (None: switched off)."""
    if kind == "duration":
        return None if base == "off" else parse_duration(base)
    if kind == "dist":
        return 1.0
    return float(base)


def default_inputs(scenario: Scenario) -> list[Input]:
    """The default screening set for ``scenario``: :data:`DEFAULT_KEYS` it does not leave at 0 or off,
    each over 0.5x .. 2x of its value (probabilities capped at 1; the sweep interval only when the close
    job is a sweep, BNPL inputs only when some buyers pay later, the hold time only when debits are held,
    the outage duration only with outages, customer service only with a desk)."""
    out = []
    for key in DEFAULT_KEYS:
        if key == "order_service.sweep_interval" and scenario.order_service.close_mode != "sweep":
            continue
        if key == "bank.risk_hold_duration" and not scenario.bank.risk_hold_probability:
            continue
        if key.startswith(("bnpl.", "merchant.bnpl_")) and not scenario.user.payment_methods.bnpl:
            continue
        if key == "bnpl.deduction_failure" and scenario.bnpl.deduction_source != "draw":
            continue  # not read: the wallet balance decides a deduction
        if key == "order_service.notify_outage_duration" and scenario.order_service.notify_outage_every is None:
            continue  # no outages
        if key == "user.after_sales_delay" and not scenario.user.after_sales_probability:
            continue  # nobody asks
        if key.startswith("support.") and scenario.support.agents is None:
            continue  # no desk
        if key == "support.escalation_delay" and not (scenario.support.escalate_probability
                                                      and scenario.user.after_sales_probability):
            continue  # nothing is escalated
        kind, base = _kind_of(scenario, key)
        if base == "off":
            continue
        v = _base_value(kind, base)
        if v is None or v == 0:
            continue
        if kind == "dist":
            from sim.scenario import _make_dist

            if _typical(_make_dist(base, _dist_unit(base))) == 0:
                continue
            out.append(Input(key, kind, base, 0.5, 2.0, True))
        elif kind == "probability":
            out.append(Input(key, kind, base, v * 0.5, min(1.0, v * 2.0), False))
        elif kind == "int":
            out.append(Input(key, kind, base, max(0.0, math.floor(v * 0.5)), math.ceil(v * 2.0), False))
        else:
            out.append(Input(key, kind, base, v * 0.5, v * 2.0, kind == "duration"))
    return out


_RANGE_RE = re.compile(r"^\s*(.+?)\s*\.\.\s*(.+?)\s*$")


def parse_vary(scenario: Scenario, spec: str) -> Input:
    """``"order_service.order_ttl=5m..2h"`` -> an :class:`Input`. A distribution's range is written as its
    typical value (median, mean) or as factors: ``user.pay_delay=30s..10m`` or ``user.pay_delay=0.5x..4x``."""
    example = "for example --vary order_service.order_ttl=15m..2h or --vary gateway.notify_loss=0..0.3"
    if "=" not in spec:
        raise ConfigError(f"--vary {spec!r}: expected key.path=low..high, {example}")
    key, raw = (s.strip() for s in spec.split("=", 1))
    m = _RANGE_RE.match(raw)
    if not key or not m:
        raise ConfigError(f"--vary {spec!r}: expected key.path=low..high, {example}")
    kind, base = _kind_of(scenario, key)
    if key == "bnpl.deduction_failure" and scenario.bnpl.deduction_source != "draw":
        raise ConfigError(f"--vary {key}: not read with bnpl.deduction_source = "
                          f"\"{scenario.bnpl.deduction_source}\" (the buyer's balances decide a deduction); vary "
                          "user.wallet_balance or user.top_up_delay instead")
    if kind == "dist" and base == "off":
        raise ConfigError(f"--vary {key}: the scenario has it \"off\"; set it to a distribution first "
                          f"(--set {key}=...), then vary it by factors, e.g. {key}=0.5x..2x")
    texts = m.groups()

    def value(text: str) -> float:
        try:
            if kind == "dist":
                if text.endswith("x"):
                    return float(text[:-1])
                from sim.scenario import _make_dist

                typical = _typical(_make_dist(base, _dist_unit(base)))
                if typical == 0:
                    raise ValueError(f"the distribution's {key} typical value is 0; give factors like 0.5x..2x")
                return (parse_duration(text) if _dist_unit(base) == "duration" else float(text)) / typical
            if kind == "duration":
                return 0.0 if text.strip() == "0" else parse_duration(parse_value(text))
            v = parse_value(text)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"expected a number, found {text!r}")
            if kind == "probability" and not 0 <= v <= 1:
                raise ValueError(f"expected a probability between 0 and 1, found {text!r}")
            if v < 0:
                raise ValueError(f"expected a non-negative value, found {text!r}")
            return float(v)
        except ValueError as exc:
            raise ConfigError(f"--vary {key}: {exc}") from None

    lo, hi = value(texts[0]), value(texts[1])
    if not hi > lo:
        raise ConfigError(f"--vary {key}: expected low < high, found {texts[0]}..{texts[1]}")
    log = kind != "probability" and lo > 0  # durations, scale factors and capacities act multiplicatively
    return Input(key, kind, base, lo, hi, log)


# --------------------------------------------------------------------------------------------------
# The design and the runs


def _problem(inputs: list[Input]) -> dict[str, Any]:
    return {"num_vars": len(inputs), "names": [i.key for i in inputs], "bounds": [[0.0, 1.0]] * len(inputs)}


def plan_points(scenario: Scenario, inputs: list[Input], trajectories: int, levels: int,
                seed: int) -> tuple[Any, list[Scenario]]:
    """The Morris sample (unit scale, one row per point) and every point's scenario, each validated.

    Raises one :class:`ConfigError` listing every input whose range the scenario refuses."""
    from SALib.sample import morris as morris_sample

    if len(inputs) < 2:
        raise ConfigError("explain: a screening needs at least two inputs; give more --vary key=low..high")
    keys = [i.key for i in inputs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"--vary {dupes[0]}: given twice (give each key once)")
    problems = []
    for inp in inputs:
        for u in (0.0, 1.0):
            try:
                scenario.with_overrides({inp.key: inp.override(u)}, source=f"--vary {inp.key}")
            except ConfigError as exc:
                problems.extend(line for line in str(exc).splitlines() if line not in problems)
    if problems:
        raise ConfigError("\n".join(problems))
    X = morris_sample.sample(_problem(inputs), trajectories, num_levels=levels, seed=seed)
    scenarios = []
    for row in X:
        params = {inp.key: inp.override(float(u)) for inp, u in zip(inputs, row)}
        try:
            scenarios.append(scenario.with_overrides(params, source="explain point"))
        except ConfigError as exc:  # a combination invalid only together
            raise ConfigError(f"explain: a sampled point is not a valid scenario ({exc}); narrow the ranges") from None
    return X, scenarios


def point_rates(scenario: Scenario, replications: int) -> dict[str, dict[str, float]]:
    """Run ``replications`` of ``scenario`` (seeded, as ``simulate`` does) and return, per anomaly class,
    the pooled ``occurred`` and ``unresolved`` rates per order, and the orders counted."""
    from sim.model.model import run_replication

    orders = 0
    occurred = {c: 0 for c in ANOMALY_CLASSES}
    unresolved = {c: 0 for c in ANOMALY_CLASSES}
    for r in range(replications):
        summary = run_replication(scenario, r, examples=False).summary
        orders += summary.orders
        for c in ANOMALY_CLASSES:
            st = summary.per_class[c]
            unresolved[c] += st.count  # still open at the end of observation
            occurred[c] += st.count + st.repaired
    return {"orders": orders,
            "occurred": {c: occurred[c] / orders if orders else 0.0 for c in ANOMALY_CLASSES},
            "unresolved": {c: unresolved[c] / orders if orders else 0.0 for c in ANOMALY_CLASSES}}


def explain(scenario: Scenario, inputs: list[Input], *, trajectories: int = 4, levels: int = 4,
            replications: int = 1, jobs: int = 1, dask: str | None = None, resamples: int = 1000,
            progress: bool = True, command: list[str] | None = None,
            on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Screen ``inputs`` of ``scenario``; return the explain document (see the module docstring)."""
    import numpy as np
    from SALib.analyze import morris as morris_analyze

    from sim.results import run_info
    from sim.runner import execute, progress_bar

    started = time.time()
    seed = scenario.run.seed
    X, scenarios = plan_points(scenario, inputs, trajectories, levels, seed)
    if on_start is not None:
        on_start(len(scenarios))
    results: list[dict[str, Any] | None] = [None] * len(scenarios)
    tasks = [(point_rates, (s, replications)) for s in scenarios]
    with progress_bar(len(tasks), "explain", progress) as bar:
        task = bar.add_task(f"explain {scenario.name or ''}".strip(), total=len(tasks))
        for i, res in execute(tasks, jobs, dask):
            results[i] = res
            bar.advance(task)
    problem = _problem(inputs)
    classes: dict[str, Any] = {}
    for cls in ANOMALY_CLASSES:
        entry: dict[str, Any] = {}
        for measure in MEASURES:
            Y = np.array([r[measure][cls] for r in results], dtype=float)  # type: ignore[index]
            if not Y.any():
                entry[measure] = {"mean_rate": 0.0, "max_rate": 0.0, "ranking": []}
                continue
            si = morris_analyze.analyze(problem, X, Y, num_resamples=resamples, conf_level=0.95,
                                        num_levels=levels, seed=seed)
            rows = []
            for j, inp in enumerate(inputs):
                mu_star, conf = float(si["mu_star"][j]), float(si["mu_star_conf"][j])
                mu = float(si["mu"][j])
                rows.append({"key": inp.key, "mu_star": _sig(mu_star),
                             "mu_star_ci95": [_sig(max(0.0, mu_star - conf)), _sig(mu_star + conf)],
                             "mu": _sig(mu), "sigma": _sig(float(si["sigma"][j])),
                             "direction": direction(mu, mu_star)})
            rows.sort(key=lambda r: (-r["mu_star"], r["key"]))
            for rank, row in enumerate(rows, 1):
                row["rank"] = rank
            entry[measure] = {"mean_rate": _sig(float(Y.mean())), "max_rate": _sig(float(Y.max())),
                              "ranking": rows}
        classes[cls] = entry
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "explain",
        "scenario_name": scenario.name,
        "seed": seed,
        "scenario": scenario.resolved(),
        "method": {"name": "morris", "library": "SALib", "trajectories": trajectories, "levels": levels,
                   "points": len(scenarios), "replications_per_point": replications,
                   "runs": len(scenarios) * replications, "common_random_numbers": True,
                   "interval": "95% bootstrap of mu* over the elementary effects", "resamples": resamples,
                   "effect": "mu*: mean |change in the rate per order| as the input moves across its whole range"},
        "measures": {"occurred": "instances that arose (repaired ones too) per counted order",
                     "unresolved": "instances still open at the end of observation per counted order"},
        "inputs": [i.to_dict() for i in inputs],
        "classes": classes,
        "points": [{"params": {inp.key: inp.override(float(u)) for inp, u in zip(inputs, row)},
                    "orders": r["orders"],  # type: ignore[index]
                    "occurred": {c: _sig(v) for c, v in r["occurred"].items() if v},  # type: ignore[index]
                    "unresolved": {c: _sig(v) for c, v in r["unresolved"].items() if v}}  # type: ignore[index]
                   for row, r in zip(X, results)],
    }
    doc["run_info"] = run_info(started, command if command is not None else ["checkout-chaos", "explain"])
    doc["run_info"]["jobs"] = jobs if not dask else None
    return doc


def direction(mu: float, mu_star: float) -> str:
    """``raises`` / ``lowers`` the rate when the input grows (its effects mostly of one sign), else
    ``mixed``; ``none`` when it never moved the rate."""
    if mu_star <= 1e-15:
        return "none"
    if abs(mu) >= 0.8 * mu_star:
        return "raises" if mu > 0 else "lowers"
    return "mixed"


def _sig(x: float) -> float:
    """9 significant digits: the document's bytes do not depend on floating-point noise in the last bits."""
    if not math.isfinite(x):
        return x
    return 0.0 if abs(x) < 1e-15 else float(f"{x:.9g}")


# --------------------------------------------------------------------------------------------------
# The chart


_COLOURS = {"raises": "#c0392b", "lowers": "#2e86c1", "mixed": "#999999", "none": "#dddddd"}


def active_classes(doc: dict[str, Any], measure: str) -> list[str]:
    return [c for c, e in doc["classes"].items() if e[measure]["ranking"]]


def draw_chart(doc: dict[str, Any], out_dir: str | Path, measure: str = "occurred", top: int = 8) -> tuple[Path, Path]:
    """One panel per anomaly class that occurred: its ``top`` inputs by mu* with their 95% intervals.
    Writes ``explain.png`` and ``explain.svg`` in ``out_dir``."""
    import matplotlib.pyplot as plt

    fig = explain_figure(doc, measure, top)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{CHART_STEM}.png", out / f"{CHART_STEM}.svg"
    fig.savefig(png, dpi=110, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png, svg


def explain_figure(doc: dict[str, Any], measure: str = "occurred", top: int = 8) -> Any:
    """The figure of :func:`draw_chart` (also drawn by ``checkout-chaos report`` for an explain.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = active_classes(doc, measure)
    n = max(1, len(classes))
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 0.45 * top * rows + 1.4 * rows + 0.8), squeeze=False)
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    if not classes:
        axes[0][0].text(0.5, 0.5, f"no anomaly {measure} at any sampled point", ha="center", va="center")
    for ax, cls in zip(axes.flat, classes):
        ranking = doc["classes"][cls][measure]["ranking"][:top][::-1]
        names = [r["key"] for r in ranking]
        mu = [r["mu_star"] for r in ranking]
        lo = [r["mu_star"] - r["mu_star_ci95"][0] for r in ranking]
        hi = [r["mu_star_ci95"][1] - r["mu_star"] for r in ranking]
        colours = [_COLOURS[r.get("direction", "mixed")] for r in ranking]
        ax.barh(range(len(names)), mu, xerr=[lo, hi], color=colours, alpha=0.85, ecolor="#333", capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        mean_rate = doc["classes"][cls][measure]["mean_rate"]
        ax.set_title(f"{cls} ({measure}, mean rate {mean_rate:.3g} per order)", fontsize=9)
        ax.set_xlabel("mu*: mean |change in rate per order| over the input's range (95% CI)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlim(left=0)
    m = doc["method"]
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=_COLOURS[d], label=f"{d} the rate as the input grows" if d in ("raises", "lowers")
                              else "mixed (interactions)") for d in ("raises", "lowers", "mixed")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"What drives each anomaly rate — {doc.get('scenario_name') or 'scenario'}: Morris screening, "
                 f"{m['points']} points x {m['replications_per_point']} replication(s), seed {doc['seed']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
