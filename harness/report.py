"""`harness report EXPERIMENT`: MLflow runs -> polars -> the tables and figure docs/protocol.md ("The report") lists.

Writes `results/<experiment>/`: verdicts.{csv,md}, clean.{csv,md} (top-1 and mAP), robustness.{csv,md,png}
(accuracy vs L-inf eps per gradient source, and score-based attacks), hashing_attacks.{csv,md} and
hashing_worst.{csv,md} (the per-query worst case, with intervals), blackbox.{csv,md}
(L-inf decision attacks), blackbox_l2.{csv,md} (L2 ones: Boundary), diagnostics.{csv,md}, and README.md with all
of them and one verdict line per cell. Reads only MLflow, so it works on a run logged to a remote server.
When a node was run more than once (an eps grid changed), the latest finished run of those axes is the one shown.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

import rules
from harness.verdicts import VerdictSettings, retrieval_worst_case
from workloads.attacks import ATTACKS, GRADIENT_SOURCES, get_attack
from workloads.errors import InputError, ServiceError
from workloads.names import AXES, Metric, Stage
from workloads.tasks import get_task

EPS_METRIC = re.compile(r"^metrics\.(?P<metric>[a-z_0-9]+)/eps_(?P<eps>[0-9.e-]+)$")


def load_runs(tracking_uri: str, experiment: str) -> pl.DataFrame:
    """Finished node runs of the experiment, one row per node (latest run per stage and axes)."""
    import mlflow

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
    keys = ["stage", *AXES]
    return df.sort("start", descending=True).unique(subset=keys, keep="first", maintain_order=True)


def _markdown(df: pl.DataFrame, digits: int = 3) -> str:
    cols = df.columns
    def cell(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def _in_order(names: list[str], order: list[str]) -> list[str]:
    """`names` in registration order; names not registered (an old run's) last, alphabetically."""
    return sorted(names, key=lambda r: (order.index(r) if r in order else len(order), r))


def _rule_order(names: list[str]) -> list[str]:
    return _in_order(names, rules.ordered_rules())


def _eps_long(df: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Attack runs -> one row per (axes, eps) with the metric's value."""
    out = []
    cols = [c for c in df.columns if (m := EPS_METRIC.match(c)) and m["metric"] == metric]
    for row in df.iter_rows(named=True):
        for c in cols:
            if row[c] is not None:
                out.append({**{a: row[a] for a in AXES}, "eps": float(EPS_METRIC.match(c)["eps"]), metric: row[c]})
    schema = {a: pl.String for a in AXES} | {"eps": pl.Float64, metric: pl.Float64}
    return pl.DataFrame(out, schema=schema)


def _wide(long: pl.DataFrame, index: list[str], metric: str) -> pl.DataFrame:
    """eps as columns, mean over seeds."""
    if long.is_empty():
        return long
    agg = long.group_by([*index, "eps"]).agg(pl.col(metric).mean()).sort([*index, "eps"])
    eps_values = sorted(agg["eps"].unique().to_list())
    table = agg.pivot(on="eps", index=index, values=metric, sort_columns=True)
    table = table.rename({str(e): f"eps {e:g}" for e in eps_values if str(e) in table.columns})
    return _sort_rules(table, index)


def _sort_rules(df: pl.DataFrame, index: list[str]) -> pl.DataFrame:
    if "rule" not in df.columns or df.is_empty():
        return df
    order = {r: i for i, r in enumerate(_rule_order(df["rule"].unique().to_list()))}
    src = {s: i for i, s in enumerate(GRADIENT_SOURCES)}
    atk = {a: i for i, a in enumerate(ATTACKS.in_order())}
    keyed = df.with_columns(
        pl.col("rule").replace_strict(order, default=99).alias("_r"),
        (pl.col("source").replace_strict(src, default=9) if "source" in df.columns else pl.lit(0)).alias("_s"),
        (pl.col("attack").replace_strict(atk, default=9) if "attack" in df.columns else pl.lit(0)).alias("_a"),
    )
    lead = [c for c in index if c not in ("rule", "source", "attack")]
    names = [c for c in ("attack",) if c in df.columns]  # attacks no longer registered: by name
    return keyed.sort([*lead, "_a", *names, "_s", "_r"]).drop(["_r", "_s", "_a"])


def clean_table(runs: pl.DataFrame) -> pl.DataFrame:
    ev = runs.filter(pl.col("stage") == Stage.EVALUATE)
    rows = []
    for r in ev.iter_rows(named=True):
        task = get_task(r["task"])
        value = r.get(f"metrics.{task.metric}")
        if value is not None:
            rows.append({"dataset": r["dataset"], "backbone": r["backbone"], "task": r["task"],
                         "metric": task.metric_label, "rule": r["rule"], "value": value})
    if not rows:
        return pl.DataFrame()
    df = pl.DataFrame(rows).group_by(["dataset", "backbone", "task", "metric", "rule"]).agg(pl.col("value").mean())
    wide = df.pivot(on="rule", index=["dataset", "backbone", "task", "metric"], values="value")
    rules = _rule_order([c for c in wide.columns if c not in ("dataset", "backbone", "task", "metric")])
    return wide.select(["dataset", "backbone", "task", "metric", *rules]).sort(["dataset", "backbone", "task"])


def diagnostics_table(runs: pl.DataFrame) -> pl.DataFrame:
    ev = runs.filter(pl.col("stage") == Stage.EVALUATE)
    cols = {f"metrics.{Metric.ANGLE}": "B-W angle (deg, mean over layers)",
            f"metrics.{Metric.GRAD_COSINE}": "cos(rule grad, exact grad)"}
    present = [c for c in cols if c in ev.columns]
    if ev.is_empty() or not present:
        return pl.DataFrame()
    df = ev.group_by(["dataset", "backbone", "task", "rule"]).agg([pl.col(c).mean() for c in present])
    return _sort_rules(df.rename({c: cols[c] for c in present}), ["dataset", "backbone", "task", "rule"])


def _attack_runs(runs: pl.DataFrame, task: str, families: tuple[str, ...]) -> pl.DataFrame:
    atk = runs.filter((pl.col("stage") == Stage.ATTACK) & (pl.col("task") == task))
    names = [a for a in atk["attack"].unique().to_list() if get_attack(a).family in families] if len(atk) else []
    return atk.filter(pl.col("attack").is_in(names))


CLASSIFICATION, HASHING = "classification", "hashing"
ROBUST, ROBUST_MAP = get_task(CLASSIFICATION).attack_metric, get_task(HASHING).attack_metric


def robustness_table(runs: pl.DataFrame) -> pl.DataFrame:
    long = _eps_long(_attack_runs(runs, CLASSIFICATION, ("gradient", "score")), ROBUST)
    return _wide(long, ["dataset", "backbone", "attack", "source", "rule"], ROBUST)


def hashing_attack_table(runs: pl.DataFrame) -> pl.DataFrame:
    long = _eps_long(_attack_runs(runs, HASHING, ("hashing",)), ROBUST_MAP)
    return _wide(long, ["dataset", "backbone", "attack", "source", "rule"], ROBUST_MAP)


def _norm(row: dict) -> str:
    """The norm an attack run's budgets were in (its spec's, or the `constraint` it ran with)."""
    import json

    constraint = row.get("param.params.constraint")  # a string parameter is logged as it is, others as JSON
    if constraint and constraint.startswith('"'):
        constraint = json.loads(constraint)
    return get_attack(row["attack"]).norm_of({"constraint": constraint} if constraint else None)


def blackbox_table(runs: pl.DataFrame, norm: str = "linf") -> pl.DataFrame:
    """Decision-based attacks whose budgets are in `norm`: accuracy per budget, median minimal perturbations."""
    atk = _attack_runs(runs, CLASSIFICATION, ("decision",))
    atk = atk.filter(pl.Series([_norm(r) == norm for r in atk.iter_rows(named=True)], dtype=pl.Boolean))
    if atk.is_empty():
        return pl.DataFrame()
    wide = _wide(_eps_long(atk, ROBUST), ["dataset", "backbone", "attack", "rule"], ROBUST)
    if norm != "linf":
        wide = wide.rename({c: c.replace("eps ", f"{norm.upper()} ") for c in wide.columns if c.startswith("eps ")})
    extra = []
    for r in atk.iter_rows(named=True):
        first = {m["metric"]: r[c] for c in atk.columns if (m := EPS_METRIC.match(c)) and r[c] is not None}
        extra.append({"dataset": r["dataset"], "backbone": r["backbone"], "attack": r["attack"], "rule": r["rule"],
                      "median L2": first.get(Metric.MEDIAN_L2), "median Linf": first.get(Metric.MEDIAN_LINF),
                      "queries/image": first.get(Metric.QUERIES)})
    sizes = pl.DataFrame(extra).group_by(["dataset", "backbone", "attack", "rule"]).agg(
        pl.col("median L2").mean(), pl.col("median Linf").mean(), pl.col("queries/image").mean())
    return _sort_rules(wide.join(sizes, on=["dataset", "backbone", "attack", "rule"], how="left"),
                       ["dataset", "backbone", "attack", "rule"])


def robustness_figure(runs: pl.DataFrame, path: Path) -> Path | None:
    """Accuracy vs eps: one row of panels per gradient attack, one panel per source, one curve per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = _eps_long(_attack_runs(runs, CLASSIFICATION, ("gradient",)), ROBUST)
    if long.is_empty():
        return None
    long = long.group_by(["attack", "source", "rule", "eps"]).agg(pl.col(ROBUST).mean())
    attacks = _in_order(long["attack"].unique().to_list(), ATTACKS.in_order())
    sources = [s for s in GRADIENT_SOURCES if s in long["source"].unique().to_list()]
    rules = _rule_order(long["rule"].unique().to_list())
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
                    ax.plot(d["eps"].to_list(), d[ROBUST].to_list(), marker="o", label=rule,
                            linestyle="--" if rule == "bp" else "-")
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


def load_outcomes(runs: pl.DataFrame, tracking_uri: str, task: str = "classification") -> pl.DataFrame:
    """Every classification attack and convergence node's per-image outcomes (its MLflow artifact), with the node's
    axes (a re-run's `attack` is `harness.verdicts.RERUN` + its attack's name)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    attacks = runs.filter(pl.col("stage").is_in([Stage.ATTACK, Stage.CONVERGE]) & (pl.col("task") == task))
    kind = get_task(task).kind
    columns = ["clean", "robust", "robust_raw"] if kind == CLASSIFICATION else ["clean_ap", "ap", "ap_raw"]
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in attacks.iter_rows(named=True):
            try:
                path = download_artifacts(run_id=r["run_id"], artifact_path="outcomes.parquet",
                                          dst_path=f"{tmp}/{r['run_id']}", tracking_uri=tracking_uri)
            except Exception:  # noqa: BLE001  (a run logged before outcomes were kept: it has no verdict evidence)
                continue
            table = pl.read_parquet(path)
            if "norm" not in table.columns:  # written before budgets had a norm: every attack then was L-inf's
                table = table.with_columns(pl.lit("linf").alias("norm"))
            frames.append(table.select("image", "eps", "norm", *columns)
                          .with_columns(*[pl.lit(r[a], dtype=pl.String).alias(a) for a in AXES]))
    return pl.concat(frames) if frames else pl.DataFrame()


def verdict_settings(tracking_uri: str, experiment: str) -> VerdictSettings:
    """The `verdicts` section of the DAG the latest `harness run` ran (logged on its parent run)."""
    import json

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    parents = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'run'", output_format="list",
                                 order_by=["attributes.start_time DESC"], max_results=20)
    for run in parents:
        if "verdicts" in run.data.params:
            return VerdictSettings.from_logged(json.loads(run.data.params["verdicts"]))
    return VerdictSettings()


def verdict_report(runs: pl.DataFrame, outcomes: pl.DataFrame, settings: VerdictSettings) -> tuple[
        list[str], pl.DataFrame, list[str]]:
    """Per cell: its verdict line; a table row (clean and worst-case accuracy with intervals, each check's
    outcome); and each check's numbers."""
    from harness.verdicts import MODEL, SIGN, assess, blackbox_strength, decide

    outcomes = [o for o in outcomes if not o.is_empty()]
    if not outcomes:
        return [], pl.DataFrame(), []
    families = {n: get_attack(n).family for n in ATTACKS.in_order()}
    single = {n for n in ATTACKS.in_order() if get_attack(n).single_step}
    cosine = {tuple(r[k] for k in MODEL): r.get(f"metrics.{Metric.GRAD_COSINE}")
              for r in runs.filter(pl.col("stage") == Stage.EVALUATE).iter_rows(named=True)}
    reran = {tuple(r[k] for k in MODEL) for r in runs.filter(pl.col("stage") == Stage.CONVERGE).iter_rows(named=True)}
    cells, models = [], []
    for table in outcomes:  # one task kind each: their per-image columns differ
        mine = [dict(zip(MODEL, m, strict=True)) for m in table.select(MODEL).unique().sort(MODEL).iter_rows()
                if m[MODEL.index("task")] in settings.primary]
        order = {r: i for i, r in enumerate(_rule_order([m["rule"] for m in mine]))}
        mine.sort(key=lambda m: (m["dataset"], m["backbone"], m["task"], m["seed"], order[m["rule"]]))
        for m in mine:
            bp = {**m, "rule": "bp"}
            if any(x == bp for x in mine):
                cells.append(assess(table, m, bp, settings, families, single,
                                    cosine.get(tuple(bp[k] for k in MODEL)), tuple(m[k] for k in MODEL) in reran))
        models += [(m, table) for m in mine]
    cells = decide(cells, settings)  # Holm over every cell of the report, both tasks
    rows = []
    for c in cells:
        row = {**c.model, "verdict": c.verdict, "clean": c.clean.value, "clean_lo": c.clean.interval[0],
               "clean_hi": c.clean.interval[1], "worst": c.worst.value, "worst_lo": c.worst.interval[0],
               "worst_hi": c.worst.interval[1], "n": c.worst.n, "broken_by": c.broken_by,
               "own_gradient": c.own.value if c.own else None,
               "bp_worst": c.bp_worst.value if c.bp_worst else None}
        row.update({ch.name: {True: "yes", False: "no", None: "n/a"}[ch.passed] if ch.kind == SIGN else
                    {True: "pass", False: "FAIL", None: "n/a"}[ch.passed] for ch in c.checks})
        rows.append(row)
    lines = [c.line for c in cells if c.model["rule"] != "bp"] + _rule_lines(cells)
    checks = [f"{c.model['rule']} ({c.model['dataset']}/{c.model['backbone']}, seed {c.model['seed']}), "
              f"{ch.name}: {ch.detail}" for c in cells if c.model["rule"] != "bp" for ch in c.checks]
    for m, table in [(m, t) for m, t in models if m["rule"] == "bp"]:  # is each black-box attack strong enough?
        bp = table.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))
        for ch in blackbox_strength(bp, settings.primary[m["task"]], families, settings.blackbox_weak_above):
            lines.append(f"{ch.detail} ({m['dataset']}/{m['backbone']}, seed {m['seed']}).")
    return lines, pl.DataFrame(rows) if rows else pl.DataFrame(), checks


