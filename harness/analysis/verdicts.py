"""Per-cell answers from per-image outcomes (docs/evaluation.md).

A cell is one fine-tuned model: dataset x backbone x task x rule x seed. Its evidence is the per-image outcome
table of every attack run on it and on its baseline sibling (the DAG's `baseline`, bp by default): the same attacks
on the same images, or the cell is invalid. At the primary budget its worst case over every attack and gradient
source (an accuracy, or an mAP) is the headline number, and the report gives two answers, each read off one
interval with its own test:

- **robustness**: is the model more robust than the baseline, equivalent to it, or less robust? The interval of the
  paired difference (model minus baseline, per image worst case) lies above +delta, inside +-delta or below
  -delta; anywhere else it is inconclusive. Gated by the checklist (harness/analysis/checks.py): a failed sanity
  check makes the cell invalid, a failed convergence check "attack not converged".
- **gradient honesty**: by how much does the model's own (rule) gradient overstate its worst case? The interval of
  the per-image difference between the worst case through the rule's gradient and the worst case over everything
  lies above delta (it overstates) or below it (within the margin). This flag of gradient obfuscation never hides
  or replaces the robustness answer.

Each answer's p-values are Holm-corrected over the cells of a report, one family per answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    check_equal_evidence,
    check_exact_not_weaker,
    sign_attack_raised_ap,
    sign_rule_above_exact,
    sign_single_step_stronger,
    sign_stopped_early,
    sign_transfer_or_blackbox_stronger,
)
from harness.analysis.outcomes import (
    ACCURACY,
    MODEL,
    Estimate,
    MeanEstimate,
    Measure,
    at_budget,
    attacks_of,
    estimate,
    measure_of,
    worst_case,
)
from harness.config.verdicts import VerdictSettings
from harness.stages.converge import RERUN
from harness.stages.primary import CALIBRATED
from harness.stages.tables import rule_order
from workloads.attacks import ATTACKS, get_attack
from workloads.names import Metric

# robustness against the baseline, and its gates
MORE, EQUIVALENT, LESS, INCONCLUSIVE = "more robust than bp", "equivalent to bp", "less robust than bp", "inconclusive"
INVALID, NOT_CONVERGED, BASELINE = "invalid", "attack not converged", "baseline"
# gradient honesty
OVERSTATES, WITHIN, NOT_APPLICABLE = "overstates", "within the margin", "n/a"
PANEL = ("dataset", "backbone", "task", "seed")  # the models that share a baseline and a primary budget


def robustness_regions(delta: float) -> dict:
    """Where the interval of model minus baseline lies: regions that cannot overlap."""
    return {MORE: lambda lo, hi: lo > delta, LESS: lambda lo, hi: hi < -delta,
            EQUIVALENT: lambda lo, hi: -delta < lo and hi < delta}


def honesty_regions(delta: float) -> dict:
    """Where the interval of the overstatement (never below 0) lies."""
    return {OVERSTATES: lambda lo, hi: lo > delta, WITHIN: lambda lo, hi: hi < delta}


@dataclass
class Cell:
    model: dict
    clean: Estimate | MeanEstimate
    worst: Estimate | MeanEstimate
    broken_by: str
    own: Estimate | MeanEstimate | None  # the worst case over the attacks that use the model's own (rule) gradient
    bp_worst: Estimate | MeanEstimate | None
    checks: list[Check]
    difference: stats.Reading | None = None  # model minus baseline, per image, same attacks and images
    overstatement: stats.Reading | None = None  # own-gradient worst case minus the worst case, per image
    needed: int | None = None  # images that would decide an inconclusive robustness answer
    robustness: str = INCONCLUSIVE
    gradient: str = NOT_APPLICABLE
    adjusted: dict | None = None  # answer -> its Holm-adjusted p-value
    line: str = ""
    measure: Measure = ACCURACY
    baseline: str = "bp"  # the rule it is compared with
    eps: float | None = None  # the primary budget
    chosen_by: str = "verdicts.primary"  # how it was chosen
    paired: tuple | None = None  # per image: the model's and the baseline's worst case, on the same images
    above: np.ndarray | None = None  # per image: how far the own-gradient worst case lies above the worst case

    @property
    def is_baseline(self) -> bool:
        return self.model["rule"] == self.baseline

    @property
    def label(self) -> str:
        """The robustness answer in words, naming this cell's baseline."""
        return self.robustness.replace(" bp", f" {self.baseline}")


