"""The Locust side of a live run: an open-model arrival scheduler playing buyers over HTTP.

Run by ``checkout-chaos load`` (never imported by the harness itself: Locust patches the standard
library with gevent). The run's plan comes from the file named by ``$CHECKOUT_CHAOS_PLAN``
(``loadtests.plan.Plan``).

Each Locust process runs one :class:`Buyers` user — a *scheduler*, not a buyer. It draws the run's
arrival schedule (the same in every process, from the scenario's seed), takes the arrivals of its slot
(``i % slots == worker_index``), and when arrival ``i`` is due it spawns a greenlet that plays buyer
``i`` (``loadtests.buyer.Buyer``) whether or not earlier buyers are done: the arrival rate follows the
scenario's profile, not a user count. All the greenlets share the user's fast HTTP client (its
connection pool has ``plan.connections`` connections). An arrival that starts more than
``plan.late_tolerance`` after it was due is a late start; one that cannot start (``plan.max_in_flight``
buyers already in flight) is dropped; both are counted and reported, and the start lag of every arrival
also goes into Locust's statistics as ``ARRIVAL start lag``.

Handshake with the orchestrator, through files in ``plan.client_dir``: the scheduler writes
``ready-<slot>`` when it is up, waits for ``go.json`` (the load epoch: wall time of scenario ``t = 0``),
plays its arrivals, lets the buyers still in flight run through the drain, stops them at the end of
observation, flushes its history (``client-<slot>.jsonl``) and writes ``done-<slot>.json`` (its
counters).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
from locust import FastHttpUser, constant, task

from sim.scenario import scenario_from_dict

from loadtests.adapter import Adapter
from loadtests.buyer import (BROKEN, ERROR_KINDS, MALFORMED_STATUS, OK, REFUSED, SERVER_ERROR, TIMEOUT, UNREACHABLE,
                             Buyer, Context, Reply)
from loadtests.history import HistoryWriter
from loadtests.plan import PLAN_ENV, Plan, arrival_times, read_plan, write_json_atomic

log = logging.getLogger("checkout_chaos.locust")

if PLAN_ENV not in os.environ:
    raise SystemExit(f"{__file__}: run it through 'checkout-chaos load' (it needs ${PLAN_ENV}, the run's plan file)")
PLAN: Plan = read_plan(os.environ[PLAN_ENV])
PROFILE_ENV = "CHECKOUT_CHAOS_PROFILE"  # a path prefix: profile the scheduler's process into PREFIX.<pid>


class GeventTransport:
    """``loadtests.buyer.Transport`` over Locust's FastHttpSession (requests show in Locust's stats)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def send(self, method: str, url: str, body: Any, timeout: float, name: str) -> Reply:
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            with self.session.request(method, url, name=name, json=body, catch_response=True) as resp:
                reply = _classify(resp, timer)
                if reply.kind in ERROR_KINDS or reply.status in MALFORMED_STATUS:
                    resp.failure(reply.error or f"HTTP {reply.status}")
                else:
                    resp.success()
                return reply
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return Reply(TIMEOUT, error="timeout")
        finally:
            timer.close()


def _classify(resp: Any, timer: gevent.Timeout) -> Reply:
    status = resp.status_code or 0
    if not status:
        err = getattr(resp, "error", None)
        while getattr(err, "original", None) is not None:  # geventhttpclient wraps the cause
            err = err.original
        if err is timer or isinstance(err, gevent.Timeout):
            return Reply(TIMEOUT, error="timeout")
        if isinstance(err, ConnectionRefusedError):
            return Reply(UNREACHABLE, error=f"{err.__class__.__name__}: {err}")
        return Reply(BROKEN, error=f"{err.__class__.__name__}: {err}" if err else "no answer")
    try:
        body = json.loads(resp.content) if resp.content else None
    except ValueError:
        body = None
    if status < 300:
        return Reply(OK, status, body)
    if status < 500:
        return Reply(REFUSED, status, body, (body or {}).get("code") if isinstance(body, dict) else None)
    return Reply(SERVER_ERROR, status, body, f"HTTP {status}")