def _rule_lines(cells: list) -> list[str]:
    """A verdict about a rule, not one model, needs three or more seeds (docs/evaluation.md): each seed's verdict is
    decided on its own (Holm over every cell), then the rule line says whether they agree and gives the worst case
    and the own-gradient number as a mean with its t-interval across seeds."""
    from harness.stats import t_interval

    def across(values: list[float], f) -> str:
        lo, hi = t_interval(values)
        return f"{f(sum(values) / len(values))} mean, t-interval [{f(lo)}, {f(hi)}]"

    lines, groups = [], {}
    for c in cells:
        groups.setdefault(tuple(c.model[k] for k in ("dataset", "backbone", "task", "rule")), []).append(c)
    for (dataset, backbone, task, rule), cs in groups.items():
        if rule == "bp" or len(cs) < 3:
            continue
        f = cs[0].measure.fmt
        verdicts = sorted({c.verdict for c in cs})
        what = verdicts[0] if len(verdicts) == 1 else f"mixed across seeds ({', '.join(verdicts)})"
        text = (f"**{rule}** ({dataset}/{backbone}/{task}, the rule over {len(cs)} seeds): {what}; worst case "
                f"{across([c.worst.value for c in cs], f)}")
        if all(c.own is not None for c in cs):
            text += f"; its own gradient says {across([c.own.value for c in cs], f)}"
        lines.append(text + ".")
    return lines


