"""`harness report EXPERIMENT`: MLflow runs -> polars -> the tables and figure docs/protocol.md ("The report") lists.

Writes `results/<experiment>/`: verdicts.{csv,md} (each cell's two answers), worst_case_curve.{csv,md,png} (the
robustness curve) and hashing_worst.{csv,md} (the per-model worst case at the primary budget, with intervals), then
every stage's own tables (evaluate: clean, diagnostics; attack: robustness with its figure, hashing_attacks,
blackbox, blackbox_l2), and README.md with all of them and one line of answers per cell. Tables are keyed by task
kind: a task of your own of an existing kind lands in its kind's tables and answers. A table or figure the folder's
previous report wrote and this one does not (a task or stage left out of the DAG since) is removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

import rules
from harness.analysis.curves import curve_figure, worst_case_curve
from harness.analysis.outcomes import MODEL, retrieval_worst_case
from harness.analysis.radii import median_text, radii_markdown_frame, radii_table
from harness.analysis.runs import load_outcomes, load_rows, load_runs, logged_settings
from harness.analysis.verdicts import primary_budgets, verdict_report
from harness.config.plugins import load_plugins
from harness.stages import Stage, ordered
from harness.stages.tables import kind_of, rule_order
from workloads.attacks import ATTACKS, get_attack
from workloads.errors import ConfigError
from workloads.tasks import get_task

KINDS = ("classification", "hashing")  # the task kinds whose per-image outcomes the verdicts read
REPORT_FILES = ".report-files.json"  # what the last report wrote in its folder, so the next one can remove the rest
SHOWN = ("verdicts", "clean", "robustness", "hashing_worst", "hashing_attacks", "blackbox", "blackbox_l2")


def markdown(df: pl.DataFrame, digits: int = 3) -> str:
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


def attack_notes(runs: pl.DataFrame) -> list[str]:
    """Where an attack ran with settings other than its paper-faithful defaults, say so."""
    atk = runs.filter(pl.col("stage") == "attack")
    notes = []
    for name in sorted(a for a in atk["attack"].unique().to_list() if a in ATTACKS.names()) if len(atk) else []:
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
            below = any(isinstance(defaults[k], int | float) and not isinstance(defaults[k], bool)
                        and float(v) < defaults[k] for k, values in changed.items() for v in values)
            limited = " Its black-box evidence is budget-limited: what it did not break, a larger budget may." \
                if below and get_attack(name).family in ("score", "decision") else ""
            notes.append(f"{name} ran with reduced or changed settings: {text}.{limited}")
    for rule in rule_order(atk["rule"].unique().to_list() if len(atk) else []):
        if rule in rules.available_rules() and rules.get_rule(rule).random_per_pass:
            notes.append(f"{rule} redraws its feedback magnitudes at every backward pass, attacks included "
                         "(BioTorch's behaviour, docs/protocol.md): a `rule`-source attacker sees a new B at every "
                         "step.")
    return notes


def _retrieval(outcomes: pl.DataFrame, primary: dict[str, float], runs: pl.DataFrame) -> tuple[str, pl.DataFrame]:
    """The hashing models' worst case at each task's primary budget, with the clean mAP of the whole query split
    beside the attacked queries' (a sample of queries can sit far from its split)."""
    if outcomes.is_empty():
        return "", pl.DataFrame()
    parts = [retrieval_worst_case(outcomes.filter(pl.col("task") == task), eps) for task, eps in primary.items()]
    parts = [p for p in parts if not p.is_empty()]
    budgets = ", ".join(sorted({f"{eps:g}" for eps in primary.values()}))
    if not parts:
        return budgets, pl.DataFrame()
    table = pl.concat(parts)
    split = {tuple(str(r[k]) for k in MODEL): r.get(f"metrics.{get_task(r['task']).metric}")
             for r in runs.filter(pl.col("stage") == "evaluate").iter_rows(named=True) if r["task"] in primary}
    column = [split.get(tuple(str(r[k]) for k in MODEL)) for r in table.iter_rows(named=True)]
    table = table.with_columns(pl.Series("split clean mAP", column, dtype=pl.Float64))
    order = {r: i for i, r in enumerate(rule_order(table["rule"].unique().to_list()))}
    first = [*MODEL, "clean mAP", "clean_lo", "clean_hi", "split clean mAP"]
    return budgets, (table.select(*first, pl.exclude(*first))
                     .sort(["dataset", "backbone", "task", "seed", pl.col("rule").replace_strict(order)]))


