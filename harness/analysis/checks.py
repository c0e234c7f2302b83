"""The checklist of a cell (docs/evaluation.md), declared before the numbers are seen: each check is a named
function that returns whether it passed and the numbers it decided on; the report prints them.

- sanity (failed: the cell is invalid): the baseline's rule and exact gradients agree, the exact gradient is not
  weaker than the rule's, accuracy falls with eps, the attacks break the baseline, and both models faced the same
  attacks on the same images;
- convergence (failed: attack not converged): the re-run on the survivors moves the worst case by no more than
  its interval;
- strength: each black-box attack takes the baseline low enough for its failures elsewhere to mean something;
- signs of gradient obfuscation (Athalye et al. 2018): the rule's gradient above the exact one, a transfer or
  black-box attack stronger than every rule-gradient one, one step stronger than many, a retrieval attack that
  raised a query's AP above its clean AP (a failed attack: its gradient pointed away), a decision attack that
  stopped early on the model and not on the baseline (its failures there are weaker evidence).

A check that takes the smallest p-value over several algorithms (or budgets) corrects it for that (Bonferroni).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

import rules
from harness.analysis import stats
from harness.analysis.outcomes import (
    ATTACK,
    RETRIEVAL,
    algorithms,
    at_budget,
    attacks_of,
    linf_only,
    measure_of,
    pair,
    vector,
    worst_case,
)
from harness.stages.converge import RERUN

SANITY, CONVERGENCE, SIGN, STRENGTH = "sanity", "convergence", "sign", "strength"  # the kinds of check


@dataclass
class Check:
    name: str
    passed: bool | None  # None: the attacks it needs did not run
    detail: str
    purpose: str = SANITY  # sanity (failed: invalid), convergence (failed: not converged), sign (of obfuscation)


# ---- sanity checks: a cell that fails one is invalid -------------------------------------------------------------
def check_bp_gradients_agree(bp_at: pl.DataFrame, cosine: float | None, baseline: str = "bp") -> Check:
    """A baseline whose rule attaches no hook (bp: `Rule.exact`) has one gradient: its rule and exact attacks are one
    computation and must agree. A baseline with a backward of its own has two by design: n/a."""
    if baseline in rules.available_rules() and not rules.get_rule(baseline).exact:
        return Check(f"{baseline} gradients agree", None, f"{baseline} sends errors down with its own feedback: its "
                     "rule and exact gradients differ by design")
    mismatched = total = 0
    for alg in algorithms(bp_at, "rule", "exact"):
        a, b = pair(bp_at, (alg, "rule"), (alg, "exact"))
        differ = ~np.isclose(a.astype(float), b.astype(float), rtol=0, atol=1e-6)  # AP sums in another order
        mismatched, total = mismatched + int(differ.sum()), total + len(a)
    parts = [f"{mismatched} of {total} outcomes differ between {baseline}'s rule and exact attacks"] if total else []
    if cosine is not None and not math.isnan(cosine):
        parts.append(f"cosine {cosine:.6f}")
    if not parts:
        return Check(f"{baseline} gradients agree", None,
                     f"no attack ran on {baseline} with both the rule and the exact gradient")
    ok = (mismatched <= 0.01 * total) and (cosine is None or math.isnan(cosine) or cosine >= 0.999)
    return Check(f"{baseline} gradients agree", ok, "; ".join(parts))


def check_exact_not_weaker(at: pl.DataFrame, delta: float) -> Check:
    """The exact gradient of the same algorithm is at least as strong as the rule's, within delta."""
    worst, tests = None, []
    for alg in algorithms(at, "rule", "exact"):
        rule, exact = pair(at, (alg, "rule"), (alg, "exact"))
        tests.append(stats.greater_by(exact, rule, delta))
        if worst is None or tests[-1] < worst[1]:
            worst = (alg, tests[-1], exact.mean(), rule.mean())
    if worst is None:
        return Check("exact gradient not weaker", None, "no algorithm ran with both the rule and the exact gradient")
    alg, _, e, r = worst
    p = stats.bonferroni(tests)
    f = measure_of(at).fmt
    return Check("exact gradient not weaker", p >= stats.ALPHA,
                 f"{alg}: exact {f(e)} vs rule {f(r)} (p={p:.3g} that exact is weaker by more than {delta:g})")


