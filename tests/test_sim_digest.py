"""A small scenario's results pinned to a stored digest: a speed change that alters results is seen.

The digest is SHA-256 of ``results.json`` without ``run_info`` (what "same seed, same result" promises).
A change that alters the model's behaviour on purpose changes it too; then regenerate and say so in the
commit:  python tests/test_sim_digest.py --update
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGEST = ROOT / "tests" / "fixtures" / "sim_digest.json"
# Every mechanism of the default scenario, two replications, short enough for a fast test.
OVERRIDES = {"run.horizon": "2m", "run.warmup": "20s", "run.drain": "1h", "run.replications": 2, "run.seed": 11}


def digest(jobs: int = 1) -> dict[str, str]:
    from sim.results import canonical_json
    from sim.runner import pool, replicate
    from sim.scenario import load_scenario

    s = load_scenario(ROOT / "scenarios" / "baseline.toml").with_overrides(OVERRIDES)
    doc = pool(s, replicate(s, None, jobs, None, progress=False))
    doc.pop("run_info", None)
    return {"baseline_short": hashlib.sha256(canonical_json(doc).encode()).hexdigest()}


def test_results_match_the_stored_digest():
    want = json.loads(DIGEST.read_text())
    got = digest()
    assert got == want, (f"results of the pinned scenario changed ({got} != {want}); if the model changed on "
                         f"purpose, regenerate with: python tests/test_sim_digest.py --update")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] == ["--update"]:
        DIGEST.write_text(json.dumps(digest(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {DIGEST}")
    else:
        print(json.dumps(digest()))
