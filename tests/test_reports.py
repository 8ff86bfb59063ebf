"""Charts, the HTML report and the ``report`` command, drawn from the small fixtures in tests/fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports import charts, fmt
from reports.documents import check_document, load_document
from reports.render import build_report, choose_example, comparisons, render_report, save_figure
from reports.summary import comparison_summary, results_summary, sweep_summary
from sim.cli import main
from sim.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fixture(name: str) -> dict:
    return load_document(FIXTURES / f"results_{name}.json")


def assert_png(path: Path, min_bytes: int = 8_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))


class Attributes(HTMLParser):
    """Every tag and every (tag, attribute, value) of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory):
    """One report from a simulation, a live run of the same scenario and a sweep (the all-zero and
    single-replication fixtures have their own tests)."""
    out = tmp_path_factory.mktemp("report")
    names = ["simulation", "live", "sweep"]
    return build_report([fixture(n) for n in names], out, sources=[f"results_{n}.json" for n in names])


def test_report_draws_every_kind_of_chart(full_report) -> None:
    """Three documents give all six chart kinds, each as PNG and SVG, plus index.html."""
    kinds = {c.kind for c in full_report.charts}
    assert kinds == {"rates", "sweep_rates", "timeline", "windows", "story", "predicted_vs_measured"}
    for c in full_report.charts:
        assert_png(c.png)
        text = c.svg.read_text(encoding="utf-8")
        assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 5_000
    assert full_report.index.name == "index.html" and full_report.index.exists()
    assert all(p.exists() for p in full_report.paths)


def test_all_zero_classes_give_a_timeline_and_no_empty_charts(tmp_path: Path) -> None:
    """A run with no anomaly draws its rates (upper bounds) and timeline and skips the window chart and the story."""
    report = build_report([fixture("zero")], tmp_path)
    assert [c.kind for c in report.charts] == ["rates", "timeline"]
    assert "No anomaly of any class" in report.index.read_text(encoding="utf-8")
    fig = charts.stuck_windows(fixture("zero"))  # drawn directly it says so instead of failing
    assert_png(save_figure(fig, tmp_path, "empty")[0], min_bytes=3_000)
    assert_png(save_figure(charts.predicted_vs_measured(fixture("zero"), fixture("zero")), tmp_path, "pvm0")[0])


def test_single_replication_without_timeline_examples_or_faults(tmp_path: Path) -> None:
    """One replication (Wilson intervals), no timeline, no examples, no faults: windows only."""
    doc = fixture("single")
    assert doc["replications"] == 1 and doc["timeline"] is None and not doc["examples"] and not doc["faults"]
    report = build_report([doc], tmp_path)
    assert [c.kind for c in report.charts] == ["rates", "windows"]
    assert any("Wilson" in s for s in results_summary(doc))


def test_missing_intervals_are_drawn_as_points(tmp_path: Path) -> None:
    """ci95 null (a single replication with no orders, or a producer without intervals) is not an error."""
    doc = fixture("single")
    for a in doc["anomalies"].values():
        a["ci95"], a["ci_method"], a["window_samples"], a["window_s"] = None, None, [], None
    sweep = fixture("sweep")
    for p in sweep["points"]:
        for a in p["results"]["anomalies"].values():
            a["ci95"] = None
    assert_png(save_figure(charts.predicted_vs_measured(doc, fixture("live")), tmp_path, "a")[0])
    assert_png(save_figure(charts.sweep_rates(sweep), tmp_path, "b")[0])
    html = (build_report([doc], tmp_path / "r").index).read_text(encoding="utf-8")
    assert "—" in html


def test_html_is_self_contained(full_report) -> None:
    """No http(s) or protocol-relative src/href, no scripts or stylesheets to fetch; images are data URIs."""
    text = full_report.index.read_text(encoding="utf-8")
    parser = Attributes()
    parser.feed(text)
    for tag, attr, value in parser.attrs:
        if attr in ("src", "href", "srcset", "action", "data"):
            assert not value.lower().startswith(("http:", "https:", "//", "ftp:")), (tag, attr, value[:80])
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert "url(" not in text and "@import" not in text
    images = [v for tag, attr, v in parser.attrs if tag == "img" and attr == "src"]
    assert len(images) == len(full_report.charts)
    assert all(v.startswith("data:image/png;base64,") for v in images)
    hrefs = [v for _, attr, v in parser.attrs if attr == "href"]
    assert all(v.startswith("#") or "/" not in v for v in hrefs)  # anchors, or files beside index.html


def test_html_has_summary_table_and_scenario(full_report) -> None:
    """The summary names the anomalies and the mitigation's effect; the table lists every class."""
    text = full_report.index.read_text(encoding="utf-8")
    assert "close_trade_then_order has no paid_but_closed" in text
    assert "double11_midnight" in text and "20261111" in text
    for cls in charts.ordered_classes(fixture("simulation")["anomalies"]):
        assert cls in text
    assert "<details><summary>scenario (resolved, defaults included)</summary>" in text
    assert "Midnight on Double 11" in text


