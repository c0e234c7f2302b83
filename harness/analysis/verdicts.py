"""Per-cell verdicts from per-image outcomes (docs/evaluation.md).

A cell is one fine-tuned model: dataset x backbone x task x rule x seed. Its evidence is the per-image outcome
table of every attack run on it and the same for its baseline sibling (the DAG's `baseline`, bp by default). At
the primary budget, its worst case over all attacks and gradient sources (an accuracy, or an mAP) is the headline
number; comparisons with the baseline use only the attacks run on both, on the images both saw. The checklist is
harness/analysis/checks.py. Verdicts, in order of precedence: invalid or attack not converged; robust beyond the
baseline; gradient obfuscation; no gain over the baseline; inconclusive. The deciding tests are Holm-corrected over
the cells of a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from harness.analysis import stats
from harness.analysis.checks import (
    CONVERGENCE,
    SANITY,
    SIGN,
    Check,
    blackbox_strength,
    check_accuracy_falls_with_eps,
    check_bp_broken,
    check_bp_gradients_agree,
    check_converged,
    check_exact_not_weaker,
    sign_rule_above_exact,
    sign_single_step_stronger,
    sign_transfer_or_blackbox_stronger,
)
from harness.analysis.outcomes import (
    ACCURACY,
    MODEL,
    Estimate,
    MeanEstimate,
    Measure,
    algorithms,
    at_budget,
    attacks_of,
    estimate,
    measure_of,
    pair,
    worst_case,
)
from harness.config.verdicts import VerdictSettings
from harness.stages.tables import rule_order
from workloads.attacks import ATTACKS, get_attack
from workloads.names import Metric

INVALID, NOT_CONVERGED, BEYOND, OBFUSCATION, NO_GAIN, INCONCLUSIVE = (
    "invalid", "attack not converged", "robust beyond bp", "gradient obfuscation", "no gain over bp", "inconclusive")


@dataclass
class Cell:
    model: dict
    clean: Estimate | MeanEstimate
    worst: Estimate | MeanEstimate
    broken_by: str
    own: Estimate | MeanEstimate | None  # the worst case over the attacks that use the model's own (rule) gradient
    bp_worst: Estimate | MeanEstimate | None
    checks: list[Check]
    tests: dict[str, float] = field(default_factory=dict)  # family -> raw p-value of the deciding test
    needed: int | None = None  # images that would decide an inconclusive cell
    verdict: str = INCONCLUSIVE
    line: str = ""
    measure: Measure = ACCURACY
    baseline: str = "bp"  # the rule it is compared with

    @property
    def is_baseline(self) -> bool:
        return self.model["rule"] == self.baseline

    @property
    def label(self) -> str:
        """The verdict in words, naming this cell's baseline."""
        return self.verdict.replace("beyond bp", f"beyond {self.baseline}").replace("over bp", f"over {self.baseline}")


def assess(outcomes: pl.DataFrame, model: dict, bp: dict, settings: VerdictSettings, families: dict[str, str],
           single_step: set[str], cosine: float | None = None, reran: bool = False) -> Cell:
    """The checks and the deciding tests of one cell (not yet its verdict: that waits for Holm over all cells)."""
    def of(m: dict) -> pl.DataFrame:
        return outcomes.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))

    mine, bps = of(model), of(bp)
    m, task, baseline = measure_of(outcomes), model["task"], bp["rule"]
    eps = settings.for_task(settings.primary, task)
    at, bp_at = at_budget(mine, eps), at_budget(bps, eps)
    worst, by, per_image = worst_case(at)
    own = [(a, s) for a, s in attacks_of(at) if s == "rule"]
    cell = Cell(model, estimate(per_image[m.clean].to_numpy()), worst, by, worst_case(at, own)[0] if own else None,
                None, [], measure=m, baseline=baseline)
    cell.checks = [check_bp_gradients_agree(bp_at, cosine, baseline), check_exact_not_weaker(at, settings.delta),
                   check_accuracy_falls_with_eps(mine),
                   check_bp_broken(bps, settings.for_task(settings.bp_broken_below, task), baseline),
                   check_converged(at, reran),
                   sign_rule_above_exact(at), sign_transfer_or_blackbox_stronger(at, families),
                   sign_single_step_stronger(at, single_step)]
    shared = sorted(set(attacks_of(at)) & set(attacks_of(bp_at)))
    if cell.is_baseline or not shared:
        return cell
    images = set(at["image"].to_list()) & set(bp_at["image"].to_list())
    _, _, per_mine = worst_case(at, shared, images)
    cell.bp_worst, _, per_bp = worst_case(bp_at, shared, images)
    r, b = per_mine[m.value].to_numpy(), per_bp[m.value].to_numpy()
    cell.tests = {BEYOND: stats.greater_by(r, b, settings.delta), NO_GAIN: stats.equivalent(r, b, settings.delta)}
    obfuscation = [stats.greater_by(*pair(at, (alg, "rule"), (alg, "exact")), settings.delta)
                   for alg in algorithms(at, "rule", "exact")]
    if obfuscation:
        cell.tests[OBFUSCATION] = min(obfuscation)
    cell.needed = stats.images_to_decide(r, b, settings.delta)
    return cell


