"""A `harness run` with nothing to do answers at once, from a stamp of the last run that finished every node.

What a run computes, logs and reports follows from its inputs: the DAG with its override files and --set values,
the datasets' manifests, the harness's own code, the run folder, the MLflow store and the report folder. When all of
them are what they were at the end of the last complete run, and every node's result is still in the store, there
is nothing to compute, nothing to log and the report would come out the same: the run says so without importing
torch, Ray or MLflow (seconds of imports on a small machine). Anything else (an eps grid changed, a seed added, a
source file edited, a node's folder deleted, another MLflow store) goes the normal way, which checks every node.

Only the run folder's own sqlite MLflow store, and its own artifact store, qualify: a server or an object store
may be written by other drivers meanwhile. A run
with plugins always goes the normal way: their code is the user's, and telling whether it changed would mean
importing it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from harness.config.overrides import read_tree
from workloads.errors import HarnessError
from workloads.files import atomic_write_text

STAMP = "last-complete-run.json"
CODE = Path(__file__).resolve().parents[2]
CODE_DIRS = ("harness", "rules", "workloads")


def digest_inputs(dag: str, sets: list[str], files: list[str], out: str | None, tracking_uri: str | None,
                  results: str | None, report: bool, plugins: list[str] | None = None,
                 store: str | None = None) -> tuple[str, Path] | None:
    """(the digest of this run's inputs, its run folder), or None where it cannot be told cheaply (then the run
    goes the normal way, which also reports any error in the DAG)."""
    try:
        tree, _ = read_tree(dag, sets, files)
    except HarnessError:
        return None
    experiment = tree.get("experiment")
    if not isinstance(experiment, str) or tracking_uri is not None or plugins or tree.get("plugins"):
        return None
    if store is not None or tree.get("store") is not None:  # another store than the run folder: may be remote
        return None
    folder = Path(out or Path("runs") / experiment).resolve()
    h = hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode())
    h.update(f"\0{folder}\0{Path(results or Path('results') / experiment).resolve() if report else ''}".encode())
    datasets = tree.get("datasets") if isinstance(tree.get("datasets"), dict) else {}
    manifests = [Path(d["root"]) / "manifest.json" for d in datasets.values() if isinstance(d, dict) and "root" in d]
    code = sorted(p for d in CODE_DIRS for p in (CODE / d).rglob("*") if p.suffix in (".py", ".c", ".yaml"))
    for path in [*manifests, *code]:
        try:
            st = path.stat()
        except OSError:
            return None
        h.update(f"\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest(), folder


def last_complete(digest: str, folder: Path) -> dict | None:
    """The stamp of the last complete run if this run's inputs are the same and every result it saw is still there."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("inputs") != digest:
        return None
    if not all((folder / p).is_file() for p in [*stamp.get("results", []), *stamp.get("report", [])]):
        return None
    if stamp.get("mlflow") != _stat(folder / "mlflow.db"):  # written since (a search, another DAG): not the same
        return None
    return stamp


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def record_complete(digest: str, folder: Path, results: list[Path], report: Path | None, counts: dict[str, int],
                    summary: str) -> None:
    """After a run that finished every node (and wrote its report): what the next run compares itself with."""
    paths = [str(Path(p).resolve().relative_to(folder)) for p in results]
    shown = [str(Path(report).resolve() / "README.md")] if report is not None else []
    atomic_write_text(folder / STAMP, json.dumps({
        "inputs": digest, "results": paths, "report": shown, "mlflow": _stat(folder / "mlflow.db"), "nodes": counts,
        "summary": summary, "at": time.strftime("%Y-%m-%d %H:%M:%S")}))
