"""``checkout-chaos validate FILE...``: check scenario files, for a team's own CI."""

from __future__ import annotations

import argparse
import json
import sys

from sim.errors import ConfigError
from sim.scenario import inert_settings, load_scenario


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Validate scenario files: every key known, every value of the right kind. Exit 0 when all "
                     "are valid, 2 when any is not (one message per problem: file, key, expected, found).")
    p.epilog = "examples:\n  checkout-chaos validate scenarios/*.toml\n  checkout-chaos validate my.toml --print"
    p.add_argument("files", nargs="+", metavar="FILE", help="scenario TOML files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="apply an override before validating (repeatable)")
    p.add_argument("--print", dest="show", action="store_true",
                   help="print each resolved scenario (defaults included) as JSON")


def run(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        try:
            scenario = load_scenario(path, args.overrides)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        if args.show:
            print(json.dumps(scenario.resolved(), indent=2, ensure_ascii=False))
        else:
            print(f"ok  {path}")
        for note in inert_settings(scenario):
            print(f"note: {path}: {note}", file=sys.stderr)
    return 2 if bad else 0
