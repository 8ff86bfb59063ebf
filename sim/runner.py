"""Replications and sweeps: run independent, seeded tasks locally or on a Dask cluster.

Every task is a pure function of its arguments (a scenario carries its seed; a replication index
selects independent streams), so the results are identical whether they run in this process, a local
process pool or on Dask workers — only the order in which they finish differs, and results are
always assembled by task index.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sim.errors import ConfigError
from sim.scenario import Scenario

Task = tuple[Callable[..., Any], tuple]


def _call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


def execute(tasks: list[Task], jobs: int = 1, dask: str | None = None) -> Iterator[tuple[int, Any]]:
    """Run ``tasks``; yield ``(index, result)`` as each finishes (any order)."""
    if dask:
        yield from _execute_dask(tasks, dask)
        return
    if jobs <= 1 or len(tasks) <= 1:
        for i, (fn, args) in enumerate(tasks):
            yield i, fn(*args)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = {pool.submit(_call, fn, args): i for i, (fn, args) in enumerate(tasks)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _execute_dask(tasks: list[Task], address: str) -> Iterator[tuple[int, Any]]:
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise ConfigError("--dask needs the optional extra: pip install 'checkout-chaos[dask]'") from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--dask {address}: cannot reach the scheduler ({exc})") from None
    try:
        futures = [client.submit(_call, fn, args, pure=False) for fn, args in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in dask_completed(futures):
            yield index[fut.key], fut.result()
    finally:
        client.close()


@contextmanager
def local_cluster(workers: int) -> Iterator[str]:
    """A Dask ``LocalCluster`` of ``workers`` single-threaded worker processes on loopback; yields its address.

    What ``simulate --dask-workers N`` runs on: the same tasks as ``--dask ADDRESS``, with a cluster
    this process starts and stops (no dashboard, scheduler bound to 127.0.0.1).
    """
    if workers < 1:
        raise ConfigError(f"--dask-workers: expected a positive integer, found {workers}")
    try:
        from distributed import LocalCluster
    except ImportError:
        raise ConfigError("--dask-workers needs the optional extra: pip install 'checkout-chaos[dask]'") from None
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster:
        yield cluster.scheduler_address


def progress_bar(total: int, label: str, enabled: bool = True):
    """A rich progress bar on stderr: done/total, rate and time left."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False, disable=not enabled,
    )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`replicate`: carries the replications that had finished, ``(index, result)``."""

    def __init__(self, finished: list[tuple[int, Any]], planned: int, started: float | None = None) -> None:
        super().__init__()
        self.finished, self.planned, self.started = finished, planned, started


def replicate(scenario: Scenario, replications: int | None = None, jobs: int = 1, dask: str | None = None,
              progress: bool = True, label: str | None = None) -> list[Any]:
    """Run the scenario's replications; results in replication order.

    Ctrl-C raises :class:`Interrupted` (a ``KeyboardInterrupt``) holding the finished replications.
    """
    n = replications or scenario.run.replications
    out: list[Any] = [None] * n
    started = time.time()
    try:
        return _replicate(scenario, n, out, jobs, dask, progress, label)
    except KeyboardInterrupt:
        raise Interrupted([(i, r) for i, r in enumerate(out) if r is not None], n, started) from None


def _replicate(scenario: Scenario, n: int, out: list[Any], jobs: int, dask: str | None, progress: bool,
               label: str | None) -> list[Any]:
    from sim.model.model import run_replication

    with progress_bar(n, label or "replications", progress) as bar:
        task = bar.add_task(label or (scenario.name or "simulate"), total=n)
        if (jobs <= 1 or n == 1) and not dask:
            # In this process: advance the bar within each replication too (a long single run
            # would otherwise sit at 0 until it ends).
            for i in range(n):
                out[i] = run_replication(scenario, i, progress=lambda f, i=i: bar.update(task, completed=i + f))
            return out
        tasks: list[Task] = [(run_replication, (scenario, i)) for i in range(n)]
        for i, result in execute(tasks, jobs, dask):
            out[i] = result
            bar.advance(task)
    return out


def simulate(scenario: Scenario, replications: int | None = None, jobs: int = 1, dask: str | None = None,
             progress: bool = True, command: list[str] | None = None, kind: str = "simulation") -> dict:
    """Replications of ``scenario`` pooled into one results document (docs/results.md)."""
    from sim.results import run_info

    started = time.time()
    reps = replicate(scenario, replications, jobs, dask, progress)
    doc = pool(scenario, reps, kind)
    doc["run_info"] = run_info(started, command if command is not None else sys.argv)
    doc["run_info"]["jobs"] = jobs
    return doc


def pool(scenario: Scenario, reps: list[Any], kind: str = "simulation") -> dict:
    """The results document (docs/results.md) of a scenario's replications, without ``run_info``.

    Its bytes depend only on the scenario and its seed (replications in replication order).
    """
    from sim.scenario import fault_spans
    from sim.results import build_results

    run = scenario.run
    return build_results(
        kind,
        [r.summary for r in reps],
        scenario=scenario.resolved(),
        scenario_name=scenario.name,
        seed=run.seed,
        metrics=[r.metrics for r in reps],
        faults=fault_spans(scenario),
        horizon_s=run.horizon,
        warmup_s=run.warmup,
        end_s=run.horizon + run.drain,
        extra={"orders_created": sum(r.orders_created for r in reps),
               "ledger_total_fen": sum(r.ledger_total for r in reps)},
    )


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))

