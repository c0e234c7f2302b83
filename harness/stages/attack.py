"""Attacks: each fine-tuned model under every attack of the DAG that fits its task and rule, once per gradient
source, over the attack's budgets (docs/protocol.md, "Attacks"); the per-image outcomes feed the verdicts.

    attacks:
      - {name: pgd, sources: [rule, exact, transfer], eps: [0, 0.05, 0.1], n: 200, params: {steps: 5}}
      - {name: boundary, eps: [0, 0.5, 1, 2], n: 20, rules: [bp, frsf]}

A transfer attack crafts on the baseline's twin (same backbone, data, task, seed) and is scored on the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import polars as pl
from pydantic import Field, create_model, model_validator

from harness.config.grid import DagConfig, subset, unique
from harness.stages.base import MODEL, Node, NodeFiles, Plan, Progress, Stage, Tables, digest, finite, register_stage
from harness.stages.tables import by_budget, in_order, of_kind, rule_order, sort_rules, task_axis
from workloads.attacks import ATTACKS, GRADIENT_SOURCES, AttackConfig, Budgets, get_attack
from workloads.attacks.stage import AttackSample
from workloads.errors import ConfigError, Invalid
from workloads.names import Metric
from workloads.settings import Section, UnionTag
from workloads.tasks import get_task

OUTCOMES = "outcomes.parquet"  # an attack node's per-image outcome table


class AttackEntry(AttackSample):
    """One attack of the grid: which one, its budgets, gradient sources, sample, parameters, and the cells it runs
    on. Built once per registered attack (`name` picks which, `params` are that attack's)."""

    name: str
    eps: Budgets  # required; its description is the type's
    sources: list[Literal[GRADIENT_SOURCES]] | None = None
    """Gradient sources of a white-box attack (default: all three); query attacks take none."""
    params: Section = Section()
    rules: list[str] | None = None
    """The rules whose models it attacks (default: all of the DAG's; the baseline always among them)."""
    tasks: list[str] | None = None
    """The tasks whose models it attacks (default: all of the DAG's it applies to)."""

    @model_validator(mode="after")
    def _checked(self) -> AttackEntry:
        spec = get_attack(self.name)
        if spec.needs_gradient_source:
            self.sources = unique(self.sources or list(GRADIENT_SOURCES), "sources")
        elif self.sources:
            raise Invalid("sources", f"{self.name!r} queries outputs only; it takes no gradient source")
        try:  # the attack's own check; the sources and the parameters' keys passed above
            self.eps, self.params = spec.check(None, self.crafting_sources()[0], self.eps, self.params)
        except ConfigError as exc:
            raise Invalid("eps", f"{exc} ({self.name} measures {spec.norm_of(self.params)})") from None
        return self

    def crafting_sources(self) -> list[str | None]:
        """The gradient sources of its nodes; [None] for an attack that only queries the model."""
        return list(self.sources) if self.sources else [None]


def entry_type() -> object:
    """An `attacks` item: AttackEntry with each registered attack's name and parameters."""
    entries = tuple(create_model(f"{n.capitalize()}Attack", __base__=AttackEntry, name=(Literal[n], ...),
                                 params=(get_attack(n).params, Field(default_factory=get_attack(n).params)))
                    for n in ATTACKS.in_order())
    return Annotated[Union[entries], Field(discriminator="name"), UnionTag("attack", "attacks")]  # noqa: UP007


@register_stage
class Attack(Stage):
    name, level = "attack", 3
    artifacts = (OUTCOMES,)

    def sections(self) -> dict:
        return {"attacks": (list[entry_type()], [])}

    def check(self, dag: DagConfig) -> None:
        tasks, seen = list(dag.task_options()), set()
        for i, a in enumerate(dag.attacks):
            key = f"attacks[{i}]"
            if "transfer" in (a.sources or []) and dag.baseline not in dag.rules:
                raise Invalid(f"{key}.sources", f"'transfer' crafts on the sibling fine-tuned with the baseline rule "
                              f"({dag.baseline}): add {dag.baseline} to rules")
            if a.rules is not None and dag.baseline in dag.rules and dag.baseline not in a.rules:
                raise Invalid(f"{key}.rules", f"every attack also runs on the baseline's model ({dag.baseline}), on "
                              "the same images: a verdict compares the two on equal evidence (docs/evaluation.md); "
                              f"add {dag.baseline} to the list")
            a.rules = subset(a.rules, dag.rules, f"{key}.rules")
            spec = get_attack(a.name)
            fits = [t for t in tasks if get_task(t).kind in spec.tasks]
            if not fits:
                raise Invalid(f"{key}.name", f"attack {a.name!r} applies to {', '.join(spec.tasks)} models, and "
                              f"this DAG trains only {', '.join(tasks)}")
            a.tasks = subset(a.tasks, fits, f"{key}.tasks")
            if (a.name, tuple(a.tasks)) in seen:
                raise Invalid(key, f"attack {a.name!r} is listed twice for the same tasks; merge the entries")
            seen.add((a.name, tuple(a.tasks)))

    def nodes(self, plan: Plan) -> list[Node]:
        dag, out = plan.dag, []
        finetuned = {tuple(n.axes[k] for k in ("dataset", "backbone", "seed", "task", "rule")): n
                     for n in plan.of("finetune")}
        for ft in plan.of("finetune"):
            a = ft.axes
            for atk in dag.attacks:
                if a["task"] not in atk.tasks or a["rule"] not in atk.rules:
                    continue
                for source in atk.crafting_sources():
                    cfg = AttackConfig.model_construct(attack=atk.name, source=source, eps=atk.eps, n=atk.n,
                                                       batch_size=atk.batch_size, sample=atk.sample,
                                                       sample_seed=atk.sample_seed, params=atk.params,
                                                       device=dag.device, diagnostics=False)
                    inputs = {"model": ft}
                    if source == "transfer":
                        inputs["sibling"] = finetuned[(a["dataset"], a["backbone"], a["seed"], a["task"],
                                                       dag.baseline)]
                    keyed = {**cfg.model_dump(include={"attack", "source", "eps", "n", "batch_size", "params"}),
                             **atk.keyed()}
                    key = digest({"stage": self.name, "config": keyed,
                                  "inputs": {role: n.key for role, n in inputs.items()}})
                    label = f"attack {atk.name}/{source or 'query'} on {a['task']}/{a['rule']} " \
                            f"{a['dataset']}/{a['backbone']}/s{a['seed']}"
                    out.append(Node(self.name, key, label, {**a, "attack": atk.name, "source": source or "none"},
                                    cfg).reads(**inputs))
        return out

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        from workloads.attacks import run_config, write_outcomes

        cfg, metric, done = node.config, get_task(node.axes["task"]).attack_metric, []

        def on_row(row: dict) -> None:
            done.append(row)
            progress({"eps": row["eps"], "point": len(done), "points": len(cfg.eps), "metric": metric,
                      metric: row[metric]})

        sibling = files.inputs["sibling"] / MODEL if "sibling" in files.inputs else None
        result = run_config(cfg, files.inputs["model"] / MODEL, sibling, on_row)
        # the model by its place in the store, not by a path that is local to the machine that ran the node
        result["checkpoint"] = f"{node.upstream['model']}/{node.inputs['model']}/{MODEL}"
        write_outcomes(result.pop("outcomes"), files.folder / OUTCOMES)  # before result.json: that marks it done
        return result

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        cfg = node.config
        return get_attack(cfg.attack).passes(cfg.params, cfg.eps, cfg.n)

    def metrics(self, result: dict) -> dict[str, float]:
        """Each row's numbers as `<metric>/eps_<eps>` (MLflow's UI plots them; the report reads the rows)."""
        out = {f"{k}/eps_{row['eps']:g}": v for row in result["rows"] for k, v in row.items()
               if k not in ("attack", "source", "eps", "n") and finite(v)}
        out.update({f"diag_{k}": v for k, v in result.get("diagnostics", {}).items() if finite(v)})
        return out

    def rows(self, result: dict) -> list[dict]:
        return result["rows"]

    def figures(self, rows: pl.DataFrame, folder: Path, baseline: str) -> dict[str, Path]:
        path = robustness_figure(rows, folder / "robustness.png", baseline)
        return {"robustness": path} if path is not None else {}

    def report(self, runs: pl.DataFrame, rows: pl.DataFrame) -> Tables:
        return {
            "robustness": ("White-box robustness: accuracy vs eps, per gradient source",
                           budget_table(rows, "classification", ("gradient", "score"))),
            "hashing_attacks": ("Retrieval under hashing attacks: mAP vs eps",
                                budget_table(rows, "hashing", ("hashing",))),
            "blackbox": ("Black-box (decision-based) L-inf attacks: accuracy vs eps, minimal perturbation sizes",
                         blackbox_table(rows, "linf")),
            "blackbox_l2": ("Black-box (decision-based) L2 attacks: accuracy vs L2 budget, minimal perturbation sizes",
                            blackbox_table(rows, "l2")),
        }


def attack_rows(rows: pl.DataFrame, kind: str, families: tuple[str, ...]) -> pl.DataFrame:
    """The rows of attacks of these families on models of tasks of this kind."""
    rows = of_kind(rows, kind)
    if rows.is_empty():
        return rows
    names = [a for a in rows["attack"].unique().to_list() if a in ATTACKS.names()
             and get_attack(a).family in families]
    return rows.filter(pl.col("attack").is_in(names))


def attack_metric(rows: pl.DataFrame) -> str | None:
    """The metric attack rows of these tasks carry per budget (robust_acc, or map)."""
    return get_task(rows["task"][0]).attack_metric if not rows.is_empty() else None


def budget_table(rows: pl.DataFrame, kind: str, families: tuple[str, ...]) -> pl.DataFrame:
    """Per model axes, attack and source: the task's attack metric at each budget, mean over seeds."""
    rows = attack_rows(rows, kind, families)
    if rows.is_empty():
        return pl.DataFrame()
    metric = attack_metric(rows)
    return by_budget(rows, ["dataset", "backbone", *task_axis(rows), "attack", "source", "rule"], metric)


def blackbox_table(rows: pl.DataFrame, norm: str) -> pl.DataFrame:
    """Decision-based attacks whose budgets are in `norm`: accuracy per budget, median minimal perturbations."""
    rows = attack_rows(rows, "classification", ("decision",))
    if rows.is_empty() or "norm" not in rows.columns:
        return pl.DataFrame()
    rows = rows.filter(pl.col("norm") == norm)
    if rows.is_empty():
        return pl.DataFrame()
    index = ["dataset", "backbone", *task_axis(rows), "attack", "rule"]
    wide = by_budget(rows, index, attack_metric(rows), "eps" if norm == "linf" else norm.upper())
    # every row of a minimal attack carries the same sizes and queries; runs logged before the start search was
    # counted apart have no start/own queries
    spent = {Metric.MEDIAN_L2: "median L2", Metric.MEDIAN_LINF: "median Linf", Metric.QUERIES: "queries/image",
             Metric.START_QUERIES: "start search/image", Metric.OWN_QUERIES: "own queries/attacked image"}
    spent = {k: v for k, v in spent.items() if k in rows.columns}
    sizes = (rows.group_by([*index, "run_id"]).agg(pl.col(k).first().alias(v) for k, v in spent.items())
             .group_by(index).agg(pl.col(v).mean() for v in spent.values()))
    return sort_rules(wide.join(sizes, on=index, how="left"), index)


def robustness_figure(rows: pl.DataFrame, path: Path, baseline: str = "bp") -> Path | None:
    """Accuracy against the L-inf budget: one row of panels per gradient attack on the classification models, one
    panel per gradient source, one curve per rule (the baseline dashed), into `path`; None if there are none. A
    panel the DAG did not ask for says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = attack_rows(rows, "classification", ("gradient",))
    if rows.is_empty():
        return None
    metric = attack_metric(rows)
    long = rows.group_by(["attack", "source", "rule", "eps"]).agg(pl.col(metric).mean())
    attacks = in_order(long["attack"].unique().to_list(), ATTACKS.in_order())
    sources = [s for s in GRADIENT_SOURCES if s in long["source"].unique().to_list()]
    rules = rule_order(long["rule"].unique().to_list())
    fig, axes = plt.subplots(len(attacks), len(sources), figsize=(4 * len(sources), 3.2 * len(attacks)),
                             squeeze=False, sharex=True, sharey=True)
    legend_ax = None
    for i, atk in enumerate(attacks):
        for j, src in enumerate(sources):
            ax = axes[i][j]
            drawn = 0
            for rule in rules:
                d = long.filter((pl.col("attack") == atk) & (pl.col("source") == src) & (pl.col("rule") == rule))
                if not d.is_empty():
                    d = d.sort("eps")
                    ax.plot(d["eps"].to_list(), d[metric].to_list(), marker="o", label=rule,
                            linestyle="--" if rule == baseline else "-")
                    drawn += 1
            if drawn and legend_ax is None:
                legend_ax = ax
            if not drawn:  # an empty grid reads as a plotting bug; say the DAG did not ask for it
                ax.text(0.5, 0.5, "not run in this DAG", transform=ax.transAxes, ha="center", va="center",
                        color="grey")
            ax.set_title(f"{atk.upper()}, {src} gradient")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == len(attacks) - 1:
                ax.set_xlabel("eps (L-inf, [0,1] pixels)")
            if j == 0:
                ax.set_ylabel("robust accuracy")
    legend_ax.legend(title="rule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
