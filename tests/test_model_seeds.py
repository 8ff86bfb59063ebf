"""The model's fast seed derivation gives numpy's SeedSequence values exactly (same seed, same draws)."""

from __future__ import annotations

import random
import zlib

import numpy as np

from sim.model.world import SpawnSeeds


def _numpy_seed(entropy: int, key: tuple[int, ...]) -> int:
    ss = np.random.SeedSequence(entropy=entropy, spawn_key=key)
    return int.from_bytes(ss.generate_state(2, np.uint32).tobytes(), "little")


def test_spawn_seeds_equal_numpy_seed_sequence():
    r = random.Random(17)
    for _ in range(400):
        entropy = r.choice([0, 1, 11, 20261111, r.getrandbits(32), r.getrandbits(64), r.getrandbits(140)])
        replication = r.choice([0, 1, 7, r.getrandbits(16), r.getrandbits(40)])
        tail = r.choice([0, 1, 2, r.getrandbits(32)])
        seeds = SpawnSeeds(entropy, (replication,), tail)
        for _ in range(5):
            word = zlib.crc32(f"r{replication}-o{r.randrange(10**7)}".encode())
            assert seeds.seed(word) == _numpy_seed(entropy, (replication, word, tail)), (entropy, replication, word)


def test_spawn_seeds_with_a_longer_prefix():
    seeds = SpawnSeeds(5, (3, 2**33 + 5), 1)
    assert seeds.seed(99) == _numpy_seed(5, (3, 2**33 + 5, 99, 1))


def test_a_parked_order_stream_goes_on_with_the_same_draws():
    from sim.model.world import World
    from sim.scenario import Scenario

    w = World(Scenario(), 0, lambda ev: None)
    for k, first in enumerate(([], ["random"], ["gauss"], ["gauss", "gauss"], ["choice"], ["expo", "gauss"])):
        order = f"r0-o{k}"
        assert w.new_order_rng(order)
        ref = random.Random()  # a copy of the order's stream, never parked
        ref.setstate(w.order_rng(order).getstate())
        for name in first:
            for r in (w.order_rng(order), ref):
                {"random": r.random, "gauss": lambda r=r: r.gauss(0.0, 1.0), "choice": lambda r=r: r.choice(range(7)),
                 "expo": lambda r=r: r.expovariate(2.0)}[name]()
        w.park_order_rng(order)
        assert w.order_rngs[order].__class__ is tuple  # parked: no Mersenne Twister kept
        after = w.order_rng(order)
        assert after.getstate() == ref.getstate(), first  # rebuilt exactly: every word, the position, gauss_next
        assert [after.gauss(0.0, 1.0) for _ in range(3)] + [after.random() for _ in range(700)] == \
               [ref.gauss(0.0, 1.0) for _ in range(3)] + [ref.random() for _ in range(700)], first


def test_parking_after_one_known_draw_needs_no_getstate():
    from sim.model.world import World
    from sim.scenario import Scenario, _make_dist

    w = World(Scenario(), 0, lambda ev: None)
    dists = [_make_dist({"dist": "lognormal", "median": "2h", "p99": "30h"}, "duration"),
             _make_dist({"dist": "exponential", "mean": "60s"}, "duration"),
             _make_dist({"dist": "exponential", "mean": "0s"}, "duration"),
             _make_dist({"dist": "uniform", "low": "1s", "high": "9s"}, "duration"),
             _make_dist("5s", "duration")]
    for k, dist in enumerate(dists):
        order = f"r0-o{100 + k}"
        ref = random.Random()
        ref.setstate(w.order_rng(order).getstate())
        assert dist.draw(w.order_rng(order)) == dist.draw(ref)
        w.park_order_rng(order, dist)
        assert w.order_rngs[order].__class__ is tuple
        after = w.order_rng(order)
        assert after.getstate() == ref.getstate(), dist.kind
        assert [dist.draw(after) for _ in range(5)] + [after.random() for _ in range(700)] == \
               [dist.draw(ref) for _ in range(5)] + [ref.random() for _ in range(700)], dist.kind


def test_seeded_is_random_random_of_the_same_integer():
    from sim.domain.population import seeded

    for x in (0, 1, 2**32 - 1, 2**32, 2**64 + 7, 2**127 + 5, 2**128 - 1):
        a, b = seeded(x), random.Random(x)
        assert a.__class__ is random.Random
        assert a.getstate() == b.getstate(), x
        assert [a.gauss(0.0, 1.0) for _ in range(3)] + [a.random() for _ in range(700)] == \
               [b.gauss(0.0, 1.0) for _ in range(3)] + [b.random() for _ in range(700)], x
