"""`harness search`: hyper-parameter search for fine-tuning, one Ray Tune run per rule, with the ASHA scheduler.

The search runs on one cell of the DAG (a dataset, backbone and task; the first of each unless named) and reuses
the DAG's pretraining from the artifact store. For each rule, trials draw lr_backbone, lr_head and weight_decay
log-uniformly within a factor `spread` of the DAG's values and train up to `max_epochs`; ASHA ends the worst
trials at each rung (epoch 1, 2, 4, ...). A trial is scored after every epoch by the task's metric (top-1 or mAP)
on a held-out part of the training split, chosen by sample key: the test split is never seen. The DAG's own
setting is scored the same way (the baseline), so a rule's result improves on it or keeps it. The best setting
of each rule, with `epochs` = the epoch where it peaked, is logged to MLflow and written as a DAG override:

    harness search dags/smoke.yaml --samples 8
    harness run dags/smoke.yaml --overrides runs/smoke/search/best.yaml
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field

from harness.config import plugins
from harness.execution.orchestrator import locations, run_level
from harness.execution.raytune import init_ray, run_trials
from harness.execution.store import ArtifactStore
from harness.execution.tracking import Tracker, default_uri
from harness.planning.dag import Dag
from harness.planning.plan import build_plan
from harness.stages import MODEL, Node, digest
from workloads import storage
from workloads.config import StageConfig
from workloads.errors import ConfigError, TrialError
from workloads.files import atomic_write_text
from workloads.settings import Count, Section

SEARCHED = ("lr_backbone", "lr_head", "weight_decay")
Log = Callable[[str], None]


class SearchSettings(Section):
    """The flags of `harness search` (each --flag is the field of the same name)."""

    rules: list[str] | None = None
    """Rules to search for (default: the DAG's)."""
    samples: Count = 8
    """Settings drawn per rule, on top of the DAG's own."""
    max_epochs: Count | None = None
    """Epochs a trial may run, ASHA's max_t (default: twice the DAG's fine-tuning epochs)."""
    validation: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Fraction of the training split held out to score trials."""
    spread: Annotated[float, Field(ge=1, le=1e6)] = 10.0
    """Each value is drawn log-uniformly in [v / spread, v * spread] around the DAG's v."""
    dataset: str | None = None
    backbone: str | None = None
    task: str | None = None


@dataclass
class Trial:
    rule: str
    phase: str  # "baseline" or "search"
    config: dict  # the searched values and the epochs it was allowed
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, validation score)
    loss: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None  # a diverging loss

    @property
    def peak(self) -> tuple[int, float] | None:
        """(epoch, score) of the best epoch, the earliest on a tie; None for a trial that never scored."""
        return max(self.curve, key=lambda p: (p[1], -p[0])) if self.curve else None

    @property
    def stopped_early(self) -> bool:
        return self.error is None and len(self.curve) < self.config["epochs"]


@dataclass
class SearchResult:
    cell: dict
    metric: str
    trials: list[Trial]
    best: dict  # rule -> {"finetune": {...}, "val": float, "from": "search" | "baseline"}
    override_path: Path
    figure_path: Path | None
    tracking_uri: str
    seconds: float


def search_space(base: dict, spread: float, max_epochs: int) -> dict:
    """Log-uniform ranges around the DAG's values; a value of 0 (no weight decay) stays 0."""
    from ray import tune

    space: dict = {"epochs": max_epochs}
    for key in SEARCHED:
        v = float(base[key])
        space[key] = tune.loguniform(v / spread, v * spread) if v > 0 else 0.0
    return space


def _cell(dag: Dag, nodes: list[Node], s: SearchSettings) -> tuple[dict, dict[str, Node], Node | None]:
    spec = dag.config
    tasks = list(spec.task_options())
    want = {"dataset": s.dataset or next(iter(spec.datasets)), "backbone": s.backbone or spec.backbones[0],
            "task": s.task or tasks[0], "seed": spec.seeds[0]}
    for axis, allowed in (("dataset", list(spec.datasets)), ("backbone", spec.backbones), ("task", tasks)):
        if want[axis] not in allowed:
            raise ConfigError(f"--{axis} {want[axis]}: not in {dag.path}; allowed: {', '.join(map(str, allowed))}")
    rules = s.rules or spec.rules
    unknown = [r for r in rules if r not in spec.rules]
    if unknown:
        raise ConfigError(f"--rules: {', '.join(unknown)} not in {dag.path}'s rules ({', '.join(spec.rules)})")
    fts = {n.axes["rule"]: n for n in nodes if n.stage == "finetune"
           and all(n.axes[k] == v for k, v in want.items())}
    pre_key = fts[rules[0]].inputs.get("pretrained")
    pre = next((n for n in nodes if n.stage == "pretrain" and n.key == pre_key), None)
    return want, {r: fts[r] for r in rules}, pre


