"""Every command fails like the scenario loader does (issue 14, item 8): one message, exit 2, before the
work starts; a closed pipe ends quietly; Ctrl-C keeps what was done; and the small mends found trying the
commands as a new user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from sim.cli import main
from sim.errors import ConfigError
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("checkout-chaos")
BASELINE = ROOT / "scenarios" / "baseline.toml"
MALL = ROOT / "scenarios" / "mall_pattern.toml"
RESULTS = ROOT / "tests" / "fixtures" / "results_simulation.json"
TINY = ["--set", "run.horizon=4m", "--set", "run.warmup=1m", "--set", "run.drain=30m", "--set", "load.arrival_rate=0.5"]


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot write into (a read-only one; as root, a path under /sys)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o500)
        return d / "out"
    probe = Path("/sys/checkout-chaos-test-out")
    try:
        probe.mkdir()
    except OSError:
        return probe
    probe.rmdir()
    pytest.skip("no unwritable location for root here")


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("not a directory\n")
    return f


def _forbid(monkeypatch, target: str) -> None:
    """Make ``module.attr`` fail the test if the command reaches it (the work must not start)."""
    module, attr = target.rsplit(".", 1)
    mod = __import__(module, fromlist=[attr])

    def refuse(*a, **k):
        raise AssertionError(f"{target} ran although --out cannot be written")

    monkeypatch.setattr(mod, attr, refuse)


COMMANDS = {
    "simulate": (["simulate", str(BASELINE), *TINY, "-q"], "sim.runner.simulate"),
    "check": (["check", str(ROOT / "sim" / "examples" / "example_history.jsonl")], "sim.check.Checker"),
    "report": (["report", str(RESULTS)], "reports.render.build_report"),
    "sweep": (["sweep", str(BASELINE), *TINY, "--vary", "order_service.order_ttl=10m,20m", "-q"], "sim.sweep.run_sweep"),
    "load": (["load", str(BASELINE), "-q"], "loadtests.live.run_live"),
    "compare": (["compare", str(BASELINE), "-q"], "sim.runner.replicate"),
    "explain": (["explain", str(BASELINE), *TINY, "-q"], "sim.explain.explain"),
}


@pytest.mark.parametrize("where", ["a file", "a file's child", "read-only"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_out_is_found_before_the_work(command, where, tmp_path, monkeypatch, capsys):
    argv, work = COMMANDS[command]
    _forbid(monkeypatch, work)
    out = {"a file": lambda: _file(tmp_path), "a file's child": lambda: _file(tmp_path) / "results",
           "read-only": lambda: _unwritable(tmp_path)}[where]()
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"--out {out}" in err, err
    assert ("file" in err) if where != "read-only" else ("cannot write results there" in err)
    assert "Traceback" not in err


def test_the_check_leaves_nothing_behind(tmp_path):
    from sim.commands.common import writable_dir

    out = tmp_path / "new" / "deeper"
    assert writable_dir(out) == out
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_quietly():
    """``validate --print | head -1``: no BrokenPipeError, no traceback, nothing on stderr."""
    files = [str(p) for p in sorted((ROOT / "scenarios").glob("*.toml"))] * 6  # more than a pipe's buffer
    proc = subprocess.Popen([str(SCRIPT), "validate", *files, "--print"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "", err
    assert proc.returncode == 141


def test_ctrl_c_in_simulate_keeps_the_finished_replications(tmp_path, monkeypatch, capsys):
    import sim.model.model as model

    real = model.run_replication

    def until_the_third(scenario, i, *a, **k):
        if i == 2:
            raise KeyboardInterrupt
        return real(scenario, i, *a, **k)

    monkeypatch.setattr(model, "run_replication", until_the_third)
    out = tmp_path / "sim"
    assert main(["simulate", str(BASELINE), *TINY, "-n", "4", "-j", "1", "-q", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: kept the 2 of 4 replications that had finished (replications 0, 1)" in " ".join(err.split())
    doc = json.loads((out / "results.json").read_text())
    assert doc["replications"] == 2
    assert doc["partial"] == {"reason": "interrupted", "replications_finished": [0, 1], "replications_planned": 4}
    # the kept replications are exactly those of an uninterrupted run of the same seed
    monkeypatch.setattr(model, "run_replication", real)
    assert main(["simulate", str(BASELINE), *TINY, "-n", "2", "-j", "1", "-q", "--out", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert doc["anomalies"] == full["anomalies"] and doc["orders"] == full["orders"]


def test_ctrl_c_before_any_replication_writes_nothing(tmp_path, monkeypatch, capsys):
    import sim.model.model as model

    def at_once(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "run_replication", at_once)
    assert main(["simulate", str(BASELINE), *TINY, "-n", "2", "-j", "1", "-q", "--out", str(tmp_path / "s")]) == 130
    assert "no replication had finished; nothing written" in capsys.readouterr().err
    assert not (tmp_path / "s" / "results.json").exists()


def _refuses(port_file) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", int(port_file.read_text())), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_in_load_writes_what_was_measured_and_stops_the_services(tmp_path, sig):
    out = tmp_path / "live"
    proc = subprocess.Popen([str(SCRIPT), "load", str(ROOT / "tests" / "fixtures" / "live_mall.toml"),
                             "--time-scale", "10", "--run-time", "30s", "--drain", "10s", "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "client" / "go.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(6)  # some orders created, the load not over (it lasts 24 s of wall time)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    assert "marked partial" in stderr and "Traceback" not in stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["partial"]["reason"] == "interrupted"
    assert 0 < doc["partial"]["interrupted_at_s"] < 240
    assert doc["orders"] > 0 and doc["end_s"] == pytest.approx(doc["partial"]["interrupted_at_s"], abs=0.01)
    assert (out / "history.jsonl").stat().st_size > 0
    # the services it started are gone, not left running (SIGTERM used to kill only the command)
    assert _refuses(out / "services" / "provider.port") and _refuses(out / "services" / "checkout.port")


def test_a_payment_methods_table_is_the_whole_mix(tmp_path):
    f = tmp_path / "wallet.toml"
    f.write_text("[user.payment_methods]\nwallet = 1.0\n")
    pm = load_scenario(f).user.payment_methods
    assert (pm.wallet, pm.card, pm.bnpl) == (1.0, 0.0, 0.0)
    f.write_text("[user]\npayment_methods = { wallet = 0.6, card = 0.3 }\n")
    with pytest.raises(ConfigError) as exc:
        load_scenario(f)
    msg = str(exc.value)
    assert "user.payment_methods: payment method shares must sum to 1, found 0.9 (wallet 0.6, card 0.3, bnpl 0)" in msg
    assert str(f) in msg and "methods left out are 0" in msg
    # the whole mix on the command line; one share alone is still checked against the others
    s = load_scenario(BASELINE, ["user.payment_methods={card = 0.5, bnpl = 0.5}"])
    assert (s.user.payment_methods.wallet, s.user.payment_methods.bnpl) == (0.0, 0.5)
    with pytest.raises(ConfigError, match="found 1.4"):
        load_scenario(BASELINE, ["user.payment_methods.wallet=1.0"])
    # no table at all keeps the documented defaults
    assert load_scenario(BASELINE).user.payment_methods.bnpl == 0.1


def test_validate_reports_every_problem_of_a_fault_window(tmp_path, capsys):
    f = tmp_path / "faults.toml"
    f.write_text('[[faults]]\nstart = "10m"\nend = "20m"\n'
                 'set = { "gateway.timeot" = "8s", "bank.latency" = "fast", "run.seed" = 3 }\n')
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "faults[0].set: gateway.timeot: unknown key (did you mean 'timeout'?)" in err
    assert "faults[0].set: bank.latency: expected a duration" in err
    assert "faults[0].set.run.seed: expected a key in one of the sections" in err
    assert err.count(str(f)) == 3


def _tiny_sweep(out: Path, *extra: str) -> list[str]:
    return ["sweep", str(BASELINE), *TINY, "-n", "2", "--vary", "order_service.order_ttl=10m,20m", "-j", "1", "-q",
            "--out", str(out), *extra]


def test_sweep_says_how_many_runs_and_what_resume_reused(tmp_path, monkeypatch, capsys):
    import sim.sweep as sweep_module

    out = tmp_path / "sweep"
    assert main(_tiny_sweep(out, "--resume")) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "2 points x 2 replications = 4 runs" in err
    assert "nothing to resume" in err and "starting afresh" in err
    # keep the stored runs this time, as an interrupted sweep leaves them
    monkeypatch.setattr(sweep_module.PartialStore, "clear", lambda self: None)
    assert main(_tiny_sweep(out)) == 0
    capsys.readouterr()
    assert main(_tiny_sweep(out, "--resume")) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "reusing 4 of 4 runs stored in" in err and "4 of 4 runs reused, 0 run now" in err
    # other values: the stored runs belong to another sweep
    assert main(["sweep", str(BASELINE), *TINY, "-n", "1", "--vary", "order_service.order_ttl=11m,21m", "-j", "1",
                 "-q", "--out", str(out), "--resume"]) == 0
    assert "belong to another sweep" in " ".join(capsys.readouterr().err.split())


def test_sweep_table_headers_are_not_cut():
    from rich.console import Console

    from sim.commands.sweep import _print_table

    point = json.loads(RESULTS.read_text())
    doc = {"vary": {"order_service.order_ttl": ["15m", "30m"]}, "compare": {}, "scenario_name": "x",
           "points": [{"params": {"order_service.order_ttl": v}, "results": point} for v in ("15m", "30m")]}
    buf = StringIO()
    _print_table(doc, Console(file=buf, width=90))
    text = buf.getvalue()
    assert "…" not in text
    assert "success" in text and "then" in text and "closed" in text


def test_compare_help_names_its_own_default_out(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "results/<scenario>-compare" in text and "results/<scenario>-live" not in text
    with pytest.raises(SystemExit):
        main(["load", "--help"])
    assert "results/<scenario>-live" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("rule, observed, shown", [
    ("p99_latency < 1ms", 157.2, "2m37s = 157.2s (scenario time)"),
    ("p50_latency < 800ms", 0.25, "250ms (scenario time)"),
    ("error_rate < 0.01", 0.034, "3.40%"),
    ("paid_but_closed.count <= 0", 36, "36 instances"),
    ("paid_but_closed.amount < 100", 1234.5, "¥1,234.50"),
    ("paid_but_closed.rate < 1e-4", 0.0021, "0.0021 per order"),
    ("failure_shown_but_charged.occurred_rate < 0.1", 0.704, "0.704 per order"),
    ("paid_but_closed.unresolved_orders <= 0", 95, "95 orders"),
    ("paid_but_closed.occurred_count <= 0", 97, "97 instances"),
    ("achieved_ratio >= 0.95", None, "nothing"),
])
def test_a_threshold_says_its_unit(rule, observed, shown):
    from rich.console import Console

    from loadtests.cli import observed_text, threshold_exit

    assert observed_text(rule, observed).startswith(shown)
    buf = StringIO()
    code = threshold_exit({"live": {"thresholds": [{"rule": rule, "observed": observed, "holds": False}]}},
                          Console(file=buf, width=200))
    assert code == 1 and f"(observed {shown}" in buf.getvalue()


def test_scenarios_outside_the_project_mentions_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["scenarios"]) == 2
    err = capsys.readouterr().err
    assert "--dir" in err and "no such directory" in err
    assert main(["scenarios", "--dir", str(ROOT / "scenarios")]) == 0