def assess(outcomes: pl.DataFrame, model: dict, bp: dict, settings: VerdictSettings, families: dict[str, str],
           single_step: set[str], cosine: float | None = None, reran: bool = False,
           bp_reran: bool | None = None, primary: tuple[float, str] | None = None) -> Cell:
    """The checks and both readings of one cell (not yet its answers: those wait for Holm over all cells). `reran`
    and `bp_reran`: a convergence re-run ran on the model and on the baseline (with no survivors it leaves no
    rows); `bp_reran` defaults to `reran`. `primary`: the budget and how it was chosen (default: the DAG's
    `verdicts.primary` for the task)."""
    def of(m: dict) -> pl.DataFrame:
        return outcomes.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))

    mine, bps = of(model), of(bp)
    m, task, baseline = measure_of(outcomes), model["task"], bp["rule"]
    eps, chosen_by = primary or (settings.for_task(settings.primary, task), "verdicts.primary")
    at, bp_at = at_budget(mine, eps), at_budget(bps, eps)
    worst, by, per_image = worst_case(at)
    own_attacks = [(a, s) for a, s in attacks_of(at) if s == "rule"]
    cell = Cell(model, estimate(per_image[m.clean].to_numpy()), worst, by,
                worst_case(at, own_attacks)[0] if own_attacks else None, None, [], measure=m, baseline=baseline,
                eps=eps, chosen_by=chosen_by)
    reran = reran or any(a.startswith(RERUN) for a, _ in attacks_of(at))
    bp_reran = any(a.startswith(RERUN) for a, _ in attacks_of(bp_at)) or (reran if bp_reran is None else bp_reran)
    cell.checks = [check_bp_gradients_agree(bp_at, cosine, baseline), check_exact_not_weaker(at, settings.delta),
                   check_accuracy_falls_with_eps(mine),
                   check_bp_broken(bps, settings.for_task(settings.bp_broken_below, task), baseline),
                   check_equal_evidence(at, bp_at, reran, bp_reran, baseline),
                   check_converged(mine, eps, settings.delta, reran),
                   *([] if model == bp else [check_converged(bps, eps, settings.delta, bp_reran, baseline)]),
                   sign_rule_above_exact(at), sign_transfer_or_blackbox_stronger(at, families),
                   sign_single_step_stronger(at, single_step), sign_attack_raised_ap(mine),
                   sign_stopped_early(mine, bps, baseline)]
    if own_attacks and not cell.is_baseline:
        _, _, own_per_image = worst_case(at, own_attacks)
        everything = per_image.filter(pl.col("image").is_in(own_per_image["image"].to_list()))
        cell.above = _above(own_per_image[m.value], everything[m.value])
        cell.overstatement = stats.read_share(cell.above, honesty_regions(settings.delta))
    if cell.is_baseline or bp_at.is_empty() or not all(c.passed is not False for c in cell.checks
                                                        if c.name == "equal evidence"):
        return cell
    images = sorted(set(at["image"].to_list()) & set(bp_at["image"].to_list()))
    _, _, per_mine = worst_case(at, None, set(images))
    cell.bp_worst, _, per_bp = worst_case(bp_at, None, set(images))
    r, b = per_mine[m.value].to_numpy(), per_bp[m.value].to_numpy()
    cell.paired = (r, b)
    cell.difference = stats.read_difference(r, b, robustness_regions(settings.delta))
    cell.needed = stats.images_to_decide(r, b, settings.delta)
    return cell


def _above(own: pl.Series, worst: pl.Series) -> np.ndarray:
    """Per image, how far the own-gradient outcome lies above the worst case (0/1: robust through the rule's
    gradient, broken by some attack)."""
    own, worst = own.to_numpy(), worst.to_numpy()
    return own & ~worst if own.dtype == bool else np.maximum(own.astype(float) - worst.astype(float), 0.0)