def _trainable(config: dict, bases: dict[str, StageConfig], pretrained: tuple[str, str] | None, validation: float,
               plugin_names: list[str], threads: int) -> None:
    """One trial: fine-tune with the drawn values, report the validation score after every epoch. `pretrained`:
    (store root, pretrain node key), fetched on this machine when the store is remote."""
    import torch
    from ray import tune

    from harness.execution.allocator import keep_freed_memory
    from workloads.errors import DivergenceError
    from workloads.train import finetune_model

    keep_freed_memory()
    torch.set_num_threads(threads)
    plugins.load_plugins(plugin_names)
    base = bases[config["rule"]]
    model = None if pretrained is None else str(ArtifactStore(pretrained[0]).local_folder("pretrain", pretrained[1])
                                                / MODEL)
    cfg = base.model_copy(update={"finetune": base.finetune.model_copy(update=resolved(config, bases))})

    def on_epoch(epoch: int, row: dict) -> None:
        score = next(v for k, v in row.items() if k.startswith("val_"))
        tune.report({"val": score, "loss": row["loss"], "epoch": epoch + 1})

    try:
        finetune_model(model, config["rule"], cfg, progress=False, on_epoch=on_epoch, validation=validation)
    except DivergenceError as exc:
        # the lowest score there is, so ASHA ranks it last; the trial is marked and never chosen
        tune.report({"val": 0.0, "diverged": 1, "error": str(exc)})


def resolved(config: dict, bases: dict) -> dict:
    """A trial's fine-tuning values: the drawn ones, the DAG's for the rest (a baseline trial draws nothing)."""
    base = bases[config["rule"]].finetune.model_dump()
    return {k: config.get(k, base[k]) for k in (*SEARCHED, "epochs")}


def _recorder(runs: dict, phase: str, bases: dict) -> Callable:
    """Keeps each trial's validation curve in `runs` and words its progress line."""
    def describe(trial, result: dict) -> str:
        t = runs.setdefault(trial.trial_id, Trial(trial.config["rule"], phase, resolved(trial.config, bases)))
        if result.get("diverged"):
            t.error = result.get("error", "diverged")
            return f"diverged: {t.error}"
        epoch = int(result["epoch"])
        # a trial Tune restarted (its worker died) reports from epoch 1 again: keep the new attempt's curve
        t.curve = [p for p in t.curve if p[0] < epoch] + [(epoch, float(result["val"]))]
        t.loss = [p for p in t.loss if p[0] < epoch] + [(epoch, float(result["loss"]))]
        return f"epoch {epoch}/{t.config['epochs']} val {result['val']:.4f}"

    return describe


def _search(name: str, space: dict, phase: str, runs: dict, dag: Dag, root: str, constants: dict, log: Log,
            total: int, seed: int, **tune_config) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    grid = run_trials(name, _trainable, space, stage="search", resources="finetune", total=total,
                      settings=dag.config, storage=storage.join(root, "tune"), log=log, constants=constants,
                      describe=_recorder(runs, phase, constants["bases"]),
                      label=lambda t: f"{phase} {t.config['rule']} {t.trial_id}", metric="val", mode="max",
                      search_alg=BasicVariantGenerator(random_state=seed), **tune_config)  # same seed, same draws
    for result in grid:
        if result.error is not None:
            raise TrialError(f"a search trial failed: {str(result.error).strip().splitlines()[-1]}")