def _answer(row: dict, state: str, column: str, scale: float, fmt: str) -> str:
    """An answer with its estimate and 90% interval, e.g. "less robust than bp: -20.0 [-29.1, -11.0]"."""
    if row[column] is None:
        return row[state]
    value, lo, hi = (format(scale * row[f"{column}{s}"], "+" + fmt) for s in ("", "_lo", "_hi"))
    return f"{row[state]}: {value} [{lo}, {hi}]"


def _summary(verdicts: pl.DataFrame, radii: pl.DataFrame, curve: pl.DataFrame, baseline: str) -> pl.DataFrame:
    """The README's first table: per model, its two answers with their 90% intervals (points for an accuracy, mAP
    units for retrieval), its median radius with its 95% interval, and its curve."""
    if verdicts.is_empty():
        return pl.DataFrame()

    def of(table: pl.DataFrame, key: dict) -> pl.DataFrame:
        return table.filter(pl.all_horizontal(pl.col(k) == str(v) for k, v in key.items())) if table.height else table

    rows = []
    for v in verdicts.iter_rows(named=True):
        key = {k: v[k] for k in MODEL}
        scale, fmt = (100, ".1f") if kind_of(v["task"]) == "classification" else (1, ".3f")
        r = next(of(radii, key).iter_rows(named=True), None)
        radius = "n/a" if r is None else median_text(r)
        line = of(curve, key).sort("eps") if curve.height else pl.DataFrame({"eps": [], "worst": []})
        points = ", ".join(f"{e:g}: {format(scale * w, fmt)}" for e, w in zip(line["eps"], line["worst"], strict=True))
        rows.append({**key, "eps": v["primary"], f"against {baseline}": _answer(v, "robustness", "difference", scale,
                                                                                fmt),
                     "gradient honesty": _answer(v, "gradient", "gradient_overstatement", scale, fmt),
                     "median radius": radius, "curve (eps: worst case)": points})
    return pl.DataFrame(rows, infer_schema_length=None)