def _profiles(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Chinese buyer data (name, mobile number, address) from Faker's zh_CN locale, seeded."""
    from faker import Faker

    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    return [(fake.name(), fake.phone_number(), fake.address().replace("\n", " ")) for _ in range(max(1, n))]


_claimed = False  # one scheduler per process, whatever the user count


class Buyers(FastHttpUser):
    """The arrival scheduler of one Locust process (see the module docstring)."""

    host = PLAN.checkout_url
    concurrency = PLAN.connections
    network_timeout = 60.0
    connection_timeout = 10.0
    wait_time = constant(1)

    def on_start(self) -> None:
        global _claimed
        self.idle = _claimed
        _claimed = True

    @task
    def replay(self) -> None:
        if self.idle:
            gevent.sleep(3600)
            return
        self.idle = True  # the task runs once; afterwards the user idles until Locust quits
        profile = os.environ.get(PROFILE_ENV)
        profiler = None
        if profile:  # where this process's time goes: cProfile over every greenlet of the run
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            self._replay()
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("the arrival scheduler failed")
            Path(PLAN.client_dir, f"failed-{os.getpid()}.txt").write_text(traceback.format_exc())
            raise
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{profile}.{os.getpid()}")

    def _replay(self) -> None:
        plan = PLAN
        runner = self.environment.runner
        slot = max(0, getattr(runner, "worker_index", 0))
        client_dir = Path(plan.client_dir)
        scenario = scenario_from_dict(plan.scenario, "plan")
        writer = HistoryWriter(client_dir / f"client-{slot}.jsonl")
        profiles = _profiles(plan.profiles, scenario.run.seed + slot)
        write_json_atomic(client_dir / f"ready-{slot}", {"pid": os.getpid(), "slot": slot})
        go = client_dir / "go.json"
        while not go.exists():
            gevent.sleep(0.01)
        epoch = json.loads(go.read_text())["load_epoch"]
        ctx = Context(scenario, Adapter(plan.adapter), GeventTransport(self.client), writer.emit,
                      checkout_url=plan.checkout_url, provider_url=plan.provider_url, time_scale=plan.time_scale,
                      load_epoch=epoch, run_id=plan.run_id, seed=scenario.run.seed, profiles=profiles,
                      synthesize_orders=plan.synthesize_orders)
        c = ctx.counters
        fire = self.environment.events.request.fire
        tolerance = plan.late_tolerance

        def flow(index: int, due: float) -> None:
            lag = time.time() - due
            c.started += 1
            c.add_lag(lag)
            if lag > tolerance:
                c.late += 1
            fire(request_type="ARRIVAL", name="start lag", response_time=lag * 1000.0, response_length=0,
                 exception=None, context={})
            try:
                buyer = Buyer(ctx, index, due)
                buyer.run()
                c.completed += 1
                buyer.watch()
            except gevent.GreenletExit:
                raise
            except Exception:
                c.flow_errors += 1
                if c.flow_errors <= 5:
                    log.exception("buyer %s failed", index)

        def flusher() -> None:
            while True:
                gevent.sleep(0.5)
                writer.flush()

        flushing = gevent.spawn(flusher)
        pool = gevent.pool.Pool(plan.max_in_flight)
        k = plan.time_scale
        slots = plan.slots
        for i, t in enumerate(arrival_times(scenario.load, plan.horizon, scenario.run.seed, plan.max_orders)):
            if i % slots != slot:
                continue
            c.planned += 1
            due = epoch + t / k
            left = due - time.time()
            if left > 0:
                gevent.sleep(left)
            if pool.full():
                c.dropped += 1
                continue
            pool.spawn(flow, i, due)
        left = epoch + plan.end / k - time.time()
        if left > 0:
            gevent.sleep(left)  # the drain: buyers still in flight go on
        in_flight = len(pool)
        pool.kill(block=True, timeout=5)
        flushing.kill(block=True)
        writer.close()
        done = {k_: v for k_, v in c.__dict__.items()}
        done.update(slot=slot, pid=os.getpid(), in_flight_at_end=in_flight, events=writer.written)
        write_json_atomic(client_dir / f"done-{slot}.json", done)