def check_accuracy_falls_with_eps(outcomes: pl.DataFrame) -> Check:
    """A budget's own run must not be significantly more accurate (or its mAP higher) than a smaller budget's: a
    broken attack."""
    m, worst, tests = measure_of(outcomes), None, []
    for key, df in outcomes.sort(ATTACK, nulls_last=True).group_by(ATTACK, maintain_order=True):
        grid = sorted(df["eps"].unique().to_list())
        for small, large in zip(grid, grid[1:], strict=False):
            a = vector(df.filter(pl.col("eps") == large), m.raw)
            b = vector(df.filter(pl.col("eps") == small), m.raw)
            tests.append(stats.paired_greater(a, b))
            if worst is None or tests[-1] < worst[1]:
                worst = (f"{key[0]}/{key[1]} eps {small:g} -> {large:g}", tests[-1], b.mean(), a.mean())
    if worst is None:
        return Check("accuracy falls with eps", None, "no attack ran at two budgets")
    where, _, before, after = worst
    p = stats.bonferroni(tests)
    if after <= before:
        return Check("accuracy falls with eps", True, "no budget's own run is more accurate than a smaller one's")
    return Check("accuracy falls with eps", p >= stats.ALPHA, f"largest rise: {where}, {m.fmt(before)} -> "
                 f"{m.fmt(after)} (p={p:.3g})")


def check_bp_broken(bp_outcomes: pl.DataFrame, below: float | None, baseline: str = "bp") -> Check:
    """The strongest attack at the largest budget in the grid takes the baseline near 0 (a retrieval model near
    chance): the attacks can break a model. `below`: None where the DAG sets no limit for the task."""
    name = f"attacks break {baseline}"
    bp_outcomes = linf_only(bp_outcomes)
    if bp_outcomes.is_empty():
        return Check(name, None, f"no attack ran on {baseline}")
    if below is None:
        return Check(name, None, "no limit for this task in `verdicts.bp_broken_below`")
    top = float(bp_outcomes["eps"].max())
    worst, by, _ = worst_case(at_budget(bp_outcomes, top))
    return Check(name, worst.value < below, f"{baseline}'s worst case at eps {top:g}: {worst} by {by} (limit "
                 f"{measure_of(bp_outcomes).fmt(below)})")


def check_equal_evidence(at: pl.DataFrame, bp_at: pl.DataFrame, reran: bool, bp_reran: bool,
                         baseline: str = "bp") -> Check:
    """Every attack of the cell at the primary budget ran on the baseline's model too, on the same images, and the
    other way round; a convergence re-run that found no survivor to attack ran and broke nothing. A comparison with
    an attack missing on one side would be decided on a subset: the cell is invalid instead."""
    grid = {a for a in attacks_of(at) if not a[0].startswith(RERUN)}
    theirs = {a for a in attacks_of(bp_at) if not a[0].startswith(RERUN)}
    problems = [f"{a}/{s} ran on this model only" for a, s in sorted(grid - theirs, key=str)]
    problems += [f"{a}/{s} ran on {baseline} only" for a, s in sorted(theirs - grid, key=str)]
    for a, s in sorted(grid & theirs, key=str):
        mine = set(at.filter((pl.col("attack") == a) & (pl.col("source") == s))["image"].to_list())
        other = set(bp_at.filter((pl.col("attack") == a) & (pl.col("source") == s))["image"].to_list())
        if mine != other:
            problems.append(f"{a}/{s} saw {len(mine)} images here and {len(other)} on {baseline}, "
                            f"{len(mine & other)} of them the same")
    if reran != bp_reran:
        problems.append(f"the convergence re-run ran on {'this model' if reran else baseline} only")
    if problems:
        return Check("equal evidence", False, "; ".join(problems))
    return Check("equal evidence", True, f"{len(grid)} attacks on the same images on both models"
                 + (", and the convergence re-run on both" if reran else ""))


