"""What a report reads back from MLflow: an experiment's finished node runs, their rows and per-image outcomes,
and the settings its latest `harness run` decided with.

Reads MLflow only (the tags, params and metrics harness/execution/tracking.py wrote, and each node's artifacts), so
it works on a run logged to a remote server. When a node was run more than once (an eps grid changed), the latest
finished run of those axes is the one read.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import polars as pl

from harness.config.verdicts import VerdictSettings
from harness.stages import ordered
from harness.stages.attack import OUTCOMES
from harness.stages.tables import kind_of
from workloads.errors import InputError, ServiceError
from workloads.names import AXES

# a report downloads an artifact or two per node: MLflow's progress bar for each would bury the report's own lines
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_runs(tracking_uri: str, experiment: str) -> pl.DataFrame:
    """Finished node runs of the experiment, one row per node (latest run per stage and axes): `stage`, `run_id`,
    the axes, `metrics.*` and the attack parameters as `param.params.*`."""
    import mlflow

    from harness.execution.tracking import probe_server

    if tracking_uri.startswith(("http://", "https://")):
        probe_server(tracking_uri)  # at once, not after MLflow's minutes of retries against a refused connection
    mlflow.set_tracking_uri(tracking_uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
    except Exception as exc:
        raise ServiceError(f"cannot read MLflow at {tracking_uri}: {type(exc).__name__}: {exc}") from None
    if exp is None:
        raise InputError(f"MLflow at {tracking_uri} has no experiment {experiment!r}; run `harness run` first")
    runs = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'node' and attributes.status = 'FINISHED'",
                              output_format="list", max_results=50000)
    rows = []
    for r in runs:
        row = {"stage": r.data.tags.get("harness.stage"), "start": r.info.start_time, "run_id": r.info.run_id}
        row.update({a: r.data.tags.get(f"axis.{a}") for a in AXES})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"param.{k}": v for k, v in r.data.params.items() if k.startswith("params.")})
        rows.append(row)
    if not rows:
        raise InputError(f"experiment {experiment!r} has no finished stage runs yet")
    df = pl.DataFrame(rows, infer_schema_length=None)
    return df.sort("start", descending=True).unique(subset=["stage", *AXES], keep="first", maintain_order=True)


def load_rows(runs: pl.DataFrame, tracking_uri: str, stage: str) -> pl.DataFrame:
    """The rows of every run of `stage` (`Stage.rows` of its recorded result, e.g. an attack's one per budget), with
    the run's axes and id; a number that is not finite (nothing found) is a missing value."""
    import mlflow
    from mlflow.artifacts import load_dict

    from harness.stages import STAGES

    mlflow.set_tracking_uri(tracking_uri)
    out = []
    for r in runs.filter(pl.col("stage") == stage).iter_rows(named=True):
        record = load_dict(f"runs:/{r['run_id']}/result.json")
        for row in STAGES.get(stage).rows(record["result"]):
            out.append({**{a: r[a] for a in AXES}, "run_id": r["run_id"],
                        **{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
                           if k not in AXES}})
    return pl.DataFrame(out, infer_schema_length=None) if out else pl.DataFrame()


def load_outcomes(runs: pl.DataFrame, tracking_uri: str, kind: str = "classification") -> pl.DataFrame:
    """The per-image outcomes (each node's `outcomes.parquet`) of every node whose stage leaves them, on models of
    tasks of `kind`, with the node's axes and each perturbation's `linf` (a convergence re-run's `attack` is its
    attack's name behind `harness.stages.converge.RERUN`)."""
    from mlflow.artifacts import download_artifacts

    stages = [s.name for s in ordered() if OUTCOMES in s.artifacts]
    tasks = [t for t in runs["task"].unique().to_list() if t is not None and kind_of(t) == kind]
    columns = ["clean", "robust", "robust_raw"] if kind == "classification" else ["clean_ap", "ap", "ap_raw"]
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs.filter(pl.col("stage").is_in(stages) & pl.col("task").is_in(tasks)).iter_rows(named=True):
            try:
                path = download_artifacts(run_id=r["run_id"], artifact_path=OUTCOMES, dst_path=f"{tmp}/{r['run_id']}",
                                          tracking_uri=tracking_uri)
            except Exception:  # noqa: BLE001  (a run logged before outcomes were kept: it has no verdict evidence)
                continue
            table = pl.read_parquet(path)
            if "norm" not in table.columns:  # written before budgets had a norm: every attack then was L-inf's
                table = table.with_columns(pl.lit("linf").alias("norm"))
            # a convergence re-run's rounds; the perturbation's size (what the radii are read from)
            # and a decision attack's own queries per image it attacked (did it stop early?)
            extra = [c for c in ("round", "rounds", "linf", "own_queries") if c in table.columns]
            frames.append(table.select("image", "eps", "norm", *columns, *extra)
                          .with_columns(*[pl.lit(r[a], dtype=pl.String).alias(a) for a in AXES]))
    return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()


def logged_settings(tracking_uri: str, experiment: str) -> tuple[VerdictSettings, str, list[str]]:
    """The `verdicts` section, the baseline rule and the plugins of the DAG the latest `harness run` ran (logged on
    its parent run; bp and none for a run logged before those were settings)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    parents = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'run'", output_format="list",
                                 order_by=["attributes.start_time DESC"], max_results=20)
    for run in parents:
        p = run.data.params
        if "verdicts" in p:
            return (VerdictSettings.from_logged(json.loads(p["verdicts"])), p.get("baseline", "bp"),
                    json.loads(p.get("plugins", "[]")))
    return VerdictSettings(), "bp", []
