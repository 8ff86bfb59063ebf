"""``checkout-chaos scenarios``: the scenario library, one line each."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands.common import SCENARIO_DIR
from sim.errors import ConfigError
from sim.scenario import load_scenario


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=str(SCENARIO_DIR), help="where the scenario files are (default: scenarios/)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    d = Path(args.dir)
    where = "no such directory" if not d.exists() else "not a directory" if not d.is_dir() else "no scenario files (*.toml) there"
    files = sorted(d.glob("*.toml")) if d.is_dir() else []
    if not files:
        raise ConfigError(f"--dir {d}: {where} (resolved: {d.resolve()}); run from the project's directory, "
                          "or name the scenario directory with --dir DIR")
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("scenario")
    table.add_column("story")
    for f in files:
        try:
            s = load_scenario(f)
            line = (s.description or "").strip().splitlines()[0] if s.description.strip() else ""
        except ConfigError as exc:
            line = f"[red]invalid: {str(exc).splitlines()[0]}[/red]"
        table.add_row(f.stem, line)
    Console().print(table)
    return 0
