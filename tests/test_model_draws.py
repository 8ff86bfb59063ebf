"""The lognormal samplers inline ``random.Random.gauss``: they must draw exactly what it draws."""

import math
import random

from sim.scenario import Dist


class _Stream(random.Random):
    """A subclass: the samplers fall back to its own ``gauss``."""


def _expected(d: Dist, r: random.Random) -> float:
    mu, sigma = d.lognormal_mu_sigma()
    return math.exp(mu + sigma * r.gauss(0.0, 1.0))


def test_lognormal_sampler_and_draw_equal_gauss():
    d = Dist("lognormal", (("median", 2.5), ("p99", 40.0)))
    for seed in range(30):
        for cls in (random.Random, _Stream):
            ref, a, b = random.Random(seed), cls(seed), cls(seed)
            sample = d.sampler(a)
            for i in range(301):
                x = _expected(d, ref)
                # the sampler and the one-off draw interleaved with other draws on the same stream
                if i % 2:
                    assert sample() == x
                    b.setstate(a.getstate())
                else:
                    assert d.draw(b) == x
                    a.setstate(b.getstate())
                if i % 7 == 0:
                    y = ref.random()
                    assert a.random() == y
                    b.random()