def attack_notes(runs: pl.DataFrame) -> list[str]:
    """Where an attack ran with settings other than its paper-faithful defaults, say so."""
    import json

    atk = runs.filter(pl.col("stage") == Stage.ATTACK)
    notes = []
    for name in sorted(atk["attack"].unique().to_list()) if len(atk) else []:
        defaults = get_attack(name).defaults
        rows = atk.filter(pl.col("attack") == name)
        changed = {}
        for col in [c for c in rows.columns if c.startswith("param.params.")]:
            key = col.removeprefix("param.params.")
            for v in rows[col].drop_nulls().unique().to_list():
                try:
                    value = json.loads(v)
                except ValueError:
                    value = v
                if key in defaults and value != defaults[key]:
                    changed.setdefault(key, set()).add(str(value))
        if changed:
            text = ", ".join(f"{k} {'/'.join(sorted(v))} (default {defaults[k]})" for k, v in sorted(changed.items()))
            notes.append(f"{name} ran with reduced or changed settings: {text}.")
    for rule in _rule_order(atk["rule"].unique().to_list() if len(atk) else []):
        if rule in rules.available_rules() and rules.get_rule(rule).random_per_pass:
            notes.append(f"{rule} redraws its feedback magnitudes at every backward pass, attacks included "
                         "(BioTorch's behaviour, docs/protocol.md): a `rule`-source attacker sees a new B at every "
                         "step.")
    return notes