def decide(cells: list[Cell], settings: VerdictSettings) -> list[Cell]:
    """Each cell's verdict, its deciding tests Holm-corrected over the cells, and its line."""
    adjusted: dict[tuple[int, str], float] = {}
    for family in (BEYOND, OBFUSCATION, NO_GAIN):
        which = [i for i, c in enumerate(cells) if family in c.tests]
        for i, p in zip(which, stats.holm([cells[i].tests[family] for i in which]), strict=True):
            adjusted[(i, family)] = p
    for i, c in enumerate(cells):
        holds = {f: adjusted.get((i, f), 1.0) < stats.ALPHA for f in (BEYOND, OBFUSCATION, NO_GAIN)}
        failed = [ch for ch in c.checks if ch.purpose == SANITY and ch.passed is False]
        unconverged = [ch for ch in c.checks if ch.purpose == CONVERGENCE and ch.passed is False]
        if c.is_baseline:
            c.verdict = "baseline"
        elif failed:
            c.verdict = INVALID
        elif unconverged:
            c.verdict, failed = NOT_CONVERGED, unconverged
        elif holds[BEYOND]:
            c.verdict = BEYOND
        elif holds[OBFUSCATION]:
            c.verdict = OBFUSCATION
        elif holds[NO_GAIN]:
            c.verdict = NO_GAIN
        else:
            c.verdict = INCONCLUSIVE
        c.line = _line(c, failed, {f: adjusted.get((i, f)) for f in (BEYOND, OBFUSCATION, NO_GAIN)}, settings)
    return cells


def _line(c: Cell, failed: list[Check], p: dict, settings: VerdictSettings) -> str:
    m, f = c.model, c.measure.fmt
    head = f"**{m['rule']}** ({m['dataset']}/{m['backbone']}/{m['task']}, this model: seed {m['seed']}): {c.label}"
    if c.verdict in (INVALID, NOT_CONVERGED):
        return head + " (" + "; ".join(f"{ch.name} failed: {ch.detail}" for ch in failed) + ")."
    most = "most breaks by" if c.measure is ACCURACY else "lowest mAP by"
    text = f"{head}. Worst case {c.worst}, {most} {c.broken_by}"
    if c.own is not None and not c.is_baseline:
        text += f"; its own gradient says {f(c.own.value)}"
        if c.own.value > c.worst.value:
            text += f" (overstated by {f(c.own.value - c.worst.value)})"
    if c.bp_worst is not None:
        text += f"; {c.baseline} on the same attacks and {c.measure.unit} {c.bp_worst}"
    decided = {BEYOND: BEYOND, OBFUSCATION: OBFUSCATION, NO_GAIN: NO_GAIN}.get(c.verdict)
    if decided and p.get(decided) is not None:
        text += f" (Holm-adjusted p={p[decided]:.3g}, margin {settings.delta:g})"
    signs = [ch.name for ch in c.checks if ch.purpose == SIGN and ch.passed]
    if signs:
        text += "; signs of obfuscation: " + ", ".join(signs)
    if c.verdict == INCONCLUSIVE and c.needed:
        text += f"; about {c.needed} {c.measure.unit} would decide it"
    return text + "."


