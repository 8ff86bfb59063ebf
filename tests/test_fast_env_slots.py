"""FastEnvironment keeps far entries in slots (sim/model/world.py): the order in which it runs them must
be the one heap's, eid for eid, whatever mix of near, far, tied and slot-edge times is scheduled and
however the clock is run (in one go, in steps, or through SimPy's own step)."""

from __future__ import annotations

import random

import pytest
import simpy

from sim.model.world import _SLOT, Answer, FastEnvironment

DELAYS = (0.0, 1e-9, 0.5, 3.0, 63.999, 64.0, 64.0001, 128.0, 500.0, 3_600.0, 86_400.0, 3 * 86_400.0)


def _program(env: FastEnvironment, seed: int, n: int = 4_000) -> list[tuple[float, int]]:
    """Callbacks and processes that schedule more of each other with random delays; what ran, when."""
    rng = random.Random(seed)
    ran: list[tuple[float, int]] = []
    count = [0]

    def delay() -> float:
        d = rng.choice(DELAYS) if rng.random() < 0.5 else rng.expovariate(1 / rng.choice((1.0, 60.0, 7_200.0)))
        return (env.now // _SLOT + rng.randint(1, 3)) * _SLOT - env.now if rng.random() < 0.05 else d  # slot edges

    def callback(label: int):
        def fn() -> None:
            ran.append((env.now, label))
            spawn()
        return fn

    def proc(label: int):
        answer = Answer(env)
        env.call_at(delay(), lambda: answer.settle(label))
        yield env.timeout(delay())
        ran.append((env.now, -label))
        value = yield answer
        ran.append((env.now, value))
        spawn()

    def spawn() -> None:
        for _ in range(rng.choice((0, 1, 2, 2))):
            if count[0] >= n:
                return
            count[0] += 1
            u = rng.random()
            if u < 0.3:
                env.process(proc(count[0]))
            elif u < 0.4:  # SimPy's own Timeout: queued by SimPy into the heap, whatever its delay
                simpy.Timeout(env, delay()).callbacks.append(lambda _ev, fn=callback(count[0]): fn())
            else:
                env.call_at(delay(), callback(count[0]))

    for _ in range(20):
        spawn()
    return ran


def _one_heap() -> FastEnvironment:
    env = FastEnvironment()
    env._edge = float("inf")  # no slots: every entry in the heap, as before slots existed
    return env


@pytest.mark.parametrize("seed", range(6))
def test_slots_run_the_entries_in_the_one_heaps_order(seed):
    ref_env, env = _one_heap(), FastEnvironment()
    ref, got = _program(ref_env, seed), _program(env, seed)
    ref_env.run(until=10 * 86_400.0)
    env.run(until=10 * 86_400.0)
    assert len(ref) > 3_000
    assert got == ref
    assert env._slots == {} or min(e[0] for s in env._slots.values() for e in s) >= 10 * 86_400.0


def test_running_the_clock_in_steps_changes_nothing():
    ref_env, env = _one_heap(), FastEnvironment()
    ref, got = _program(ref_env, 11), _program(env, 11)
    ref_env.run(until=5 * 86_400.0)
    for k in range(1, 101):  # as run_replication does with a progress bar
        env.run(until=5 * 86_400.0 * k / 100)
    assert got == ref and env.now == ref_env.now


def test_simpys_own_step_sees_the_waiting_entries():
    ref_env, env = _one_heap(), FastEnvironment()
    ref, got = _program(ref_env, 3, n=600), _program(env, 3, n=600)
    env.run(until=2_000.0)
    assert env._slot_keys, "the test needs entries waiting in slots"
    while env.peek() < 4 * 86_400.0:  # SimPy's step after the fast loop: slots opened first
        env.step()
    ref_env.run(until=env.now + 1e-6)
    assert got == ref[: len(got)] and len(got) > 500