def test_text_from_results_is_escaped(tmp_path: Path) -> None:
    """Names and descriptions from a results file cannot inject markup into the report."""
    doc = fixture("single")
    doc["scenario"]["description"] = "<script>alert(1)</script> & <img src=http://evil>"
    doc["scenario_name"] = "<b>x</b>"
    text = render_report([doc], tmp_path).read_text(encoding="utf-8")
    assert "<script>" not in text and "<img src=http" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in text


def test_sweep_summary_states_what_a_policy_changes() -> None:
    """The sweep summary says how a rate moves along the axis and what each compared policy cuts."""
    lines = sweep_summary(fixture("sweep"))
    assert lines[0].startswith("Sweep of order_ttl over 5m, 15m, 30m, 1h, comparing close_policy")
    assert any(s.startswith("With naive, paid_but_closed falls from 3.0e-3") for s in lines)
    assert any(s.startswith("query_then_close cuts paid_but_closed from 3.0e-3") for s in lines)


def test_simulation_and_live_are_compared() -> None:
    """A simulation and a live result of the same scenario are paired and their differences named."""
    sim, live = fixture("simulation"), fixture("live")
    assert comparisons([sim, fixture("sweep"), live]) == [(0, 2)]
    lines = comparison_summary(sim, live)
    assert lines[0].startswith("Predicted and measured agree")
    assert any(s.startswith("paid_but_closed: measured") for s in lines)


def test_example_choice() -> None:
    """paid_but_closed is told by default; another class on request; none when absent."""
    sim = fixture("simulation")
    assert choose_example(sim)[0] == "paid_but_closed"
    cls, ex = choose_example(sim, "bnpl_stuck_unfinished")
    assert cls == "bnpl_stuck_unfinished" and ex["role"] == "first"
    assert choose_example(sim, "ledger_imbalance") is None
    assert choose_example(fixture("zero")) is None


def test_story_draws_messages_between_lanes() -> None:
    """Notifications, the pay call and the bank debit become arrows between the right events."""
    ex = fixture("simulation")["examples"]["paid_but_closed"][0]
    items = charts._collapse(charts.story_events(ex))
    pairs = {(items[i]["type"], items[j]["type"]) for i, j in charts.story_messages(items)}
    assert {("notify.sent", "notify.received"), ("user.pay", "trade.processing"),
            ("trade.processing", "ledger.txn"), ("ledger.txn", "trade.succeeded")} <= pairs
    assert charts.disagreement_caption("paid_but_closed", ex) == \
        "from here the bank had debited ¥88.00 but the order said closed"


def test_formats() -> None:
    """Rates, intervals, durations and money read the way the summary prints them."""
    assert fmt.rate(0.0031) == "3.1e-3" and fmt.rate(0) == "0" and fmt.rate(0.25) == "0.25" and fmt.rate(None) == "—"
    assert fmt.interval([2.4e-3, 3.8e-3]) == "[2.4e-3, 3.8e-3]" and fmt.interval(None) == "—"
    assert [fmt.duration(s) for s in (0.35, 200, 3599.9, 3720, 90000)] == ["350ms", "3m 20s", "1h", "1h 02m", "1d 1h"]
    assert fmt.money(1234.5) == "¥1,234.50"


