"""MLflow: one parent run per `harness run`, one child run per stage node, written from the driver only.

Only the driver writes, so a sqlite store never sees concurrent writers ("database is locked"), and the store and
experiment are created once, before any trial starts. Grid axes are tags (`axis.<name>`) and params, the node's
settings are params, its numbers are metrics (as its stage words them: `Stage.metrics`), and its full record is
the `result.json` artifact, next to the files its stage names (`Stage.artifacts`). The report reads them back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.stages import STAGES, Node
from harness.stages.base import finite
from workloads.errors import InputError, ServiceError


def default_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def existing_store(experiment: str, tracking_uri: str | None) -> str:
    """The store an experiment was logged to (default: runs/EXPERIMENT/mlflow.db), for commands that only read it:
    a missing sqlite file is the user's mistake, not an empty store to create."""
    uri = tracking_uri or default_uri(Path("runs") / experiment)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(f"no MLflow store at {uri}: run `harness run` for experiment {experiment!r} first, or pass "
                         "--tracking-uri")
    return uri


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        if uri.startswith(("http://", "https://")):
            probe_server(uri)
        try:
            mlflow.set_tracking_uri(uri)
            self.client = MlflowClient(uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                # a server keeps its own artifact store (--artifacts-destination: S3 and the like); only a local
                # store gets the run folder's
                local = artifact_root is not None and not uri.startswith(("http://", "https://"))
                location = Path(artifact_root).resolve().as_uri() if local else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = exp.experiment_id
        except Exception as exc:  # MlflowException, connection errors, sqlite errors
            raise ServiceError(f"MLflow tracking store {uri} is not usable: {_short(exc)}. Check --tracking-uri "
                                "(a server must be running and reachable, e.g. http://127.0.0.1:5000)") from None
        self.parent_id: str | None = None

    def start_parent(self, name: str, params: dict, tags: dict, kind: str = "run") -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"harness.kind": kind, **tags})
        self.parent_id = run.info.run_id
        self._log(run.info.run_id, params=params)
        return self.parent_id

    def end_parent(self, status: str, metrics: dict, artifacts: dict[str, object] | None = None,
                   files: list[str | Path] | None = None, params: dict | None = None) -> None:
        """Close the parent run: `artifacts` are objects written as JSON/YAML, `files` are copied as they are."""
        if self.parent_id is None:
            return
        self._log(self.parent_id, params=params, metrics=metrics)
        for name, obj in (artifacts or {}).items():
            self.client.log_dict(self.parent_id, obj, name)
        for f in files or []:
            self.client.log_artifact(self.parent_id, str(f))
        self.client.set_terminated(self.parent_id, status=status)

    def log_report(self, folder: str | Path, run_id: str | None = None) -> None:
        """The report's tables and figures as artifacts of a parent run (default: this one's), under report/."""
        run_id = run_id or self.parent_id
        if run_id is not None:
            self.client.log_artifacts(run_id, str(folder), "report")

    def logged_keys(self) -> set[str]:
        """Node keys that already have a finished child run in this experiment."""
        from mlflow.entities import ViewType

        keys, token = set(), None
        while True:
            page = self.client.search_runs([self.experiment_id], "attributes.status = 'FINISHED'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            keys.update(r.data.tags["harness.node_key"] for r in page if "harness.node_key" in r.data.tags)
            token = page.token
            if not token:
                return keys

    def log_node(self, node: Node, record: dict | None, error: str | None = None, cached: bool = False,
                 files: list[Path] | None = None) -> str:
        """A child run for one stage node: its axes, config, metrics, full result and `files` (its stage's
        artifacts, e.g. an attack's per-image outcomes); FAILED with the error if any."""
        tags = {"harness.kind": "node", "harness.stage": node.stage, "harness.node_key": node.key,
                "harness.cached": str(cached).lower(), **{f"axis.{k}": str(v) for k, v in node.axes.items()}}
        if error:
            tags["harness.error"] = error[:4000]
        metrics = {**STAGES.get(node.stage).metrics(record["result"]), "seconds": record.get("seconds", 0.0)} \
            if record else {}
        return self.log_child(node.label, tags, {**node.axes, **_flat(node.config.model_dump())}, metrics,
                              status="FAILED" if error else "FINISHED",
                              attach={"result.json": record, **{f.name: f for f in files or []}} if record
                              else {"error.txt": error or ""})

    def log_child(self, name: str, tags: dict, params: dict, metrics: dict,
                  series: dict[str, list[tuple[int, float]]] | None = None, status: str = "FINISHED",
                  attach: dict[str, object] | None = None) -> str:
        """A finished child run of the parent: `series` are per-step metrics (e.g. val per epoch), `attach` files
        (a dict is written as JSON, a string as text, a Path copied as it is)."""
        from mlflow.entities import Metric

        if self.parent_id:
            tags = {**tags, "mlflow.parentRunId": self.parent_id}
        rid = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self._log(rid, params=params, metrics=metrics)
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, rows in (series or {}).items() for step, v in rows
                  if finite(v)]
        for i in range(0, len(points), 1000):
            self.client.log_batch(rid, metrics=points[i : i + 1000])
        for file, content in (attach or {}).items():
            if isinstance(content, Path):
                self.client.log_artifact(rid, str(content))
            else:
                (self.client.log_text if isinstance(content, str) else self.client.log_dict)(rid, content, file)
        self.client.set_terminated(rid, status=status)
        return rid

    def _log(self, run_id: str, params: dict | None = None, metrics: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ps = [Param(k, _param(v)) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if finite(v)]
        for i in range(0, max(len(ps), len(ms)), 100):  # MLflow caps a batch at 100 params / 1000 metrics
            self.client.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100])


def probe_server(uri: str, timeout: float = 10.0) -> None:
    """One quick request to the server's health endpoint: MLflow's client retries a refused connection with
    backoff for minutes before it gives up (results/bench/NOTES.md), the wrong answer to a typo in --tracking-uri.
    Later requests keep MLflow's retries (a server that blips during a long run)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # something answers (a proxy without /health, auth): let MLflow's own client judge it
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(f"MLflow server {uri} is not reachable ({reason}); start one (`mlflow server --host "
                            "127.0.0.1 --port 5000`) or check --tracking-uri") from None


def _param(v: object) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text[:6000]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
