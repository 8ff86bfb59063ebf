"""The ``checkout-chaos`` command.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``; this
file only wires them together, so importing the CLI stays cheap (Locust, matplotlib and the services
are imported only by the commands that need them). User mistakes (a bad scenario, a bad flag value, a
history that is not JSON Lines) are :class:`~sim.errors.CheckoutChaosError`: one message on stderr,
exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from sim.errors import CheckoutChaosError

# name -> (module, one-line help, longer description)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("sim.commands.simulate", "simulate a scenario: replications, anomaly rates with 95% CIs"),
    "sweep": ("sim.commands.sweep", "run a grid of scenario variants (local pool or Dask), CSV + JSON"),
    "explain": ("sim.commands.explain", "rank a scenario's inputs by how much each moves each anomaly's rate (Morris)"),
    "scenarios": ("sim.commands.scenarios", "list the scenario library, one line each"),
    "validate": ("sim.commands.validate", "check scenario files (for a team's CI); print the resolved scenario"),
    "check": ("sim.commands.check", "find anomalies in a history (JSON Lines events)"),
    "report": ("reports.cli", "charts and a self-contained HTML report from results JSON"),
    "serve": ("loadtests.service.cli", "start the mock payment provider and the reference checkout"),
    "load": ("loadtests.cli", "live run: services + Locust + checker, results JSON"),
    "load-worker": ("loadtests.worker", "join a live run as a Locust worker of its master (load --master)"),
    "compare": ("loadtests.compare", "simulate and run live at the same conditions; predicted vs measured"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code for usage errors is 2 too
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="checkout-chaos",
        description=(
            "Show how a checkout loses track of money under load: paid-but-closed orders, BNPL agreements "
            "stuck unfinished, double charges. Simulate a scenario, replay it live against real HTTP "
            "services with Locust, check histories for anomalies and report them."
        ),
        epilog=(
            "examples:\n"
            "  checkout-chaos simulate scenarios/baseline.toml --out results/baseline\n"
            "  checkout-chaos simulate scenarios/mall_pattern.toml --set order_service.close_policy=close_trade_then_order\n"
            "  checkout-chaos validate scenarios/*.toml\n"
            "  checkout-chaos check history.jsonl --out results/check\n"
            "  checkout-chaos explain scenarios/mall_pattern.toml --set run.horizon=20m --set run.drain=3h\n"
            "\nrun 'checkout-chaos COMMAND --help' for each command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from sim import __version__

    parser.add_argument("--version", action="version", version=f"checkout-chaos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                p.set_defaults(_missing=True)
                continue
            raise
        mod.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"checkout-chaos {args.command}: not available in this build", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    previous = _stop_on_sigterm()
    try:
        return int(mod.run(args) or 0)
    except CheckoutChaosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """Make SIGTERM (``kill``, a CI runner's timeout, systemd) stop a command as Ctrl-C does: the
    services and Locust processes a command started are stopped, a live run keeps what it measured
    (marked partial) instead of leaving its children running. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _sigterm)


def _quiet_broken_pipe() -> int:
    """The reader went away (``checkout-chaos validate --print | head``): stop quietly, as ``cat`` does.

    stdout is pointed at /dev/null so the interpreter's final flush does not complain again.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
