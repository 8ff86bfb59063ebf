"""checkout-chaos explain: a Morris screening that ranks what drives each anomaly's rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cli import main
from sim.errors import ConfigError
from sim.explain import default_inputs, explain, parse_vary
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
MALL = ROOT / "scenarios" / "mall_pattern.toml"
# mall_pattern scaled down to seconds: ~5 minutes of arrivals at 1 order/s
TINY = ["run.horizon=6m", "run.warmup=1m", "run.drain=90m", "load.arrival_rate=1"]
VARY = ["order_service.order_ttl=15m..2h", "user.pay_delay=0.5x..2x", "bnpl.deduction_failure=0..0.2"]


def _tiny():
    return load_scenario(MALL, TINY)


def _rank(doc: dict, cls: str, key: str, measure: str = "occurred") -> int:
    return next(r["rank"] for r in doc["classes"][cls][measure]["ranking"] if r["key"] == key)


@pytest.fixture(scope="module")
def tiny_doc() -> dict:
    s = _tiny()
    return explain(s, [parse_vary(s, v) for v in VARY], trajectories=3, replications=1, jobs=1, resamples=200,
                   progress=False)


def test_the_ttl_and_the_pay_delay_drive_paid_but_closed_not_a_bnpl_key(tiny_doc):
    """mall_pattern's paid_but_closed comes from payments still in flight when the order's TTL runs out:
    the TTL and the pay delay move it (how many buyers pay in the order's last minutes), the BNPL
    deduction failure cannot (no BNPL order is ever closed-paid)."""
    pbc = tiny_doc["classes"]["paid_but_closed"]["occurred"]
    assert pbc["mean_rate"] > 0
    first = pbc["ranking"][0]
    assert first["key"] in ("order_service.order_ttl", "user.pay_delay")
    assert _rank(tiny_doc, "paid_but_closed", "bnpl.deduction_failure") == 3
    bnpl = next(r for r in pbc["ranking"] if r["key"] == "bnpl.deduction_failure")
    assert first["mu_star"] > 0 and first["mu_star"] > bnpl["mu_star"]
    ttl = next(r for r in pbc["ranking"] if r["key"] == "order_service.order_ttl")
    assert ttl["direction"] == "lowers"  # a longer TTL leaves fewer late payers to a closed order
    for r in pbc["ranking"]:
        lo, hi = r["mu_star_ci95"]
        assert 0 <= lo <= r["mu_star"] <= hi


def test_the_deduction_failure_drives_bnpl_deduction_failed(tiny_doc):
    ranking = tiny_doc["classes"]["bnpl_deduction_failed"]["occurred"]["ranking"]
    assert ranking and ranking[0]["key"] == "bnpl.deduction_failure" and ranking[0]["direction"] == "raises"


def test_the_document_records_the_design(tiny_doc):
    m = tiny_doc["method"]
    assert m["name"] == "morris" and m["points"] == (len(VARY) + 1) * 3 == len(tiny_doc["points"])
    assert [i["key"] for i in tiny_doc["inputs"]] == [v.split("=")[0] for v in VARY]
    assert tiny_doc["seed"] == _tiny().run.seed and tiny_doc["scenario"]["run"]["horizon"] == "6m"
    # every point ran on the scenario's seed with the sampled values applied
    ttls = {p["params"]["order_service.order_ttl"] for p in tiny_doc["points"]}
    assert len(ttls) >= 2 and ttls <= {"15m", "30m", "1h", "2h"}


def test_same_seed_same_document(tiny_doc):
    s = _tiny()
    again = explain(s, [parse_vary(s, v) for v in VARY], trajectories=3, replications=1, jobs=2, resamples=200,
                    progress=False)
    strip = lambda d: {k: v for k, v in d.items() if k != "run_info"}  # noqa: E731
    assert json.dumps(strip(again), sort_keys=True) == json.dumps(strip(tiny_doc), sort_keys=True)


def test_default_inputs_skip_what_the_scenario_leaves_off():
    s = load_scenario(MALL, ["order_service.close_mode=sweep"])  # the file closes by timer (its delayed message)
    keys = [i.key for i in default_inputs(s)]
    assert "order_service.order_ttl" in keys and "user.pay_delay" in keys and "order_service.sweep_interval" in keys
    assert "gateway.notify_duplicate" not in keys  # 0 in mall_pattern
    assert "reconciliation.interval" not in keys  # off
    assert "bank.risk_hold_duration" not in keys  # no debit is held
    timer = load_scenario(MALL, ["user.payment_methods={wallet=1.0}"])
    keys = [i.key for i in default_inputs(timer)]
    assert "order_service.sweep_interval" not in keys
    assert not [k for k in keys if k.startswith(("bnpl.", "merchant.bnpl_"))]
    ttl = next(i for i in default_inputs(s) if i.key == "order_service.order_ttl")
    assert (ttl.override(0.0), ttl.override(1.0)) == ("30m", "2h")
    assert "user.wallet_balance" not in keys and "user.top_up_delay" not in keys  # off in mall_pattern


def test_deductions_from_the_wallet_are_screened_on_the_balance_and_top_up_not_the_coin():
    low = load_scenario(ROOT / "scenarios" / "bnpl_low_balance.toml")
    keys = [i.key for i in default_inputs(low)]
    assert "user.wallet_balance" in keys and "user.top_up_delay" in keys and "bnpl.user_repay_delay" in keys
    assert "bnpl.deduction_failure" not in keys  # not read with bnpl.deduction_source = "wallet"
    with pytest.raises(ConfigError, match="not read with bnpl.deduction_source"):
        parse_vary(low, "bnpl.deduction_failure=0..0.2")
    with pytest.raises(ConfigError, match='the scenario has it "off"'):
        parse_vary(load_scenario(MALL), "user.wallet_balance=0.5x..2x")
    top_up = parse_vary(low, "user.top_up_delay=0.5x..2x")
    assert top_up.override(1.0)["median"] == "2d"


@pytest.mark.parametrize("spec, message", [
    ("order_service.order_tll=15m..1h", "unknown key (did you mean 'order_ttl'?)"),
    ("order_service.close_policy=naive..x", "expected a numeric input"),
    ("order_service.order_ttl=1h..15m", "expected low < high"),
    ("order_service.order_ttl=15..1h", "expected a duration"),
    ("gateway.notify_loss=0..1.5", "expected a probability between 0 and 1"),
    ("gateway.notify_loss", "expected key.path=low..high"),
])
def test_bad_vary_is_one_clear_message(spec, message):
    with pytest.raises(ConfigError) as exc:
        parse_vary(_tiny(), spec)
    assert message in str(exc.value)


def test_cli_writes_json_and_chart(tmp_path, capsys):
    out = tmp_path / "explain"
    argv = ["explain", str(MALL), *[a for kv in TINY for a in ("--set", kv)], "-r", "2", "--resamples", "100",
            "--jobs", "1", "-q", "--out", str(out)]
    for v in VARY[:2] + ["gateway.notify_loss=0..0.3"]:
        argv += ["--vary", v]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "paid_but_closed" in printed.out and "mu*" in printed.out
    assert "3 inputs, 2 trajectories = 8 points x 1 replication = 8 runs" in " ".join(printed.err.split())
    doc = json.loads((out / "explain.json").read_text())
    assert doc["kind"] == "explain" and doc["method"]["points"] == 8
    assert (out / "explain.png").stat().st_size > 1000 and (out / "explain.svg").read_text().lstrip().startswith("<?xml")


def test_cli_refuses_a_bad_option_before_running(tmp_path, capsys):
    assert main(["explain", str(MALL), "--levels", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--levels: expected an even number" in capsys.readouterr().err
    assert main(["explain", str(MALL), "--vary", "order_service.order_ttl=15m..1h", "--out", str(tmp_path / "x")]) == 2
    assert "at least two inputs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_draws_an_explain_document_beside_a_result(tiny_doc, tmp_path):
    """`checkout-chaos report explain.json results.json`: the design review's "what do we fix first" chart
    in the same self-contained report, with the top inputs written out."""
    from reports.render import build_report

    exp = tmp_path / "explain.json"
    exp.write_text(json.dumps(tiny_doc))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0  # a directory with explain.json
    html = (tmp_path / "report" / "index.html").read_text()
    assert "What drives each rate" in html and "order_service.order_ttl" in html
    assert "data:image/png;base64," in html
    report = build_report([tiny_doc], tmp_path / "r2", sources=["explain.json"])
    assert [c.kind for c in report.charts][:1] == ["explain"]


def test_report_refuses_a_broken_explain_document_naming_the_field(tiny_doc, tmp_path, capsys):
    bad = json.loads(json.dumps(tiny_doc))
    cls = next(iter(bad["classes"]))
    bad["classes"][cls]["occurred"]["ranking"] = [{"key": "x", "mu_star": "big"}]
    path = tmp_path / "explain.json"
    path.write_text(json.dumps(bad))
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"classes.{cls}.occurred.ranking[0]" in err and "mu_star" in err


def test_the_default_set_screens_outages_after_sales_and_the_desk_only_where_they_can_act():
    """notifications_lost's rate comes from its endpoint outages: the default set screens their interval and
    duration; a file without outages, after-sales or a desk screens none of those keys. Every new input's
    ends are values the scenario accepts."""
    def keys(name: str, over: list[str] | None = None) -> set[str]:
        return {i.key for i in default_inputs(load_scenario(ROOT / "scenarios" / f"{name}.toml", over or []))}

    new = {"order_service.notify_outage_every", "order_service.notify_outage_duration", "merchant.ship_time",
           "user.after_sales_probability", "user.after_sales_delay", "support.complaint_probability",
           "support.complaint_delay", "support.handle_time", "support.escalate_probability", "support.escalation_delay"}
    assert keys("baseline") & new == set()
    assert keys("notifications_lost") & new == {"order_service.notify_outage_every", "order_service.notify_outage_duration"}
    assert keys("after_sales_race") & new == {"merchant.ship_time", "user.after_sales_probability", "user.after_sales_delay"}
    assert keys("impatient_retry", ["support.agents=20"]) & new == {
        "support.complaint_probability", "support.complaint_delay", "support.handle_time"}
    desk = load_scenario(ROOT / "scenarios" / "after_sales_race.toml", ["support.agents=20", "support.escalate_probability=0.5"])
    inputs = [i for i in default_inputs(desk) if i.key in new]
    assert {i.key for i in inputs} == new - {"order_service.notify_outage_every", "order_service.notify_outage_duration"}
    for i in inputs + [i for i in default_inputs(load_scenario(ROOT / "scenarios" / "notifications_lost.toml"))
                       if i.key in new]:
        for u in (0.0, 1.0):
            desk.with_overrides({i.key: i.override(u)})  # raises ConfigError if an end is not a valid value
