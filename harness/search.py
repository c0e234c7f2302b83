"""`harness tune`: hyper-parameter search for fine-tuning, one Ray Tune run per rule, with the ASHA scheduler.

The search runs on one cell of the DAG (a dataset, backbone and task; the first of each unless named) and reuses
the DAG's pretraining from the artifact store. For each rule, trials draw lr_backbone, lr_head and weight_decay
log-uniformly within a factor `spread` of the DAG's values and train up to `max_epochs`; ASHA ends the worst
trials at each rung (epoch 1, 2, 4, ...). A trial is scored after every epoch by the task's metric (top-1 or mAP)
on a held-out part of the training split, chosen by sample key: the test split is never seen. The DAG's own
setting is scored the same way (the baseline), so a rule's result improves on it or keeps it. The best setting
of each rule, with `epochs` = the epoch where it peaked, is logged to MLflow and written as a DAG override:

    harness tune dags/smoke.yaml --samples 8
    harness run dags/smoke.yaml --overrides runs/smoke/tune/best.yaml
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.dag import Dag
from harness.errors import HarnessError
from harness.plan import Node, build_plan, digest
from harness.store import ArtifactStore, atomic_write_text
from harness.tracking import Tracker, default_uri

SEARCHED = ("lr_backbone", "lr_head", "weight_decay")
Log = Callable[[str], None]


class SearchError(HarnessError):
    pass


@dataclass
class Settings:
    rules: list[str] | None = None  # default: the DAG's rules
    samples: int = 8  # sampled settings per rule, on top of the baseline
    max_epochs: int | None = None  # default: twice the DAG's fine-tuning epochs
    validation: float = 0.2  # held-out fraction of the training split
    spread: float = 10.0  # each value is drawn from [v / spread, v * spread]
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


def _cell(dag: Dag, nodes: list[Node], s: Settings) -> tuple[dict, dict[str, Node], Node | None]:
    spec = dag.spec
    want = {"dataset": s.dataset or next(iter(spec["datasets"])), "backbone": s.backbone or spec["backbones"][0],
            "task": s.task or next(iter(spec["tasks"])), "seed": spec["seeds"][0]}
    for axis, allowed in (("dataset", list(spec["datasets"])), ("backbone", spec["backbones"]),
                          ("task", list(spec["tasks"]))):
        if want[axis] not in allowed:
            raise SearchError(f"--{axis} {want[axis]}: not in {dag.path}; allowed: {', '.join(map(str, allowed))}")
    rules = s.rules or spec["rules"]
    unknown = [r for r in rules if r not in spec["rules"]]
    if unknown:
        raise SearchError(f"--rules: {', '.join(unknown)} not in {dag.path}'s rules ({', '.join(spec['rules'])})")
    fts = {n.axes["rule"]: n for n in nodes if n.stage == "finetune"
           and all(n.axes[k] == v for k, v in want.items())}
    pre_key = fts[rules[0]].inputs.get("pretrained")
    pre = next((n for n in nodes if n.stage == "pretrain" and n.key == pre_key), None)
    return want, {r: fts[r] for r in rules}, pre


def _trainable(config: dict, bases: dict, pretrained: str | None, validation: float, threads: int) -> None:
    """One trial: fine-tune with the drawn values, report the validation score after every epoch."""
    import torch
    from ray import tune

    from harness.runtime import tune_allocator
    from workloads.train import DivergenceError, finetune_model

    tune_allocator()
    torch.set_num_threads(threads)
    cfg = copy.deepcopy(bases[config["rule"]])
    cfg["finetune"].update(resolved(config, bases))

    def on_epoch(epoch: int, row: dict) -> None:
        score = next(v for k, v in row.items() if k.startswith("val_"))
        tune.report({"val": score, "loss": row["loss"], "epoch": epoch + 1})

    try:
        finetune_model(pretrained, config["rule"], cfg, progress=False, on_epoch=on_epoch, validation=validation)
    except DivergenceError as exc:
        # the lowest score there is, so ASHA ranks it last; the trial is marked and never chosen
        tune.report({"val": 0.0, "diverged": 1, "error": str(exc)})


def resolved(config: dict, bases: dict) -> dict:
    """A trial's fine-tuning values: the drawn ones, the DAG's for the rest (a baseline trial draws nothing)."""
    base = bases[config["rule"]]["finetune"]
    return {k: config.get(k, base[k]) for k in (*SEARCHED, "epochs")}


def _recorder(runs: dict, phase: str, bases: dict, log: Log):
    from ray.tune import Callback

    class Record(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ARG002
            t = runs.setdefault(trial.trial_id, Trial(trial.config["rule"], phase, resolved(trial.config, bases)))
            if result.get("diverged"):
                t.error = result.get("error", "diverged")
                log(f"[tune {phase} {t.rule}] {trial.trial_id}: diverged: {t.error}")
                return
            epoch = int(result["epoch"])
            # a trial Tune restarted (its worker died) reports from epoch 1 again: keep the new attempt's curve
            t.curve = [p for p in t.curve if p[0] < epoch] + [(epoch, float(result["val"]))]
            t.loss = [p for p in t.loss if p[0] < epoch] + [(epoch, float(result["loss"]))]
            log(f"[tune {phase} {t.rule}] {trial.trial_id}: epoch {result['epoch']}/{t.config['epochs']} "
                f"val {result['val']:.4f}")

    return Record()


def _fit(name: str, space: dict, trainable, num_samples: int, scheduler, seed: int, dag: Dag, out_dir: Path,
         callback) -> None:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric="val", mode="max", scheduler=scheduler, num_samples=num_samples,
                                    search_alg=BasicVariantGenerator(random_state=seed),  # same seed, same draws
                                    max_concurrent_trials=dag["max_concurrent"] or None),
        run_config=tune.RunConfig(name=name, storage_path=str((out_dir / "tune").resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=dag["retries"]),
                                  callbacks=[callback]),
    )
    for result in tuner.fit():
        if result.error is not None:
            raise SearchError(f"a tuning trial failed: {str(result.error).strip().splitlines()[-1]}")


def choose(trials: list[Trial], rules: list[str], dag_epochs: dict[str, int]) -> dict:
    """Per rule, the best score: the baseline (the DAG's setting at its own epochs) unless a search trial beats it."""
    best = {}
    for rule in rules:
        base = next(t for t in trials if t.rule == rule and t.phase == "baseline")
        if base.error or not base.curve:
            raise SearchError(f"the DAG's own fine-tuning setting fails for {rule}: {base.error}; fix it before "
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
    lines = [f"# Written by `harness tune {dag.path}` on {time.strftime('%Y-%m-%d %H:%M')}: the best fine-tuning "
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


def tune_dag(dag: Dag, settings: Settings, out_dir: str | Path | None = None, tracking_uri: str | None = None,
             address: str | None = None, override_path: str | Path | None = None,
             log: Log = print) -> SearchResult:
    from ray.tune.schedulers import ASHAScheduler

    from harness.orchestrator import init_ray, run_level, stage_resources
    from workloads.tasks import get_task

    t0 = time.perf_counter()
    if not 0 < settings.validation < 1:
        raise SearchError(f"--validation {settings.validation}: a fraction in (0, 1) of the training split")
    if settings.samples < 1 or settings.spread < 1:
        raise SearchError("--samples must be at least 1 and --spread at least 1")
    if settings.max_epochs is not None and settings.max_epochs < 1:
        raise SearchError(f"--max-epochs {settings.max_epochs}: at least 1")
    out = Path(out_dir or Path("runs") / dag.experiment).resolve()
    store = ArtifactStore(out / "store")
    store.check_writable()
    nodes = build_plan(dag)
    cell, fts, pre = _cell(dag, nodes, settings)
    rules = list(fts)
    dag_epochs = {r: n.config["finetune"]["epochs"] for r, n in fts.items()}
    max_epochs = settings.max_epochs if settings.max_epochs is not None else 2 * max(dag_epochs.values())
    metric = get_task(cell["task"]).metric
    uri = tracking_uri or default_uri(out)
    tracker = Tracker(uri, dag.experiment, artifact_root=out / "mlartifacts")
    init_ray(address, log)

    if pre is not None and not store.done("pretrain", pre.key):
        log(f"[tune] pretraining first: {pre.label}")
        errors = run_level(dag, "pretrain", [pre], store, out, log)
        if errors:
            raise SearchError(f"pretraining failed: {errors[pre.key]}")
    pretrained = str(store.model_path("pretrain", pre.key)) if pre is not None else None

    from ray import tune

    res = stage_resources(dag, "finetune", log)
    threads = max(1, int(res["cpu"]))
    bases = {r: n.config for r, n in fts.items()}
    trainable = tune.with_resources(tune.with_parameters(_trainable, bases=bases, pretrained=pretrained,
                                                         validation=settings.validation, threads=threads), res)
    tag = digest({"cell": cell, "rules": rules, "settings": settings.__dict__, "bases": bases})
    runs: dict[str, Trial] = {}
    tracker.start_parent(f"tune {time.strftime('%Y-%m-%d %H:%M:%S')}",
                         {**cell, "rules": rules, "samples": settings.samples, "max_epochs": max_epochs,
                          "validation": settings.validation, "spread": settings.spread, "metric": metric},
                         {"harness.dag": dag.path}, kind="tune")
    status = "FAILED"
    try:
        log(f"[tune] baseline: the DAG's setting for {', '.join(rules)}")
        _fit(f"tune-baseline-{tag}", {"rule": tune.grid_search(rules)}, trainable, 1, None, cell["seed"], dag, out,
             _recorder(runs, "baseline", bases, log))
        for rule in rules:
            log(f"[tune] search {rule}: {settings.samples} settings, up to {max_epochs} epochs, ASHA")
            space = {"rule": rule, **search_space(bases[rule]["finetune"], settings.spread, max_epochs)}
            asha = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs, grace_period=1,
                                 reduction_factor=2)
            _fit(f"tune-{rule}-{tag}", space, trainable, settings.samples, asha, cell["seed"], dag, out,
                 _recorder(runs, "search", bases, log))
        trials = list(runs.values())
        best = choose(trials, rules, dag_epochs)
        folder = out / "tune"
        path = write_override(Path(override_path) if override_path else folder / "best.yaml", dag, cell, metric,
                              settings.validation, best)
        figure = plot(trials, best, metric, folder / "tune.png")
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
        tags = {"harness.kind": "tune-trial", "axis.rule": t.rule, "tune.phase": t.phase,
                "tune.stopped_early": str(t.stopped_early).lower()}
        if t.error:
            tags["harness.error"] = t.error[:4000]
        metrics = {} if peak is None else {"best_val": peak[1], "best_epoch": peak[0]}
        tracker.log_child(f"tune {t.phase} {t.rule} #{i}", tags, {"rule": t.rule, "metric": metric, **t.config},
                          metrics, {"val": t.curve, "train_loss": t.loss},
                          status="FAILED" if t.error else "FINISHED")


def format_result(r: SearchResult) -> str:
    lines = [f"tuned on {r.cell['dataset']}/{r.cell['backbone']}/{r.cell['task']}: validation {r.metric}",
             f"{'rule':<6} {'baseline':>9} {'best':>8} {'from':<9} {'trials':>6} {'stopped':>7}  setting"]
    for rule, b in r.best.items():
        base = next(t for t in r.trials if t.rule == rule and t.phase == "baseline")
        searched = [t for t in r.trials if t.rule == rule and t.phase == "search"]
        setting = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in b["finetune"].items())
        lines.append(f"{rule:<6} {base.curve[-1][1]:>9.4f} {b['val']:>8.4f} {b['from']:<9} {len(searched):>6} "
                     f"{sum(t.stopped_early for t in searched):>7}  {setting}")
    lines.append(f"{r.seconds:.0f} s; override: {r.override_path}   figure: {r.figure_path}   MLflow: {r.tracking_uri}")
    return "\n".join(lines)