def verdict_report(runs: pl.DataFrame, outcomes: list[pl.DataFrame], settings: VerdictSettings,
                   baseline: str = "bp") -> tuple[list[str], pl.DataFrame, list[str]]:
    """Per cell (a model with a baseline sibling and a primary budget): its verdict line; a table row (clean and
    worst-case accuracy with intervals, each check's outcome); and each check's numbers. `outcomes`: one table
    per task kind (their per-image columns differ)."""
    outcomes = [o for o in outcomes if not o.is_empty()]
    if not outcomes:
        return [], pl.DataFrame(), []
    families = {n: get_attack(n).family for n in ATTACKS.in_order()}
    single = {n for n in ATTACKS.in_order() if get_attack(n).single_step}
    cosine = {tuple(r[k] for k in MODEL): r.get(f"metrics.{Metric.GRAD_COSINE}")
              for r in runs.filter(pl.col("stage") == "evaluate").iter_rows(named=True)}
    reran = {tuple(r[k] for k in MODEL) for r in runs.filter(pl.col("stage") == "converge").iter_rows(named=True)}
    cells, models = [], []
    for table in outcomes:  # one task kind each: their per-image columns differ
        mine = [dict(zip(MODEL, m, strict=True)) for m in table.select(MODEL).unique().sort(MODEL).iter_rows()
                if settings.for_task(settings.primary, m[MODEL.index("task")]) is not None]
        order = {r: i for i, r in enumerate(rule_order([m["rule"] for m in mine]))}
        mine.sort(key=lambda m: (m["dataset"], m["backbone"], m["task"], m["seed"], order[m["rule"]]))
        for m in mine:
            bp = {**m, "rule": baseline}
            if any(x == bp for x in mine):
                cells.append(assess(table, m, bp, settings, families, single,
                                    cosine.get(tuple(bp[k] for k in MODEL)), tuple(m[k] for k in MODEL) in reran))
        models += [(m, table) for m in mine]
    cells = decide(cells, settings)  # Holm over every cell of the report, both tasks
    rows = []
    for c in cells:
        row = {**c.model, "verdict": c.label, "clean": c.clean.value, "clean_lo": c.clean.interval[0],
               "clean_hi": c.clean.interval[1], "worst": c.worst.value, "worst_lo": c.worst.interval[0],
               "worst_hi": c.worst.interval[1], "n": c.worst.n, "broken_by": c.broken_by,
               "own_gradient": c.own.value if c.own else None,
               f"{baseline}_worst": c.bp_worst.value if c.bp_worst else None}
        row.update({ch.name: {True: "yes", False: "no", None: "n/a"}[ch.passed] if ch.purpose == SIGN else
                    {True: "pass", False: "FAIL", None: "n/a"}[ch.passed] for ch in c.checks})
        rows.append(row)
    lines = [c.line for c in cells if not c.is_baseline] + rule_lines(cells)
    if models and not any(m["rule"] == baseline for m, _ in models):
        lines.append(f"No verdicts: the baseline rule {baseline} has no attacked model here to compare with; add it "
                     "to the DAG's rules (or set `baseline` to one of them).")
    checks = [f"{c.model['rule']} ({c.model['dataset']}/{c.model['backbone']}, seed {c.model['seed']}), "
              f"{ch.name}: {ch.detail}" for c in cells if not c.is_baseline for ch in c.checks]
    for m, table in [(m, t) for m, t in models if m["rule"] == baseline]:  # is each black-box attack strong enough?
        bp = table.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))
        for ch in blackbox_strength(bp, settings.for_task(settings.primary, m["task"]), families,
                                    settings.blackbox_weak_above, baseline):
            lines.append(f"{ch.detail} ({m['dataset']}/{m['backbone']}, seed {m['seed']}).")
    return lines, pl.DataFrame(rows) if rows else pl.DataFrame(), checks


def rule_lines(cells: list[Cell]) -> list[str]:
    """A verdict about a rule, not one model, needs three or more seeds (docs/evaluation.md): each seed's verdict is
    decided on its own (Holm over every cell), then the rule line says whether they agree and gives the worst case
    and the own-gradient number as a mean with its t-interval across seeds."""
    def across(values: list[float], f) -> str:
        lo, hi = stats.t_interval(values)
        return f"{f(sum(values) / len(values))} mean, t-interval [{f(lo)}, {f(hi)}]"

    lines, groups = [], {}
    for c in cells:
        groups.setdefault(tuple(c.model[k] for k in ("dataset", "backbone", "task", "rule")), []).append(c)
    for (dataset, backbone, task, rule), cs in groups.items():
        if cs[0].is_baseline or len(cs) < 3:
            continue
        f = cs[0].measure.fmt
        verdicts = sorted({c.label for c in cs})
        what = verdicts[0] if len(verdicts) == 1 else f"mixed across seeds ({', '.join(verdicts)})"
        text = (f"**{rule}** ({dataset}/{backbone}/{task}, the rule over {len(cs)} seeds): {what}; worst case "
                f"{across([c.worst.value for c in cs], f)}")
        if all(c.own is not None for c in cs):
            text += f"; its own gradient says {across([c.own.value for c in cs], f)}"
        lines.append(text + ".")
    return lines