def choose(trials: list[Trial], rules: list[str], dag_epochs: dict[str, int]) -> dict:
    """Per rule, the best score: the baseline (the DAG's setting at its own epochs) unless a search trial beats it."""
    best = {}
    for rule in rules:
        base = next(t for t in trials if t.rule == rule and t.phase == "baseline")
        if base.error or not base.curve:
            raise TrialError(f"the DAG's own fine-tuning setting fails for {rule}: {base.error}; fix it before "
                              "tuning")
        chosen = {"finetune": {k: base.config[k] for k in SEARCHED} | {"epochs": dag_epochs[rule]},
                  "val": base.curve[-1][1], "from": "baseline"}
        for t in trials:
            if t.rule == rule and t.phase == "search" and t.error is None and t.peak and t.peak[1] > chosen["val"]:
                epoch, score = t.peak
                chosen = {"finetune": {k: t.config[k] for k in SEARCHED} | {"epochs": epoch}, "val": score,
                          "from": "search"}
        best[rule] = chosen
    return best


def write_override(path: Path, dag: Dag, cell: dict, metric: str, validation: float, best: dict) -> Path:
    """The winning settings as a DAG override file; a rule whose DAG setting won is left out (its cache stays)."""
    won = {r: {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in b["finetune"].items()}
           for r, b in best.items() if b["from"] == "search"}
    lines = [f"# Written by `harness search {dag.path}` on {time.strftime('%Y-%m-%d %H:%M')}: the best fine-tuning "
             "setting per rule,",
             f"# searched on {cell['dataset']}/{cell['backbone']}/{cell['task']} (seed {cell['seed']}) and scored by "
             f"validation {metric} on {validation:.0%} of the training split.",
             f"# Use it: harness run {dag.path} --overrides {path}"]
    for rule, b in best.items():
        note = "searched" if b["from"] == "search" else "the DAG's own setting scored best; kept, not written"
        lines.append(f"#   {rule}: validation {metric} {b['val']:.4f} ({note})")
    where = f"{cell['dataset']}/{cell['backbone']}/{cell['task']}"
    body = {"finetune_by_cell": {f"{where}/{r}": v for r, v in won.items()}} if won else {}
    text = "\n".join(lines) + "\n" + (yaml.safe_dump(body, sort_keys=True) if body else "{}\n")
    atomic_write_text(path, text)
    return path


