"""The no-op run stamp (harness/execution/unchanged.py): which changes of a run's inputs it sees."""

from __future__ import annotations

import json
import os

from harness.execution import unchanged


def _dag(tmp_path, text: str = "experiment: x\ndatasets: {d: {root: data}}\n"):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.json").write_text("{}")
    (tmp_path / "dag.yaml").write_text(text)
    return str(tmp_path / "dag.yaml")


def test_the_fingerprint_follows_the_dag_the_flags_the_data_and_the_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dag = _dag(tmp_path)
    base, folder = unchanged.digest_inputs(dag, [], [], None, None, None, True)
    assert folder == (tmp_path / "runs" / "x").resolve()
    assert unchanged.digest_inputs(dag, [], [], None, None, None, True)[0] == base  # the same inputs, the same digest
    assert unchanged.digest_inputs(dag, ["seeds=[1]"], [], None, None, None, True)[0] != base
    assert unchanged.digest_inputs(dag, [], [], None, None, None, False)[0] != base  # --no-report
    assert unchanged.digest_inputs(dag, [], [], None, None, "elsewhere", True)[0] != base  # --results
    assert unchanged.digest_inputs(dag, [], [], "o", None, None, True)[0] != base  # --out
    (tmp_path / "data" / "manifest.json").write_text('{"re": "prepared"}')
    assert unchanged.digest_inputs(dag, [], [], None, None, None, True)[0] != base
    assert unchanged.digest_inputs(dag, [], [], None, "http://127.0.0.1:5000", None, True) is None  # a server: no stamp
    assert unchanged.digest_inputs(_dag(tmp_path, "datasets: [\n"), [], [], None, None, None, True) is None  # bad YAML


def test_a_stamp_stands_only_while_every_result_the_report_and_the_mlflow_store_are_as_recorded(tmp_path):
    folder = tmp_path / "run"
    result = folder / "store" / "attack" / "k" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    (folder / "mlflow.db").write_text("db")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("report")
    unchanged.record_complete("d", folder, [result], tmp_path / "results", {"attack": 1}, "tables")
    assert unchanged.last_complete("d", folder)["summary"] == "tables"
    assert unchanged.last_complete("other inputs", folder) is None
    (folder / "mlflow.db").write_text("db written by something else")
    os.utime(folder / "mlflow.db", ns=(1, 1))
    assert unchanged.last_complete("d", folder) is None
    unchanged.record_complete("d", folder, [result], tmp_path / "results", {"attack": 1}, "tables")
    result.unlink()  # a node's folder deleted: that node must run again
    assert unchanged.last_complete("d", folder) is None
    assert json.loads((folder / unchanged.STAMP).read_text())["results"] == ["store/attack/k/result.json"]