def check_converged(outcomes: pl.DataFrame, eps: float, delta: float, reran: bool = False, whose: str = "") -> Check:
    """The convergence re-run (at the primary budget `eps`) runs in rounds, each on what the rounds before left
    robust, until a round breaks fewer than delta/2 of the images: the attacks have converged when the last round
    broke fewer than that (Carlini et al. 2019: an evaluation whose number still moves under a stronger attack had
    not converged). A table from before rounds counts as one round. `reran`: a re-run ran on this model (with no
    survivors it leaves no rows). `whose`: the baseline's name, where it is the baseline's re-run that is checked
    (the comparison reads its worst case too)."""
    name = f"{whose} attack converged" if whose else "attack converged"
    at = at_budget(outcomes, eps)
    attacks = attacks_of(at)
    reruns = [a for a in attacks if a[0].startswith(RERUN)]
    if not reruns:
        if measure_of(at) is RETRIEVAL:
            return Check(name, None, "retrieval attacks have no convergence re-run", CONVERGENCE)
        if reran:
            return Check(name, True, "the other attacks broke every image: nothing to re-run", CONVERGENCE)
        return Check(name, None, "no convergence re-run on this model (the DAG's `converge`)", CONVERGENCE)
    before, _, _ = worst_case(at, [a for a in attacks if a not in reruns])
    after, _, _ = worst_case(at)
    rows = linf_only(outcomes).filter(pl.col("attack").is_in([a for a, _ in reruns]) & (pl.col("eps") == eps))
    if "round" not in rows.columns:  # one round, from before there were rounds
        rows = rows.with_columns(pl.when(pl.col("robust")).then(None).otherwise(1).alias("round"))
    broke = dict(rows.drop_nulls("round").group_by("round").len().iter_rows())
    ran = int(rows["rounds"].max()) if "rounds" in rows.columns and rows["rounds"].max() is not None else max(
        broke, default=1)  # the last round may have broken none, and left no row that says it ran
    attacked, parts = rows.height, []
    for r in range(1, ran + 1):
        parts.append(f"round {r}: {broke.get(r, 0)} of {attacked}")
        attacked -= broke.get(r, 0)
    limit = delta / 2 * after.n
    last = broke.get(ran, 0)
    return Check(name, last < limit,
                 f"{reruns[0][0].removeprefix(RERUN)}/exact re-run on the images the other attacks left robust, "
                 f"{', '.join(parts)} broken ({'fewer' if last < limit else 'not fewer'} than {limit:g}, delta/2 "
                 f"of {after.n}, in the last): worst case {before.value:.1%} -> {after}", CONVERGENCE)


def blackbox_strength(bp_outcomes: pl.DataFrame, eps: float, families: dict[str, str], above: float,
                      baseline: str = "bp") -> list[Check]:
    """Each L-inf black-box (score or decision) attack's accuracy on the baseline at the primary budget: one that
    leaves it above `above` is too weak for its failures on another model to mean anything."""
    at = at_budget(bp_outcomes, eps)
    out = []
    for attack in sorted({a for a in at["attack"].unique().to_list() if families.get(a) in ("score", "decision")}):
        top = float(linf_only(bp_outcomes).filter((pl.col("attack") == attack) & (pl.col("eps") <= eps + 1e-12))
                    ["eps"].max())
        if top < eps - 1e-12:  # it counts there with a smaller budget's outcomes, but did not run there
            out.append(Check(f"{attack} strong enough", None, f"{attack} did not run at eps {eps:g} (its largest "
                             f"budget up to there is {top:g}): its strength there is unknown", STRENGTH))
            continue
        est, _, _ = worst_case(at.filter(pl.col("attack") == attack))
        strong = est.value <= above
        out.append(Check(f"{attack} strong enough", strong, f"{attack} takes {baseline} to {est} at eps {eps:g}"
                         + ("" if strong else f": too weak (above {above:.0%}); its failures say little"), STRENGTH))
    return out


# ---- signs of obfuscation (Athalye et al. 2018) ------------------------------------------------------------------
def sign_rule_above_exact(at: pl.DataFrame) -> Check:
    best, tests = None, []
    for alg in algorithms(at, "rule", "exact"):
        rule, exact = pair(at, (alg, "rule"), (alg, "exact"))
        tests.append(stats.paired_greater(rule, exact))
        if best is None or tests[-1] < best[1]:
            best = (alg, tests[-1], rule.mean(), exact.mean())
    if best is None:
        return Check("rule gradient above exact", None, "no algorithm ran with both gradients", SIGN)
    alg, _, r, e = best
    p = stats.bonferroni(tests)
    f = measure_of(at).fmt
    return Check("rule gradient above exact", p < stats.ALPHA, f"{alg}: rule {f(r)} vs exact {f(e)} (p={p:.3g})",
                 SIGN)


def sign_transfer_or_blackbox_stronger(at: pl.DataFrame, families: dict[str, str]) -> Check:
    """A transfer or black-box attack beats the model's own gradient: it breaks images (or lowers APs) that every
    rule-gradient attack, taken together per image, left alone."""
    rule_side = [(a, s) for a, s in attacks_of(at) if s == "rule"]
    other = [(a, s) for a, s in attacks_of(at) if s == "transfer" or families.get(a) in ("score", "decision")]
    if not rule_side or not other:
        return Check("transfer or black-box stronger", None, "no transfer or black-box attack beside a rule one",
                     SIGN)
    m, best, tests = measure_of(at), None, []
    for o in other:
        mine = at.filter((pl.col("attack") == o[0]) & (pl.col("source") == o[1]))
        _, _, own = worst_case(at, rule_side, set(mine["image"].to_list()))
        theirs = vector(mine.filter(pl.col("image").is_in(own["image"].to_list())))
        tests.append(stats.paired_greater(own[m.value].to_numpy(), theirs))
        if best is None or tests[-1] < best[1]:
            best = (o, tests[-1], own[m.value].to_numpy().mean(), theirs.mean())
    o, _, ra, oa = best
    p = stats.bonferroni(tests)
    return Check("transfer or black-box stronger", p < stats.ALPHA,
                 f"{o[0]}/{o[1]} {m.fmt(oa)} vs every rule-gradient attack {m.fmt(ra)} (p={p:.3g})", SIGN)