def plot(trials: list[Trial], best: dict, metric: str, path: Path) -> Path:
    """Validation score per epoch, one panel per rule: ASHA's early stops show as short curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rules = list(best)
    fig, axes = plt.subplots(1, len(rules), figsize=(3.6 * len(rules), 3.2), squeeze=False, sharey=True)
    for ax, rule in zip(axes[0], rules, strict=True):
        for t in (t for t in trials if t.rule == rule and t.curve):
            xs, ys = zip(*t.curve, strict=True)
            base = t.phase == "baseline"
            ax.plot(xs, ys, "k--" if base else "-", marker="o", ms=3, lw=2 if base else 1,
                    alpha=1 if base else 0.6, label="DAG setting" if base else None)
        ax.set_title(f"{rule} (best {best[rule]['val']:.3f}, {best[rule]['from']})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0][0].set_ylabel(f"validation {metric}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_dag(dag: Dag, settings: SearchSettings, out_dir: str | Path | None = None,
               tracking_uri: str | None = None, address: str | None = None,
               override_path: str | Path | None = None, log: Log = print,
               store_root: str | None = None) -> SearchResult:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from workloads.tasks import get_task

    t0 = time.perf_counter()
    out, root = locations(dag, out_dir, store_root)
    store = ArtifactStore(storage.join(root, "store"))
    store.check_writable()
    nodes = build_plan(dag)
    cell, fts, pre = _cell(dag, nodes, settings)
    rules = list(fts)
    dag_epochs = {r: n.config.finetune.epochs for r, n in fts.items()}
    max_epochs = settings.max_epochs if settings.max_epochs is not None else 2 * max(dag_epochs.values())
    metric = get_task(cell["task"]).metric
    uri = tracking_uri or default_uri(out)
    tracker = Tracker(uri, dag.experiment, artifact_root=out / "mlartifacts")
    init_ray(address, log, plugins.loaded())

    if pre is not None and not store.done("pretrain", pre.key):
        log(f"[search] pretraining first: {pre.label}")
        errors = run_level(dag, "pretrain", [pre], store, storage.join(root, "tune"), log)
        if errors:
            raise TrialError(f"pretraining failed: {errors[pre.key]}")
    constants = {"bases": {r: n.config for r, n in fts.items()}, "validation": settings.validation,
                 "pretrained": (str(store.root), pre.key) if pre is not None else None,
                 "plugin_names": plugins.loaded()}
    tag = digest({"cell": cell, "rules": rules, "settings": settings.model_dump(),
                  "bases": {r: n.config.model_dump() for r, n in fts.items()}})
    runs: dict[str, Trial] = {}
    tracker.start_parent(f"search {time.strftime('%Y-%m-%d %H:%M:%S')}",
                         {**cell, "rules": rules, "samples": settings.samples, "max_epochs": max_epochs,
                          "validation": settings.validation, "spread": settings.spread, "metric": metric},
                         {"harness.dag": dag.path}, kind="search")
    status = "FAILED"
    try:
        log(f"[search] baseline: the DAG's setting for {', '.join(rules)}")
        _search(f"search-baseline-{tag}", {"rule": tune.grid_search(rules)}, "baseline", runs, dag, root, constants,
                log, total=len(rules), seed=cell["seed"])
        for rule in rules:
            log(f"[search] {rule}: {settings.samples} settings, up to {max_epochs} epochs, ASHA")
            space = {"rule": rule, **search_space(fts[rule].config.finetune.model_dump(), settings.spread,
                                                  max_epochs)}
            asha = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs, grace_period=1,
                                 reduction_factor=2)
            _search(f"search-{rule}-{tag}", space, "search", runs, dag, root, constants, log, total=settings.samples,
                    seed=cell["seed"], scheduler=asha, num_samples=settings.samples)
        trials = list(runs.values())
        best = choose(trials, rules, dag_epochs)
        folder = out / "search"
        path = write_override(Path(override_path) if override_path else folder / "best.yaml", dag, cell, metric,
                              settings.validation, best)
        figure = plot(trials, best, metric, folder / "search.png")
        _log_trials(tracker, trials, metric)
        tracker.end_parent("FINISHED", {
            **{f"best_val/{r}": b["val"] for r, b in best.items()},
            **{f"baseline_val/{t.rule}": t.curve[-1][1] for t in trials if t.phase == "baseline" and t.curve},
            "trials": len(trials), "stopped_early": sum(t.stopped_early for t in trials),
            "diverged": sum(t.error is not None for t in trials)},
            {"best.json": best}, files=[path, figure],
            params={f"best.{r}.{k}": v for r, b in best.items() for k, v in b["finetune"].items()})
        status = "FINISHED"
        return SearchResult(cell, metric, trials, best, path, figure, uri, time.perf_counter() - t0)
    finally:
        if status != "FINISHED":
            tracker.end_parent("FAILED", {})


def _log_trials(tracker: Tracker, trials: list[Trial], metric: str) -> None:
    for i, t in enumerate(trials):
        peak = t.peak
        tags = {"harness.kind": "search-trial", "axis.rule": t.rule, "search.phase": t.phase,
                "search.stopped_early": str(t.stopped_early).lower()}
        if t.error:
            tags["harness.error"] = t.error[:4000]
        metrics = {} if peak is None else {"best_val": peak[1], "best_epoch": peak[0]}
        tracker.log_child(f"search {t.phase} {t.rule} #{i}", tags, {"rule": t.rule, "metric": metric, **t.config},
                          metrics, {"val": t.curve, "train_loss": t.loss},
                          status="FAILED" if t.error else "FINISHED")


def format_result(r: SearchResult) -> str:
    lines = [f"searched on {r.cell['dataset']}/{r.cell['backbone']}/{r.cell['task']}: validation {r.metric}",
             f"{'rule':<6} {'baseline':>9} {'best':>8} {'from':<9} {'trials':>6} {'stopped':>7}  setting"]
    for rule, b in r.best.items():
        base = next(t for t in r.trials if t.rule == rule and t.phase == "baseline")
        searched = [t for t in r.trials if t.rule == rule and t.phase == "search"]
        setting = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in b["finetune"].items())
        lines.append(f"{rule:<6} {base.curve[-1][1]:>9.4f} {b['val']:>8.4f} {b['from']:<9} {len(searched):>6} "
                     f"{sum(t.stopped_early for t in searched):>7}  {setting}")
    lines.append(f"{r.seconds:.0f} s; override: {r.override_path}   figure: {r.figure_path}   MLflow: {r.tracking_uri}")
    return "\n".join(lines)
