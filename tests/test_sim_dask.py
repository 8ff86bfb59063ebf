"""``simulate --dask-workers N``: replications on a Dask LocalCluster, the same bytes as in one process."""

from __future__ import annotations

import json

import pytest

from sim.cli import main

TINY = ('description = "tiny"\n[run]\nreplications = 3\nhorizon = "2m"\nwarmup = "10s"\ndrain = "10m"\n'
        '[load]\narrival_rate = 2.0\n[gateway]\nnotify_loss = 0.3\n')


def _results(path) -> dict:
    doc = json.loads((path / "results.json").read_text())
    doc.pop("run_info")
    return doc


def test_dask_workers_equal_one_process(tmp_path):
    pytest.importorskip("distributed")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    assert main(["simulate", str(scenario), "--jobs", "1", "-q", "--out", str(tmp_path / "one")]) == 0
    assert main(["simulate", str(scenario), "--dask-workers", "2", "-q", "--out", str(tmp_path / "dask")]) == 0
    one, dask = _results(tmp_path / "one"), _results(tmp_path / "dask")
    assert one["replications"] == 3
    assert dask == one
    assert (tmp_path / "one" / "results.json").read_text().split('"run_info"')[0] == \
        (tmp_path / "dask" / "results.json").read_text().split('"run_info"')[0]
    info = json.loads((tmp_path / "dask" / "results.json").read_text())["run_info"]
    assert info["dask_workers"] == 2


def test_dask_workers_zero_is_a_usage_error(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    assert main(["simulate", str(scenario), "-q", "--dask-workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--dask-workers: expected a positive integer, found 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dask_workers_and_dask_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "x.toml", "--dask-workers", "2", "--dask", "tcp://127.0.0.1:1"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
