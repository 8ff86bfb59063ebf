"""Same seed, same bytes: fingerprints of a few scenarios' results, to compare before and after a speed change.

For each scenario (shortened so the whole check takes well under a minute) it runs the replications and
records two digests:
  * ``results``: SHA-256 of results.json as ``simulate`` writes it, without ``run_info``;
  * ``raw``: SHA-256 of the replications' summaries and metrics at full float precision (``repr``), so a
    change below results.json's 9 significant digits is seen too; plus the anomalies.csv bytes.

  python benchmarks/sim_identity.py --save /tmp/before.json      # on the code before the change
  python benchmarks/sim_identity.py --compare /tmp/before.json   # after: exit 1 when anything differs
  python benchmarks/sim_identity.py --jobs 2 --compare ...       # the same through a process pool
  python benchmarks/sim_identity.py --dask-workers 2 --compare ... # through a Dask LocalCluster

The last line is one JSON object (``identical``: true/false when comparing).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (file, overrides): short horizons, but every mechanism the file switches on stays on.
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "baseline": ("baseline.toml", {"run.horizon": "8m", "run.warmup": "1m", "run.replications": 2}),
    "mall_pattern": ("mall_pattern.toml", {"run.horizon": "8m", "run.warmup": "1m", "run.replications": 2}),
    "gateway_brownout": ("gateway_brownout.toml", {"run.replications": 1, "run.horizon": "30m"}),
    "bnpl_forgotten_finish": ("bnpl_forgotten_finish.toml",
                              {"run.horizon": "10m", "run.warmup": "1m", "run.replications": 2}),
}


def _raw(reps: list) -> str:
    """Every replication's summary and metrics, floats at full precision."""
    h = hashlib.sha256()
    for r in reps:
        d = dataclasses.asdict(r.summary)
        h.update(repr(sorted(d.items(), key=lambda kv: kv[0])).encode())
        h.update(repr(sorted(r.metrics.items())).encode())
        h.update(repr((r.replication, r.orders_created, r.ledger_total)).encode())
    return h.hexdigest()


def fingerprint(name: str, jobs: int = 1, dask_workers: int | None = None) -> dict[str, str]:
    from sim.check import write_anomalies_csv
    from sim.results import canonical_json
    from contextlib import nullcontext

    from sim.runner import local_cluster, pool, replicate
    from sim.scenario import load_scenario

    file, overrides = CASES[name]
    s = load_scenario(ROOT / "scenarios" / file).with_overrides(overrides)
    with local_cluster(dask_workers) if dask_workers else nullcontext(None) as address:
        reps = replicate(s, None, jobs, address, progress=False)
    doc = pool(s, reps)
    doc.pop("run_info", None)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_anomalies_csv(tmp, [r.summary for r in reps])
        csv = Path(csv_path).read_bytes() if csv_path else b""
    return {"results": hashlib.sha256(canonical_json(doc).encode()).hexdigest(), "raw": _raw(reps),
            "csv": hashlib.sha256(csv).hexdigest(), "orders": str(sum(r.orders_created for r in reps))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", metavar="FILE", help="write the fingerprints here")
    ap.add_argument("--compare", metavar="FILE", help="compare with fingerprints saved earlier")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--dask-workers", type=int, default=None)
    ap.add_argument("--only", action="append", choices=sorted(CASES), help="one scenario (repeatable)")
    args = ap.parse_args()
    names = args.only or list(CASES)
    got = {}
    for name in names:
        got[name] = fingerprint(name, args.jobs, args.dask_workers)
        print(f"{name:24s} results {got[name]['results'][:16]}  raw {got[name]['raw'][:16]}  "
              f"orders {got[name]['orders']}")
    if args.save:
        Path(args.save).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    out: dict[str, object] = {"scenarios": names, "jobs": args.jobs, "dask_workers": args.dask_workers}
    rc = 0
    if args.compare:
        want = json.loads(Path(args.compare).read_text())
        diffs = [f"{n}.{k}" for n in names for k in got[n] if want.get(n, {}).get(k) != got[n][k]]
        for d in diffs:
            print(f"DIFFERS: {d}")
        out["identical"] = not diffs
        out["differs"] = diffs
        rc = 1 if diffs else 0
    print(json.dumps(out))
    return rc


if __name__ == "__main__":
    sys.exit(main())
