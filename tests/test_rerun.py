"""The no-op rerun stamp (harness/rerun.py): which changes of a run's inputs it sees."""

from __future__ import annotations

import json
import os

from harness import rerun


def _dag(tmp_path, text: str = "experiment: x\ndatasets: {d: {root: data}}\n"):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.json").write_text("{}")
    (tmp_path / "dag.yaml").write_text(text)
    return str(tmp_path / "dag.yaml")


def test_the_fingerprint_follows_the_dag_the_flags_the_data_and_the_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dag = _dag(tmp_path)
    base, folder = rerun.fingerprint(dag, [], [], None, None, None, True)
    assert folder == (tmp_path / "runs" / "x").resolve()
    assert rerun.fingerprint(dag, [], [], None, None, None, True)[0] == base  # the same inputs, the same digest
    assert rerun.fingerprint(dag, ["seeds=[1]"], [], None, None, None, True)[0] != base
    assert rerun.fingerprint(dag, [], [], None, None, None, False)[0] != base  # --no-report
    assert rerun.fingerprint(dag, [], [], None, None, "elsewhere", True)[0] != base  # --results
    assert rerun.fingerprint(dag, [], [], "o", None, None, True)[0] != base  # --out
    (tmp_path / "data" / "manifest.json").write_text('{"re": "prepared"}')
    assert rerun.fingerprint(dag, [], [], None, None, None, True)[0] != base
    assert rerun.fingerprint(dag, [], [], None, "http://127.0.0.1:5000", None, True) is None  # a server: no stamp
    assert rerun.fingerprint(_dag(tmp_path, "datasets: [\n"), [], [], None, None, None, True) is None  # bad YAML


def test_a_stamp_stands_only_while_every_result_the_report_and_the_mlflow_store_are_as_recorded(tmp_path):
    folder = tmp_path / "run"
    result = folder / "store" / "attack" / "k" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    (folder / "mlflow.db").write_text("db")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("report")
    rerun.record("d", folder, [result], tmp_path / "results", {"attack": 1}, "tables")
    assert rerun.unchanged("d", folder)["summary"] == "tables"
    assert rerun.unchanged("other inputs", folder) is None
    (folder / "mlflow.db").write_text("db written by something else")
    os.utime(folder / "mlflow.db", ns=(1, 1))
    assert rerun.unchanged("d", folder) is None
    rerun.record("d", folder, [result], tmp_path / "results", {"attack": 1}, "tables")
    result.unlink()  # a node's folder deleted: that node must run again
    assert rerun.unchanged("d", folder) is None
    assert json.loads((folder / rerun.STAMP).read_text())["results"] == ["store/attack/k/result.json"]