def sign_single_step_stronger(at: pl.DataFrame, single_step: set[str]) -> Check:
    best, tests = None, []
    have = {a for a, s in attacks_of(at) if s == "rule"}
    for one in sorted(have & single_step):
        for many in sorted(have - single_step):
            both = pair(at, (many, "rule"), (one, "rule"))
            tests.append(stats.paired_greater(*both))
            if best is None or tests[-1] < best[2]:
                best = (one, many, tests[-1], both[1].mean(), both[0].mean())
    if best is None:
        return Check("single step stronger than iterative", None, "no single-step and iterative rule attacks",
                     SIGN)
    one, many, _, oa, ma = best
    p = stats.bonferroni(tests)
    f = measure_of(at).fmt
    return Check("single step stronger than iterative", p < stats.ALPHA,
                 f"{one} {f(oa)} vs {many} {f(ma)}, rule gradient (p={p:.3g})", SIGN)



def sign_attack_raised_ap(outcomes: pl.DataFrame) -> Check:
    """A retrieval attack's own run at a budget > 0 that left a query's AP above its clean AP failed outright: it
    moved the code the wrong way. Such runs are flagged per attack and source (`outcomes`: every budget)."""
    name = "attack raised AP above clean"
    if measure_of(outcomes) is not RETRIEVAL:
        return Check(name, None, "classification outcomes have no AP", SIGN)
    runs = linf_only(outcomes).filter(pl.col("eps") > 0)
    raised = (runs.with_columns(pl.col("source").fill_null("none"))
              .group_by(ATTACK).agg((pl.col(RETRIEVAL.raw) > pl.col(RETRIEVAL.clean) + 1e-9).sum().alias("k"),
                                    pl.col("image").n_unique().alias("n"),
                                    pl.col("eps").filter(pl.col(RETRIEVAL.raw) > pl.col(RETRIEVAL.clean) + 1e-9)
                                    .unique().sort().alias("at"))
              .filter(pl.col("k") > 0).sort(ATTACK))
    if raised.is_empty():
        return Check(name, False, "no attack raised a query's AP above its clean AP", SIGN)
    return Check(name, True, "; ".join(
        f"{r['attack']}/{r['source']} raised {r['k']} APs of {r['n']} queries above clean (at eps "
        f"{', '.join(f'{e:g}' for e in r['at'])}): a failed attack" for r in raised.iter_rows(named=True)), SIGN)


def sign_stopped_early(mine: pl.DataFrame, bps: pl.DataFrame, baseline: str = "bp", below: float = 0.5) -> Check:
    """A decision attack that spent less than `below` of the baseline's own queries per image it attacked (its start
    search apart) stopped early on this model: Boundary ends once every image's steps have shrunk, so what it
    failed to break there rests on less search than on the baseline. Flagged per attack."""
    name = "decision attack stopped early"

    def spent(outcomes: pl.DataFrame) -> pl.DataFrame:
        if "own_queries" not in outcomes.columns:
            return pl.DataFrame(schema={"attack": pl.String, "own_queries": pl.Float64})
        return (outcomes.filter(pl.col("own_queries").is_not_null() & pl.col("own_queries").is_not_nan())
                .group_by("attack").agg(pl.col("own_queries").first()))

    both = spent(mine).join(spent(bps), on="attack", suffix="_bp").sort("attack")
    if both.is_empty():
        return Check(name, None, f"no decision attack ran on both this model and {baseline}", SIGN)
    early = both.filter(pl.col("own_queries") < below * pl.col("own_queries_bp"))
    shown = early if not early.is_empty() else both
    detail = "; ".join(f"{r['attack']} spent {r['own_queries']:.0f} queries per image it attacked, {baseline} "
                       f"{r['own_queries_bp']:.0f}" for r in shown.iter_rows(named=True))
    if early.is_empty():
        return Check(name, False, detail, SIGN)
    return Check(name, True, f"{detail}: stopped early here and not on {baseline}; its failures here say less",
                 SIGN)