def decide(cells: list[Cell], settings: VerdictSettings) -> list[Cell]:
    """Each cell's two answers, their tests Holm-corrected over the cells (one family per answer), and its line."""
    gates = {id(c): _gate(c) for c in cells}
    robustness = [c for c in cells if not c.is_baseline and gates[id(c)] is None and c.difference is not None
                  and c.difference.region is not None]
    honesty = [c for c in cells if c.overstatement is not None and c.overstatement.region is not None
               and gates[id(c)] != INVALID]
    for c in cells:
        c.adjusted = {}
    for answer, group, reading in (("robustness", robustness, lambda c: c.difference),
                                   ("gradient", honesty, lambda c: c.overstatement)):
        for c, p in zip(group, stats.holm([reading(c).p for c in group]), strict=True):
            c.adjusted[answer] = p
    for c in cells:
        gate = gates[id(c)]
        p = c.adjusted.get("robustness")
        c.robustness = BASELINE if c.is_baseline else gate or (
            c.difference.region if p is not None and p < stats.ALPHA else INCONCLUSIVE)
        q = c.adjusted.get("gradient")
        c.gradient = (NOT_APPLICABLE if c.overstatement is None or gate == INVALID else
                      c.overstatement.region if q is not None and q < stats.ALPHA else INCONCLUSIVE)
        c.line = _line(c, settings)
    return cells


def _gate(c: Cell) -> str | None:
    if any(ch.purpose == SANITY and ch.passed is False for ch in c.checks):
        return INVALID
    if any(ch.purpose == CONVERGENCE and ch.passed is False for ch in c.checks):
        return NOT_CONVERGED
    return None


def _signed(m: Measure, x: float, sign: str = "+") -> str:
    """A difference of accuracies in points (a difference of mAPs as it is)."""
    return f"{100 * x:{sign}.1f}" if m.percent else f"{x:{sign}.3f}"


def _span(m: Measure, r: stats.Reading, sign: str = "+") -> str:
    unit = " points" if m.percent else ""
    return (f"{_signed(m, r.value, sign)}{unit} (90% interval {_signed(m, r.lo, sign)} to "
            f"{_signed(m, r.hi, sign)})")


def _p(c: Cell, answer: str, reading: stats.Reading) -> str:
    """The Holm-adjusted p-value; one from a reading at its floor is an upper bound."""
    if answer not in c.adjusted:
        return ""
    bound = "<=" if reading.p <= reading.floor else "="
    of = "" if reading.region in (c.robustness, c.gradient) else f" for {reading.region}"
    return f" (Holm-adjusted p{bound}{c.adjusted[answer]:.3g}{of})"


def _line(c: Cell, settings: VerdictSettings) -> str:
    m, f, base = c.model, c.measure.fmt, c.baseline
    head = f"**{m['rule']}** ({m['dataset']}/{m['backbone']}/{m['task']}, seed {m['seed']}, eps {c.eps:g})"
    most = "most breaks by" if c.measure is ACCURACY else "lowest mAP by"
    text = f"{head}: **{c.label}**"
    failed = [ch for ch in c.checks if ch.passed is False and ch.purpose == (
        SANITY if c.robustness == INVALID else CONVERGENCE)]
    if c.robustness in (INVALID, NOT_CONVERGED):
        text += " (" + "; ".join(f"{ch.name} failed: {ch.detail}" for ch in failed) + ")"
    text += f". Worst case {c.worst}, {most} {c.broken_by}"
    if c.bp_worst is not None:
        text += f"; {base} {c.bp_worst} on the same attacks and {c.measure.unit}"
    d = c.difference
    if d is not None and c.robustness == NOT_CONVERGED:
        text += (f"; difference with the re-run {_span(c.measure, d)}, not an answer until the attacks converge")
    elif d is not None and c.robustness != INVALID:
        text += (f"; difference {_span(c.measure, d)}, margin {_signed(c.measure, settings.delta, '')}"
                 f"{_p(c, 'robustness', d)}")
        if c.robustness == INCONCLUSIVE:
            if d.region is None:  # outside the Holm family: no p-value to print
                text += "; at no confidence level does the interval lie in one region"
            if d.lo > 0 or d.hi < 0:
                text += f"; the interval excludes 0: {'above' if d.lo > 0 else 'below'} {base}"
            if c.needed:
                text += f"; about {c.needed} {c.measure.unit} would decide it"
    text += "."
    o = c.overstatement
    if o is not None and c.gradient != NOT_APPLICABLE:
        text += (f" Its own gradient says {f(c.own.value)}, above the worst case by {_span(c.measure, o, '')}: "
                 f"{c.gradient}{_p(c, 'gradient', o)}.")
    signs = [ch.name for ch in c.checks if ch.purpose == SIGN and ch.passed]
    if signs:
        text += " Signs of obfuscation: " + ", ".join(signs) + "."
    return text