def test_cli_writes_the_report_and_prints_paths(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """checkout-chaos report RESULTS --out DIR exits 0 and prints every file it wrote."""
    rc = main(["report", str(FIXTURES / "results_single.json"), "--out", str(tmp_path / "r"),
               "--example-class", "paid_but_closed"])
    lines = capsys.readouterr().out.splitlines()
    paths = [line for line in lines if not line.startswith("note:")]
    assert rc == 0
    assert paths[-1] == str(tmp_path / "r" / "index.html")
    assert sorted(Path(p).suffix for p in paths) == [".html", ".png", ".png", ".svg", ".svg"]
    assert all(Path(p).exists() for p in paths)
    assert "note: no example of paid_but_closed in these results; no story drawn" in lines


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("dir", "is a directory without a results.json"),
    ("{not json", "not JSON (line 1"),
    ('{"schema_version": 3, "kind": "simulation", "anomalies": {}}', "expected schema_version 2"),
    ('{"kind": "simulation", "anomalies": {}}', "found no schema_version"),
    ('{"schema_version": 1, "kind": "nonsense", "anomalies": {}}', "kind: expected one of"),
    ('{"schema_version": 1, "kind": "simulation", "anomalies": {"paid_but_closed": {"rate": "x"}}}',
     "anomalies.paid_but_closed.rate: expected a number"),
    ('[1, 2]', "expected a JSON object"),
], ids=["missing", "directory", "not-json", "wrong-version", "no-version", "bad-kind", "bad-rate", "list"])
def test_cli_bad_file_exits_2_with_a_clear_message(content, message, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A missing, malformed or wrong-version file: exit 2, one message naming the file, no traceback."""
    path = tmp_path / "results.json"
    if content == "dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    rc = main(["report", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and str(path) in err and message in err
    assert "Traceback" not in err


def test_cli_unknown_example_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A misspelt --example-class is a usage error with a suggestion."""
    rc = main(["report", str(FIXTURES / "results_single.json"), "--out", str(tmp_path), "--example-class", "paid_but_close"])
    assert rc == 2 and "did you mean 'paid_but_closed'" in capsys.readouterr().err


def test_timeline_length_mismatch_is_reported() -> None:
    """A timeline series of the wrong length names the key and both lengths."""
    doc = json.loads((FIXTURES / "results_zero.json").read_text(encoding="utf-8"))
    doc["timeline"]["arrivals"] = doc["timeline"]["arrivals"][:-1]
    with pytest.raises(ConfigError, match=r"timeline.arrivals: expected a list of 130 numbers .*, found a list of 129 items"):
        check_document(doc, "x.json")


def test_cli_module_imports_no_matplotlib() -> None:
    """Importing the report command (as the CLI does for --help) does not import matplotlib."""
    code = "import sys, reports.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_render_report_for_other_commands(tmp_path: Path) -> None:
    """simulate/sweep/load --report call reports.cli.render_report with documents in memory."""
    from reports.cli import render_report as from_cli

    index = from_cli([fixture("single")], tmp_path / "report")
    assert index == tmp_path / "report" / "index.html" and index.exists()
    with pytest.raises(ConfigError, match="expected schema_version 2"):
        from_cli([{"kind": "simulation"}], tmp_path / "bad")


def test_story_shortens_polling() -> None:
    """A poll repeated many times (one event, or an invoke/answer pair) keeps its first and last rounds."""
    def ev(t: float, typ: str) -> dict:
        return {"t": t, "actor": "client", "type": typ, "op": "order_status"}

    pairs = [ev(i, "client.invoke" if i % 2 == 0 else "client.unknown") for i in range(12)]
    short = charts._collapse(pairs)
    assert [e.get("_collapsed") for e in short] == [None, None, 8, None, None]
    assert short[0]["t"] == 0 and short[-1]["t"] == 11
    same = [{"t": i, "actor": "app", "type": "app.shown", "screen": "payment_unknown"} for i in range(3)]
    assert charts._collapse(same) == same  # three rounds are left as they are


def _checked_example() -> dict:
    """A schema 2 document from a real check of the example history that ships with the package."""
    from sim.check import check_events, read_history
    from sim.examples import EXAMPLE_HISTORY
    from sim.results import build_results, canonical_json

    s = check_events(read_history(EXAMPLE_HISTORY))
    doc = build_results("check", [s], scenario=None, scenario_name="example", seed=None,
                        horizon_s=s.horizon, warmup_s=s.warmup, end_s=s.end)
    return json.loads(canonical_json(doc))


def test_a_single_result_opens_with_its_rate_chart(tmp_path: Path) -> None:
    """One check's report: the rate chart (occurred and unresolved, with intervals) comes before the anomaly
    table and every other chart; the table has occurred, repaired and unresolved orders and repair times."""
    doc = _checked_example()
    report = build_report([doc], tmp_path)
    assert report.charts[0].kind == "rates"
    assert_png(report.charts[0].png)
    html = report.index.read_text(encoding="utf-8")
    assert html.index("How often each anomaly occurred") < html.index("<h3>Anomalies</h3>")
    for head in ("occurred<br>(orders", "unresolved at end<br>(orders)", "repaired<br>(orders)",
                 "time to repair<br>p50 (Kaplan–Meier)", "money held at end<br>(CNY"):
        assert head in html
    assert "not reached" in html  # an instance still open at the end: its repair time is censored
    summary = results_summary(doc)
    assert any(s.startswith("22% of buyers (2) paid for an order that was then closed") for s in summary)


def test_rate_chart_marks_zero_classes_with_an_upper_bound(tmp_path: Path) -> None:
    """Every class is a row; a class that never occurred still has its upper bound (an interval, not a point)."""
    doc = _checked_example()
    fig = charts.anomaly_rates(doc)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(doc["anomalies"])
    a = doc["anomalies"]["ledger_imbalance"]
    assert a["occurred_orders"] == 0 and a["occurred_ci95"][1] > 0
    assert_png(save_figure(fig, tmp_path, "rates")[0])


def test_window_chart_shows_censoring(tmp_path: Path) -> None:
    """The time-to-repair chart draws a Kaplan–Meier curve per class and marks the open (censored) instances."""
    doc = _checked_example()
    a = doc["anomalies"]["paid_but_closed"]
    times, share, censored = charts.repair_curve(a)
    assert len(censored) == a["unresolved_count"] == 1 and share[-1] == pytest.approx(a["repair_s"]["repaired_share"])
    fig = charts.stuck_windows(doc)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("1 open at end" in t for t in labels) and "open at the end (censored there)" in labels
    assert_png(save_figure(fig, tmp_path, "windows")[0])


def test_actor_table_labels_units_and_totals() -> None:
    """Per-replication means and totals are labelled; counts are written out, never in scientific notation."""
    from reports.html import _metrics_table

    html = _metrics_table({"gateway": {"served": 141420.4, "timeouts": 12345, "utilization": 0.71}}, 5)
    assert "served<br>(requests, mean per replication)" in html and "timeouts<br>(requests, total)" in html
    assert "141,420" in html and "12,345" in html and "71%" in html and "e+" not in html
