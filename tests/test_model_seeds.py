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