def primary_budgets(runs: pl.DataFrame, settings: VerdictSettings,
                    outcomes: list[pl.DataFrame] = ()) -> dict[tuple, tuple[float, str]]:
    """(dataset, backbone, task, seed) -> the primary budget and how it was chosen: the DAG's `verdicts.primary`
    for a task it names, else what the baseline's primary node chose (harness/stages/primary.py). Panels are those
    of `runs` and of any `outcomes` tables."""
    out = {}
    chosen = runs.filter(pl.col("stage") == "primary") if "metrics.primary_eps" in runs.columns else runs.clear()
    for r in chosen.iter_rows(named=True):
        if r["metrics.primary_eps"] is not None:
            out[tuple(r[k] for k in PANEL)] = (float(r["metrics.primary_eps"]), CALIBRATED)
    for frame in (runs, *outcomes):
        for r in frame.select(PANEL).unique().iter_rows(named=True):
            fixed = settings.for_task(settings.primary, r["task"]) if r["task"] is not None else None
            if fixed is not None:
                out[tuple(r[k] for k in PANEL)] = (fixed, "verdicts.primary")
    return out


def verdict_report(runs: pl.DataFrame, outcomes: list[pl.DataFrame], settings: VerdictSettings,
                   baseline: str = "bp") -> tuple[list[str], pl.DataFrame, list[str]]:
    """Per cell (a model with a baseline sibling and a primary budget): its line; a table row (both answers with their
    intervals and p-values, the primary budget and how it was chosen, clean and worst-case accuracy with intervals,
    each check's outcome); and each check's numbers. `outcomes`: one table per task kind (their per-image columns
    differ)."""
    outcomes = [o for o in outcomes if not o.is_empty()]
    if not outcomes:
        return [], pl.DataFrame(), []
    families = {n: get_attack(n).family for n in ATTACKS.in_order()}
    single = {n for n in ATTACKS.in_order() if get_attack(n).single_step}
    cosine = {tuple(r[k] for k in MODEL): r.get(f"metrics.{Metric.GRAD_COSINE}")
              for r in runs.filter(pl.col("stage") == "evaluate").iter_rows(named=True)}
    reran = {tuple(r[k] for k in MODEL) for r in runs.filter(pl.col("stage") == "converge").iter_rows(named=True)}
    budgets = primary_budgets(runs, settings, outcomes)

    def panel(m: dict) -> tuple:
        return tuple(m[k] for k in PANEL)

    cells, models = [], []
    for table in outcomes:  # one task kind each: their per-image columns differ
        mine = [dict(zip(MODEL, m, strict=True)) for m in table.select(MODEL).unique().sort(MODEL).iter_rows()]
        mine = [m for m in mine if panel(m) in budgets]
        order = {r: i for i, r in enumerate(rule_order([m["rule"] for m in mine]))}
        mine.sort(key=lambda m: (m["dataset"], m["backbone"], m["task"], m["seed"], order[m["rule"]]))
        for m in mine:
            bp = {**m, "rule": baseline}
            if any(x == bp for x in mine):
                key = tuple(bp[k] for k in MODEL)
                cells.append(assess(table, m, bp, settings, families, single, cosine.get(key),
                                    tuple(m[k] for k in MODEL) in reran, key in reran, budgets[panel(m)]))
        models += [(m, table) for m in mine]
    cells = decide(cells, settings)  # Holm over every cell of the report, both tasks
    rows = [_row(c) for c in cells]
    lines = [c.line for c in cells if not c.is_baseline] + rule_lines(cells, settings)
    if models and not any(m["rule"] == baseline for m, _ in models):
        lines.append(f"No verdicts: the baseline rule {baseline} has no attacked model here to compare with; add it "
                     "to the DAG's rules (or set `baseline` to one of them).")
    checks = [f"{c.model['rule']} ({c.model['dataset']}/{c.model['backbone']}, seed {c.model['seed']}), "
              f"{ch.name}: {ch.detail}" for c in cells if not c.is_baseline for ch in c.checks]
    for m, table in [(m, t) for m, t in models if m["rule"] == baseline]:  # is each black-box attack strong enough?
        bp = table.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))
        for ch in blackbox_strength(bp, budgets[panel(m)][0], families, settings.blackbox_weak_above, baseline):
            lines.append(f"{ch.detail} ({m['dataset']}/{m['backbone']}, seed {m['seed']}).")
    return lines, pl.DataFrame(rows) if rows else pl.DataFrame(), checks