def write_report(tracking_uri: str, experiment: str, out_dir: str | Path, notes: list[str] | None = None) -> dict:
    runs = load_runs(tracking_uri, experiment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = verdict_settings(tracking_uri, experiment)
    outcomes = {task: load_outcomes(runs, tracking_uri, task) for task in (CLASSIFICATION, HASHING)}
    lines, verdict_table, checks = verdict_report(runs, list(outcomes.values()), settings)
    retrieval_eps = settings.primary.get(HASHING)
    retrieval = (retrieval_worst_case(outcomes[HASHING], retrieval_eps) if retrieval_eps is not None
                 else pl.DataFrame())
    budgets = ", ".join(f"{task} eps {eps:g}" for task, eps in settings.primary.items())
    tables = {
        "verdicts": (f"Verdicts at the primary budget ({budgets}; margin {settings.delta:g}): clean and worst-case "
                     "accuracy with Wilson 95% intervals (hashing: mAP with bootstrap intervals over queries), the "
                     "checklist (docs/evaluation.md)", verdict_table),
        "clean": ("Clean accuracy (top-1) and retrieval mAP", clean_table(runs)),
        "robustness": ("White-box robustness: accuracy vs eps, per gradient source", robustness_table(runs)),
        "hashing_attacks": ("Retrieval under hashing attacks: mAP vs eps", hashing_attack_table(runs)),
        "hashing_worst": (f"Retrieval worst case at eps {retrieval_eps}: the mAP of each query's lowest AP over "
                          "every hashing attack and source, with bootstrap 95% intervals over queries", retrieval),
        "blackbox": ("Black-box (decision-based) L-inf attacks: accuracy vs eps, minimal perturbation sizes",
                     blackbox_table(runs)),
        "blackbox_l2": ("Black-box (decision-based) L2 attacks: accuracy vs L2 budget, minimal perturbation sizes",
                        blackbox_table(runs, "l2")),
        "diagnostics": ("Diagnostics: feedback alignment and the gradient an attacker is handed",
                        diagnostics_table(runs)),
    }
    figure = robustness_figure(runs, out / "robustness.png")
    notes = [*attack_notes(runs), *(notes or [])]
    md = [f"# {experiment}", "", "Written by `harness report` from MLflow. Verdicts and worst cases are per model "
          "(per seed); the tables after them are means over seeds.", ""]
    if lines:
        md += ["## Verdicts", "", *[f"- {ln}" for ln in lines], ""]
    for name, (title, df) in tables.items():
        if df.is_empty():
            continue
        df.write_csv(out / f"{name}.csv")
        (out / f"{name}.md").write_text(_markdown(df) + "\n")
        md += [f"## {title}", "", _markdown(df), ""]
        if name == "robustness" and figure is not None:
            md += ["![accuracy vs eps](robustness.png)", ""]
    if checks:
        md += ["## The checks and their numbers", "", *[f"- {c}" for c in checks], ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    (out / "README.md").write_text("\n".join(md))
    return {"dir": str(out), "tables": {k: v[1] for k, v in tables.items()}, "verdicts": lines, "checks": checks,
            "figure": str(figure) if figure else None}


def summary_text(report: dict) -> str:
    """The main tables, for the terminal."""
    parts = []
    for name in ("verdicts", "clean", "robustness", "hashing_worst", "hashing_attacks", "blackbox", "blackbox_l2"):
        df = report["tables"][name]
        if not df.is_empty():
            with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=160, float_precision=3,
                           tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
                parts.append(f"{name}:\n{df}")
    parts += report["verdicts"]
    parts.append(f"report: {report['dir']}/README.md" + (f", figure: {report['figure']}" if report["figure"] else ""))
    return "\n\n".join(parts)
