"""A checker no input can break: every line is an event or one counted, named problem.

Refused values (huge and non-finite amounts, wrong types), unreadable bytes, CSV and JSON documents
given as histories, merged files in any order, events after an order was judged, unknown event types,
duplicate events, and a Hypothesis fuzz over arbitrary JSON values in every field and arbitrary bytes.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.check import (MAX_TIMELINE_BUCKETS, AnomalyCsv, CheckConfig, Checker, Problems, check_events,
                       iter_history, merge_histories, read_history, suggest_event_type, validate_event)
from sim.errors import HistoryError
from sim.examples import EXAMPLE_HISTORY
from sim.results import build_results, canonical_json
from sim.vocabulary import EVENT_TYPES

GOOD = {"t": 5.0, "type": "order.created", "order": "o1", "user": "u1", "amount": 5000, "method": "wallet",
        "expires_at": 1800.0}


def _history(tmp_path: Path, *lines: str | bytes, name: str = "h.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return p


def _read(path: Path) -> tuple[list[dict], Problems]:
    problems = Problems()
    return list(read_history(path, problems)), problems


# --------------------------------------------------------------------------------------------------
# one line, one problem


@pytest.mark.parametrize("patch, field, found", [
    ({"amount": 2**63}, "amount", "9223372036854775808"),
    ({"amount": 1e30}, "amount", "1e+30"),
    ({"amount": math.nan}, "amount", "nan"),
    ({"amount": math.inf}, "amount", "inf"),
    ({"amount": 12.5}, "amount", "12.5"),
    ({"amount": True}, "amount", "True"),
    ({"amount": "5000"}, "amount", "'5000'"),
    ({"order": ["o1"]}, "order", "['o1']"),
    ({"order": {"id": 1}}, "order", "{'id': 1}"),
    ({"order": 1.5}, "order", "1.5"),
    ({"type": "trade.created", "trade": ["T"]}, "trade", "['T']"),
    ({"type": "app.shown", "screen": ["payment_failed"]}, "screen", "['payment_failed']"),
    ({"expires_at": math.nan}, "expires_at", "nan"),
    ({"t": 1e300}, "t", "1e+300"),
    ({"type": ""}, "type", "''"),
    ({"type": "ledger.txn", "postings": {"a": 1}}, "postings", "{'a': 1}"),
    ({"type": "ledger.txn", "postings": [{"account": "user:u1", "amount": 2**63}]}, "postings[0].amount",
     "9223372036854775808"),
    ({"type": "ledger.txn", "postings": [{"account": 7, "amount": 1}]}, "postings[0].account", "7"),
    ({"type": "ledger.txn", "postings": ["x"]}, "postings[0]", "'x'"),
    ({"type": "run.start", "order": None, "warmup": math.inf}, "warmup", "inf"),
    ({"type": "run.start", "order": None, "stuck_grace": -1}, "stuck_grace", "-1"),
    ({"type": "run.start", "order": None, "observed": ["ledger"]}, "observed", "['ledger']"),
    ({"type": "run.start", "order": None, "observed": {"ledgr": False}}, "observed.ledgr", "'ledgr'"),
])
def test_a_bad_value_refuses_its_line_naming_field_expected_and_found(tmp_path, patch, field, found):
    """The line is refused with file, line, field, what was expected and what was found; the rest is read."""
    bad = json.dumps({**GOOD, **patch})
    p = _history(tmp_path, json.dumps({"t": 0, "type": "run.start"}), bad, json.dumps({**GOOD, "order": "o2"}))
    events, problems = _read(p)
    assert [e.get("order") for e in events] == [None, "o2"]
    assert problems.count == 1
    prob = problems.items[0]
    assert (prob.file, prob.line, prob.field, prob.found) == (str(p), 2, field, found)
    assert prob.expected and str(prob).startswith(f"{p}:2: field '{field}' must be ")


@pytest.mark.parametrize("raw, text", [
    (b'{"t": 1, "type": ', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0xff at column 1)"),
    (b'{"t": 1, "type": "x", "order": "o\\ud800"}', "lone UTF-16 surrogate"),
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    (b'{"t": 1, "type": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
    (b'{"t": 1, "type": "x", "amount": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"42", "expected a JSON object, found number"),
    (b'"text"', "expected a JSON object, found string"),
    (b"null", "expected a JSON object, found null"),
    (b"\x00\x00", "not valid JSON"),
    (b'{"t": NaN, "type": "x"}', "field 't' must be a finite number, found nan"),
])
def test_unreadable_lines_are_one_problem_each(tmp_path, raw, text):
    p = _history(tmp_path, json.dumps({"t": 0, "type": "run.start"}), raw, json.dumps(GOOD))
    events, problems = _read(p)
    assert len(events) == 2 and problems.count == 1
    assert problems.items[0].line == 2 and text in str(problems.items[0])


def test_a_line_over_one_mebibyte_is_refused_and_reading_goes_on(tmp_path):
    long = json.dumps({**GOOD, "note": "x" * (1 << 20)})
    p = _history(tmp_path, long, json.dumps({**GOOD, "order": "o2"}))
    events, problems = _read(p)
    assert [e["order"] for e in events] == ["o2"]
    assert problems.count == 1 and "line longer than 1 MiB" in str(problems.items[0])


def test_without_problems_the_first_bad_line_raises(tmp_path):
    p = _history(tmp_path, json.dumps(GOOD), json.dumps({**GOOD, "amount": 1e30}))
    with pytest.raises(HistoryError, match=r"h\.jsonl:2: field 'amount' must be an integer amount in fen"):
        list(read_history(p))


def test_integral_float_amounts_are_taken_as_fen(tmp_path):
    p = _history(tmp_path, json.dumps({**GOOD, "amount": 5000.0}))
    events, problems = _read(p)
    assert problems.count == 0 and events[0]["amount"] == 5000 and isinstance(events[0]["amount"], int)


def test_validate_event_accepts_every_event_of_the_example():
    for line in EXAMPLE_HISTORY.read_text().splitlines():
        assert validate_event(json.loads(line)) is None


# --------------------------------------------------------------------------------------------------
# whole files that are not histories


def test_csv_is_told_it_looks_like_csv(tmp_path):
    p = _history(tmp_path, "t,type,order,amount", "0.0,order.created,o1,5000", name="h.csv")
    with pytest.raises(HistoryError, match="this looks like CSV; expected JSON Lines"):
        list(read_history(p, Problems()))


def test_a_json_array_document_is_told_to_be_json_lines(tmp_path):
    p = _history(tmp_path, "[", json.dumps(GOOD) + ",", "]")
    with pytest.raises(HistoryError, match="looks like one JSON document; expected JSON Lines"):
        list(read_history(p, Problems()))


def test_gzip_is_recognised_by_its_content(tmp_path):
    p = tmp_path / "history.jsonl"  # gzip bytes under a plain name
    p.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode()))
    assert [e["order"] for e in read_history(p)] == ["o1"]


def test_a_truncated_gzip_keeps_what_was_read_and_reports_the_rest(tmp_path):
    data = gzip.compress("".join(json.dumps({**GOOD, "order": f"o{i}"}) + "\n" for i in range(2000)).encode())
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    events, problems = _read(p)
    assert 0 < len(events) < 2000
    assert problems.count == 1 and "cannot read further" in str(problems.items[0])


def test_a_byte_order_mark_is_skipped(tmp_path):
    p = _history(tmp_path, b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert [e["order"] for e in read_history(p)] == ["o1"]


# --------------------------------------------------------------------------------------------------
# several files


def _split_example(tmp_path: Path) -> list[Path]:
    """The example history as three files: buyer side, order service, money side."""
    groups: dict[str, list[str]] = {"client": [], "orders": [], "money": []}
    for line in EXAMPLE_HISTORY.read_text().splitlines():
        actor = json.loads(line)["actor"]
        key = "client" if actor in ("app", "user") else "orders" if actor in ("order_service", "run", "merchant") \
            else "money"
        groups[key].append(line)
    paths = []
    for key, lines in groups.items():
        p = tmp_path / f"{key}.jsonl"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def test_merged_files_in_any_order_give_the_same_anomalies(tmp_path):
    paths = _split_example(tmp_path)
    whole = check_events(read_history(EXAMPLE_HISTORY))
    results = []
    for perm in itertools.permutations(paths):
        s = check_events(e for e, _, _ in merge_histories(perm))
        results.append((s.to_dict(), [tuple(i) for i in s.instances]))
    assert all(r == results[0] for r in results)
    assert results[0][0]["per_class"] == whole.to_dict()["per_class"]
    assert results[0][0]["end_states"] == whole.end_states


def test_an_earlier_order_end_in_one_file_does_not_drop_the_other_files_events(tmp_path):
    """Merged by time: the client's failure screen before the service's order.end is in the verdict."""
    services = _history(tmp_path, *(json.dumps(e) for e in [
        {"t": 0, "type": "order.created", "order": "o1", "user": "u1", "amount": 5000, "method": "wallet",
         "expires_at": 1800},
        {"t": 10, "type": "ledger.txn", "order": "o1", "kind": "charge", "trade": "A", "txn": "c1",
         "postings": [{"account": "user:u1", "amount": -5000}, {"account": "clearing", "amount": 5000}]},
        {"t": 12, "type": "order.paid", "order": "o1", "trade": "A"},
        {"t": 50, "type": "order.end", "order": "o1"},
    ]), name="services.jsonl")
    client = _history(tmp_path, *(json.dumps(e) for e in [
        {"t": 11, "type": "app.shown", "order": "o1", "screen": "payment_failed"},
        {"t": 60, "type": "app.shown", "order": "o1", "screen": "payment_succeeded"},
    ]), name="client.jsonl")
    for order in ([services, client], [client, services]):
        checker = Checker(CheckConfig(end=100))
        late = []
        for event, name, line in merge_histories(order):
            before = checker.late_events
            checker.feed(event)
            if checker.late_events != before:
                late.append((Path(name).name, line))
        s = checker.finish()
        assert s.per_class["failure_shown_but_charged"].count == 1  # the 11 s screen was judged
        assert s.late_events == 1 and late == [("client.jsonl", 2)]  # the 60 s one is reported


def test_the_same_file_twice_is_refused(tmp_path):
    p = _history(tmp_path, json.dumps(GOOD))
    with pytest.raises(HistoryError, match="given twice"):
        list(merge_histories([p, tmp_path / "." / "h.jsonl"]))


# --------------------------------------------------------------------------------------------------
# unknown types, duplicates, bounds


def test_unknown_event_types_are_counted_and_named():
    """trade.success (a typo of trade.succeeded) is counted, named and gets a suggestion."""
    events = [json.loads(ln) for ln in EXAMPLE_HISTORY.read_text().splitlines()]
    renamed = 0
    for e in events:
        if e["type"] == "trade.succeeded":
            e["type"] = "trade.success"
            renamed += 1
    s = check_events(events)
    assert renamed > 0 and s.unknown_types == {"trade.success": renamed}
    assert suggest_event_type("trade.success") == "trade.succeeded"
    assert suggest_event_type("zzz.qqq") is None


def test_known_types_are_never_unknown():
    s = check_events(json.loads(ln) for ln in EXAMPLE_HISTORY.read_text().splitlines())
    assert s.unknown_types == {} and set(EVENT_TYPES) >= {"trade.succeeded", "order.end", "client.ok"}


def test_duplicate_order_end_is_a_duplicate_not_a_late_event():
    e = [{"t": 0, "type": "order.created", "order": "o", "amount": 1, "expires_at": 10},
         {"t": 10, "type": "order.closed", "order": "o"}, {"t": 10, "type": "order.end", "order": "o"},
         {"t": 10, "type": "order.end", "order": "o"}]
    s = check_events(e, CheckConfig(end=100))
    assert (s.duplicate_events, s.late_events) == (1, 0)


def test_a_far_future_event_does_not_make_an_endless_timeline():
    """t = 1e9 s with 60 s buckets would be 16 million buckets: the bucket widens instead."""
    s = check_events([dict(GOOD), {"t": 1e9, "type": "run.end"}])
    tl = s.timeline
    assert len(tl["t"]) <= MAX_TIMELINE_BUCKETS and tl["bucket_s"] % 60 == 0
    assert sum(tl["arrivals"]) == 1 and tl["states"]["awaiting_payment"][-1] == 1


# --------------------------------------------------------------------------------------------------
# fuzz: arbitrary JSON values in every field, arbitrary bytes


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_PLAUSIBLE = {
    "t": st.floats(0, 5000),
    "type": st.sampled_from(EVENT_TYPES),
    "order": st.sampled_from(["o1", "o2", 3]),
    "trade": st.sampled_from(["A", "B", None]),
    "agreement": st.sampled_from(["G1", None]),
    "user": st.sampled_from(["u1", "u2"]),
    "amount": st.integers(-10_000, 10_000),
    "expires_at": st.floats(0, 3000),
    "screen": st.sampled_from(["payment_succeeded", "payment_failed", "order_paid", "x"]),
    "kind": st.sampled_from(["charge", "refund", "bnpl_deduction", "settlement"]),
    "postings": st.lists(st.fixed_dictionaries({"account": st.sampled_from(["user:u1", "user:u2", "clearing"]),
                                                "amount": st.integers(-10_000, 10_000)}), max_size=3),
    "ok": st.booleans(),
    "attempt": st.integers(1, 3),
    "stock_released": st.booleans(),
    "txn": st.sampled_from(["x1", "x2", "x3"]),
    "id": st.sampled_from(["e1", "e2"]),
    "method": st.sampled_from(["wallet", "bnpl"]),
    "reason": st.sampled_from(["ttl", "expired"]),
    "observed": st.dictionaries(st.sampled_from(["ledger", "screens", "checkout", "gateway", "bnpl"]), st.booleans()),
    "end": st.floats(0, 6000),
    "warmup": st.floats(0, 100),
}
_EVENT = st.fixed_dictionaries({}, optional={k: st.one_of(v, v, _JSON) for k, v in _PLAUSIBLE.items()})
_LINE = st.one_of(
    _EVENT.map(lambda e: json.dumps(e).encode()),
    _EVENT.map(lambda e: json.dumps(e).encode()),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
)


def _check_file(path: Path, out: Path) -> tuple[int, Problems, int]:
    """What ``checkout-chaos check`` does with a file, short of printing: any exception is a failure."""
    problems = Problems()
    rows = AnomalyCsv()
    try:
        checker = Checker(CheckConfig(), on_instance=rows.add)
        n = 0
        for event, _, _ in merge_histories([path], problems):
            checker.feed(event)
            n += 1
        s = checker.finish()
        doc = build_results("check", [s], scenario=None, scenario_name=None, seed=s.seed, horizon_s=s.horizon,
                            warmup_s=s.warmup, end_s=s.end, extra={"history": {"problems": problems.to_dict()}})
        canonical_json(doc).encode("utf-8")
        json.dumps(s.to_dict(), allow_nan=True)
        rows.commit(out)
    finally:
        rows.close()
    return n, problems, s.events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, min_size=1, max_size=25))
def test_fuzz_every_line_is_an_event_or_one_problem(lines):
    """No input gives a traceback: each non-blank line is one event or one counted problem."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            n, problems, fed = _check_file(path, Path(d) / "out")
        except HistoryError as exc:  # the whole file is refused only when its first line is CSV or "["
            assert "looks like" in str(exc)
            return
        raw = path.read_bytes()
        raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte-order mark only opens a file
        nonblank = sum(1 for ln in raw.split(b"\n") if ln.strip())
        assert n == fed
        assert n + problems.count == nonblank
        assert all(p.line is not None and p.file == str(path) for p in problems.items)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(_EVENT, min_size=1, max_size=30))
def test_fuzz_every_valid_event_is_judged_without_error(events):
    """Events that pass validation (with arbitrary values wherever the checker does not look) never break it."""
    ok = []
    for e in events:
        e = dict(e)
        e.setdefault("t", 1.0)
        e.setdefault("type", "order.paid")
        if validate_event(e) is None:
            ok.append(e)
    s = check_events(ok, CheckConfig(end=10_000))
    assert s.events == len(ok)
    assert all(s.per_class[c].n_windows == s.per_class[c].count + s.per_class[c].repaired for c in s.per_class)
    assert sum(s.end_states.values()) == s.orders


def test_a_file_that_starts_like_gzip_but_is_not_is_refused_with_a_message(tmp_path):
    """Found by the fuzz test: the gzip magic bytes followed by plain text used to give one 'cannot read
    further' problem for a file of two lines; the whole file is refused instead, saying why."""
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"\x1f\x8b\n{}\n")
    with pytest.raises(HistoryError, match="looks like gzip .* not a valid gzip file"):
        list(iter_history(path, Problems()))