def _row(c: Cell) -> dict:
    d, o = c.difference, c.overstatement
    row = {**c.model, "primary": c.eps, "primary_chosen_by": c.chosen_by, "robustness": c.label,
           "difference": d.value if d else None, "difference_lo": d.lo if d else None,
           "difference_hi": d.hi if d else None, "robustness_p": c.adjusted.get("robustness"),
           "gradient": c.gradient, "gradient_overstatement": o.value if o else None,
           "gradient_overstatement_lo": o.lo if o else None, "gradient_overstatement_hi": o.hi if o else None,
           "gradient_overstatement_p": c.adjusted.get("gradient"),
           "clean": c.clean.value, "clean_lo": c.clean.interval[0], "clean_hi": c.clean.interval[1],
           "worst": c.worst.value, "worst_lo": c.worst.interval[0], "worst_hi": c.worst.interval[1],
           "n": c.worst.n, "broken_by": c.broken_by, "own_gradient": c.own.value if c.own else None,
           f"{c.baseline}_worst": c.bp_worst.value if c.bp_worst else None}
    row.update({ch.name: {True: "yes", False: "no", None: "n/a"}[ch.passed] if ch.purpose == SIGN else
                {True: "pass", False: "FAIL", None: "n/a"}[ch.passed] for ch in c.checks})
    return row


def rule_lines(cells: list[Cell], settings: VerdictSettings) -> list[str]:
    """An answer about a rule, not one model, needs three or more seeds (docs/evaluation.md). Both answers are read
    again for the rule: the mean over seeds of the paired difference (and of the overstatement), with an interval
    over seeds and images together (`stats.read_seeds`), each family Holm-corrected over the rule lines of the
    report. A seed whose cell is invalid or not converged gates the rule's robustness answer; the line also says how
    the seeds' own answers fell."""
    def tally(answers: list[str]) -> str:
        return ", ".join(f"{a} x{answers.count(a)}" for a in sorted(set(answers)))

    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(tuple(c.model[k] for k in ("dataset", "backbone", "task", "rule")), []).append(c)
    rules = [(key, cs) for key, cs in groups.items() if not cs[0].is_baseline and len(cs) >= 3]
    readings = []
    for _, cs in rules:
        gate = next((g for g in (INVALID, NOT_CONVERGED) if any(c.robustness == g for c in cs)), None)
        diff = None if gate or any(c.paired is None for c in cs) else stats.read_seeds(
            [c.paired[0] for c in cs], [c.paired[1] for c in cs], robustness_regions(settings.delta))
        over = None if any(c.above is None or c.robustness == INVALID for c in cs) else stats.read_seeds(
            [c.above for c in cs], None, honesty_regions(settings.delta))
        readings.append((gate, diff, over))
    adjusted: dict[tuple[int, str], float] = {}
    for slot, answer in ((1, "robustness"), (2, "gradient")):
        which = [i for i, r in enumerate(readings) if r[slot] is not None and r[slot].region is not None]
        for i, p in zip(which, stats.holm([readings[i][slot].p for i in which]), strict=True):
            adjusted[(i, answer)] = p
    lines = []
    for i, (((dataset, backbone, task, rule), cs), (gate, diff, over)) in enumerate(zip(rules, readings,
                                                                                      strict=True)):
        m, base = cs[0].measure, cs[0].baseline
        p = adjusted.get((i, "robustness"))
        answer = gate or (diff.region if diff is not None and p is not None and p < stats.ALPHA else INCONCLUSIVE)
        text = (f"**{rule}** ({dataset}/{backbone}/{task}, the rule over {len(cs)} seeds): "
                f"**{answer.replace(' bp', f' {base}')}**")
        if diff is not None:
            text += (f"; difference from {base} {_span(m, diff)} over seeds and {m.unit}"
                     + (f" (Holm-adjusted p={p:.3g} over the rule lines)" if p is not None else ""))
        q = adjusted.get((i, "gradient"))
        if over is not None:
            honest = over.region if q is not None and q < stats.ALPHA else INCONCLUSIVE
            text += f"; its own gradient overstates its worst case by {_span(m, over, '')}: {honest}"
        text += f"; per seed: {tally([c.label for c in cs])}"
        lines.append(text + ".")
    return lines