def write_report(tracking_uri: str, experiment: str, out_dir: str | Path, notes: list[str] | None = None) -> dict:
    runs = load_runs(tracking_uri, experiment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings, baseline, plugin_names = logged_settings(tracking_uri, experiment)
    notes = list(notes or [])
    try:  # the run's own rules, tasks, attacks and stages, for a report written apart from the run
        load_plugins(plugin_names, f"experiment {experiment!r}'s logged plugins")
    except ConfigError as exc:
        notes.append(f"{exc}: what they registered is left out of this report.")
    outcomes = {kind: load_outcomes(runs, tracking_uri, kind) for kind in KINDS}
    lines, verdict_table, checks = verdict_report(runs, list(outcomes.values()), settings, baseline)
    curves = [c for c in (worst_case_curve(o) for o in outcomes.values()) if not c.is_empty()]
    curve = pl.concat(curves, how="diagonal") if curves else pl.DataFrame()
    radii = radii_table(outcomes["classification"], curve, baseline)
    checks += [f"{r['rule']} ({r['dataset']}/{r['backbone']}/{r['task']}, seed {r['seed']}): its radii and its curve "
               f"point different ways against {baseline} (radii larger on {r['larger']} images, smaller on "
               f"{r['smaller']}); read both" for r in radii.iter_rows(named=True) if r.get("curve_agrees") == "no"]
    chosen = primary_budgets(runs, settings)
    primary = {task: eps for (_, _, task, _), (eps, _) in sorted(chosen.items(), key=str)}
    budgets = "; ".join(sorted({f"{task} eps {eps:g} ({how})" for (_, _, task, _), (eps, how) in chosen.items()}))
    retrieval_eps, retrieval = _retrieval(outcomes["hashing"],
                                          {t: e for t, e in primary.items() if kind_of(t) == "hashing"}, runs)
    tables = {
        "summary": (f"Per model: the answer against {baseline}, the gradient-honesty answer, the median robustness "
                    "radius and the robustness curve (the worst case at each budget)",
                    _summary(verdict_table, radii, curve, baseline)),
        "verdicts": (f"Answers at the primary budget ({budgets}; margin {settings.delta:g}): "
                     f"robustness against {baseline} and gradient honesty, each with its 90% interval and "
                     "Holm-adjusted p-value; clean and worst-case accuracy with Wilson 95% intervals (hashing: mAP "
                     "with BCa bootstrap intervals over queries); the checklist (docs/evaluation.md)", verdict_table),
        "worst_case_curve": ("The robustness curve: per model, the per-image worst case over every attack at each "
                             "L-inf budget of the grid, on the images every model of its panel saw, with 95% "
                             "intervals", curve),
        "radii": (f"Robustness radii: per model, each image's smallest breaking L-inf distance over every attack "
                  "(0 where it is wrong clean; above the largest budget: censored), the median with its "
                  f"order-statistic 95% interval, and against {baseline} on the same images the sign test "
                  "(Holm-adjusted) and whether its direction agrees with the curve's", radii),
        "hashing_worst": (f"Retrieval worst case at eps {retrieval_eps}: the mAP of each query's lowest AP over "
                          "every hashing attack and source, with BCa bootstrap 95% intervals over the attacked "
                          "queries; the clean mAP of the whole query split beside theirs", retrieval),
    }
    figures: dict[str, Path] = {}
    if (drawn := curve_figure(curve, out / "worst_case_curve.png", baseline)) is not None:
        figures["worst_case_curve"] = drawn
    for stage in ordered():
        has_rows = type(stage).rows is not Stage.rows  # a stage without rows costs no artifact download
        rows = load_rows(runs, tracking_uri, stage.name) if has_rows else pl.DataFrame()
        tables.update(stage.report(runs, rows))
        figures.update(stage.figures(rows, out, baseline))
    notes = [*attack_notes(runs), *notes]
    md = [f"# {experiment}", "", "Written by `harness report` from MLflow. Answers and worst cases are per model "
          "(per seed); the tables after them are means over seeds.", ""]
    for name, (title, df) in tables.items():
        if df.is_empty():
            continue
        df.write_csv(out / f"{name}.csv")
        shown = radii_markdown_frame(df) if name == "radii" else df  # censored radii read "> bound"
        (out / f"{name}.md").write_text(markdown(shown) + "\n")
        md += [f"## {title}", "", markdown(shown), ""]
        if name in figures:
            md += [f"![{title}]({figures[name].name})", ""]
        if name == "summary" and lines:  # the table first, then each answer with the evidence that decided it
            md += ["## Answers: robustness against the baseline, and gradient honesty", "",
                   *[f"- {ln}" for ln in lines], ""]
    if checks:
        md += ["## The checks and their numbers", "", *[f"- {c}" for c in checks], ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    (out / "README.md").write_text("\n".join(md))
    written = {"README.md", *(p.name for p in figures.values())}
    written |= {f"{name}.{ext}" for name, (_, df) in tables.items() if not df.is_empty() for ext in ("csv", "md")}
    replace_previous(out, written)
    return {"dir": str(out), "tables": {k: v[1] for k, v in tables.items()}, "verdicts": lines, "checks": checks,
            "figures": [str(p) for p in figures.values()]}


def replace_previous(out: Path, written: set[str]) -> None:
    """A table or figure the previous report in `out` wrote and this one did not is removed, so the folder never
    mixes two runs' numbers; only what a report listed as its own (in REPORT_FILES) is touched, never a user's file."""
    listed = out / REPORT_FILES
    try:
        previous = {n for n in json.loads(listed.read_text()) if isinstance(n, str)} if listed.is_file() else set()
    except (ValueError, TypeError):  # our own list, damaged: forget it rather than fail the report
        previous = set()
    for name in sorted(previous - written):
        if name and Path(name).name == name:  # a bare file name: a list edited by hand cannot reach outside `out`
            (out / name).unlink(missing_ok=True)
    listed.write_text(json.dumps(sorted(written), indent=1) + "\n")


def summary_text(report: dict) -> str:
    """The main tables, for the terminal."""
    parts = []
    for name in SHOWN:
        df = report["tables"].get(name)
        if df is not None and not df.is_empty():
            with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=160, float_precision=3,
                           tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
                parts.append(f"{name}:\n{df}")
    parts += report["verdicts"]
    parts.append(f"report: {report['dir']}/README.md" + "".join(f", figure: {f}" for f in report["figures"]))
    return "\n\n".join(parts)
