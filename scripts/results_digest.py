"""SHA-256 of every library scenario's results, shortened: a wide same-seed check for model speed-ups.

Runs each ``scenarios/*.toml`` in a few short variants (one replication each) and prints, per
variant, the SHA-256 of its canonical results JSON minus ``run_info`` — the same digest
``tests/test_digest.py`` pins for three cases. Record the digests before a change, compare after:

    python scripts/results_digest.py > /tmp/before.txt
    ... change the model ...
    python scripts/results_digest.py --compare /tmp/before.txt

Variants: ``short`` (3 min horizon, 30 min drain), ``tail`` (2 min horizon, the scenario's own drain,
so the hours-later mechanisms — notification retries, BNPL deductions, reconciliation — run) and
``rep1`` (replication index 1 of the short variant: other streams). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "short": {"run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m"},
    "tail": {"run.horizon": "2m", "run.warmup": "20s"},
    "rep1": {"run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m"},
}


def digest(path: Path, variant: str) -> tuple[str, int]:
    from sim.model.model import run_replication
    from sim.results import canonical_json
    from sim.runner import pool
    from sim.scenario import load_scenario

    overrides = dict(VARIANTS[variant], **{"run.replications": 1})
    s = load_scenario(path, overrides)
    rep = run_replication(s, 1 if variant == "rep1" else 0)
    doc = pool(s, [rep])
    body = canonical_json({k: v for k, v in doc.items() if k != "run_info"})
    return hashlib.sha256(body.encode()).hexdigest(), rep.orders_created


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", type=Path, help="a previous output of this script: report what differs")
    ap.add_argument("--only", help="comma-separated scenario names (default: all)")
    args = ap.parse_args()
    want = set(args.only.split(",")) if args.only else None
    previous = {}
    if args.compare:
        for line in args.compare.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("{"):
                previous[(parts[0], parts[1])] = parts[2]
    same = differ = 0
    t0 = time.perf_counter()
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        if want is not None and path.stem not in want:
            continue
        for variant in VARIANTS:
            sha, orders = digest(path, variant)
            mark = ""
            if (path.stem, variant) in previous:
                ok = previous[(path.stem, variant)] == sha
                same += ok
                differ += not ok
                mark = "same" if ok else "DIFFERS"
            print(f"{path.stem} {variant} {sha} {orders} {mark}".rstrip(), flush=True)
    print(json.dumps({"same": same, "differ": differ, "seconds": round(time.perf_counter() - t0, 1)}))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
