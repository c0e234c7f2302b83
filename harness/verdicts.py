"""Per-cell verdicts from per-image outcomes, by a checklist declared before the numbers are seen (docs/evaluation.md).

A cell is one fine-tuned model: dataset x backbone x task x rule x seed. Its evidence is the per-image outcome
table of every attack run on it (`workloads.attacks.run_attack`) and the same for its bp sibling. What a row
measures depends on the task (`Measure`): a classifier's image is robust (0/1: `clean`, `robust`, `robust_raw`), a
retrieval query has an AP (`clean_ap`, `ap`, `ap_raw`). At the primary budget:

- an image is robust when it is classified correctly clean and every attack counted at that budget failed on it,
  and a query's worst AP is its lowest over those attacks (an attack counts with its largest budget <= the primary
  one: budgets are nested); the worst case over all attacks and gradient sources (an accuracy, or an mAP) is the
  headline number;
- comparisons with bp use only the attacks run on both, on the images both saw;
- checks: sanity (must pass, else the cell is invalid), convergence (the re-run of the strongest exact attack on
  the survivors must not push the worst case below its interval), then the signs of gradient obfuscation;
- verdicts, in order of precedence: invalid or attack not converged; robust beyond bp; gradient obfuscation; no
  gain over bp; inconclusive. The deciding tests are Holm-corrected over the cells of a report.
Every check is a named function returning the numbers it decided on; the report prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import polars as pl
from pydantic import Field

from harness import stats
from workloads.settings import Section

MODEL = ("dataset", "backbone", "task", "rule", "seed")
ATTACK = ("attack", "source")
INVALID, NOT_CONVERGED, BEYOND, OBFUSCATION, NO_GAIN, INCONCLUSIVE = (
    "invalid", "attack not converged", "robust beyond bp", "gradient obfuscation", "no gain over bp", "inconclusive")
RERUN = "re-run "  # the convergence re-run's outcomes carry its attack's name behind this
SANITY, CONVERGENCE, SIGN, STRENGTH = "sanity", "convergence", "sign", "strength"  # the kinds of check


Share = Annotated[float, Field(ge=0, le=1)]


class VerdictSettings(Section):
    primary: dict[str, Share] = {"classification": 0.1, "hashing": 0.1}
    """Task -> the L-inf budget its verdict is decided at (the other budgets are descriptive); a task not named here
    gets no verdict."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """The margin: a difference of accuracy (or of mAP) smaller than this is "no difference"."""
    bp_broken_below: dict[str, Share] = {"classification": 0.10, "hashing": 0.25}
    """Sanity, per task: the strongest attack at the largest budget must take bp below this accuracy (or mAP; 0.25
    is about chance on a 5-class retrieval database: chance mAP is roughly the share of relevant items)."""
    blackbox_weak_above: Annotated[float, Field(gt=0, le=1)] = 0.20
    """An L-inf black-box attack that leaves bp above this accuracy at the primary budget is marked too weak."""

    @classmethod
    def from_logged(cls, logged: dict) -> VerdictSettings:
        """The settings a run logged, read as they were meant: before retrieval had verdicts, `retrieval` was the
        hashing budget of a descriptive table and `bp_broken_below` one number, for classification."""
        logged = dict(logged)
        if "retrieval" in logged:
            logged["primary"] = {**logged.get("primary", {"classification": 0.1})}
            logged["primary"].setdefault("hashing", logged.pop("retrieval"))
        if isinstance(logged.get("bp_broken_below"), float):
            logged["bp_broken_below"] = {**cls().bp_broken_below, "classification": logged["bp_broken_below"]}
        return cls.model_validate(logged)


@dataclass(frozen=True)
class Measure:
    """What a task's per-image outcome rows hold, and how its numbers are written."""

    clean: str  # the clean value per image
    value: str  # the value under attack, nested over budgets
    raw: str  # the value under this budget's own run
    unit: str  # what n counts
    percent: bool  # written as a percentage (an accuracy) or as a fraction (an mAP)

    def fmt(self, x: float) -> str:
        return f"{x:.1%}" if self.percent else f"{x:.3f}"


ACCURACY = Measure("clean", "robust", "robust_raw", "images", True)
RETRIEVAL = Measure("clean_ap", "ap", "ap_raw", "queries", False)


def measure_of(outcomes: pl.DataFrame) -> Measure:
    """Retrieval outcomes carry per-query APs; classification outcomes carry per-image robust flags."""
    return RETRIEVAL if RETRIEVAL.value in outcomes.columns else ACCURACY


@dataclass
class Estimate:
    """A proportion with its Wilson 95% interval and its n."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return stats.wilson(self.k, self.n)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.value:.1%} [{lo:.1%}, {hi:.1%}] (n={self.n})"


@dataclass
class MeanEstimate:
    """An mAP: the mean of per-query APs with its bootstrap 95% interval over queries, and its n."""

    values: np.ndarray

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def value(self) -> float:
        return float(self.values.mean()) if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return stats.bootstrap_mean(self.values)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"mAP {self.value:.3f} [{lo:.3f}, {hi:.3f}] (n={self.n} queries)"


def estimate(values: np.ndarray) -> Estimate | MeanEstimate:
    """0/1 outcomes -> a proportion (Wilson); AP values -> a mean (bootstrap)."""
    values = np.asarray(values)
    return Estimate(int(values.sum()), len(values)) if values.dtype == bool else MeanEstimate(values.astype(float))


@dataclass
class Check:
    name: str
    passed: bool | None  # None: the attacks it needs did not run
    detail: str
    kind: str = SANITY  # sanity (failed: invalid), convergence (failed: not converged), sign (of obfuscation)


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


def linf_only(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The L-inf attacks' outcomes (an L2 attack's budgets are another scale: it never counts at an L-inf one)."""
    return outcomes.filter(pl.col("norm") == "linf") if "norm" in outcomes.columns else outcomes


def at_budget(outcomes: pl.DataFrame, eps: float, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Per model, attack and image: `columns` (the measure's clean and attacked value) at the attack's largest L-inf
    budget <= eps (nested budgets)."""
    if columns is None:
        m = measure_of(outcomes)
        columns = (m.clean, m.value)
    below = linf_only(outcomes).filter(pl.col("eps") <= eps + 1e-12).with_columns(pl.col("source").fill_null("none"))
    top = below.group_by([*MODEL, *ATTACK]).agg(pl.col("eps").max().alias("_top"))
    return (below.join(top, on=[*MODEL, *ATTACK]).filter(pl.col("eps") == pl.col("_top"))
            .select([*MODEL, *ATTACK, "image", *columns]))


def _vector(df: pl.DataFrame, column: str | None = None) -> np.ndarray:
    return df.sort("image")[column or measure_of(df).value].to_numpy()


def _attacks(at: pl.DataFrame) -> list[tuple]:
    """The (attack, source) pairs in a table, in a fixed order."""
    return [tuple(r) for r in at.select(ATTACK).unique().sort(ATTACK, nulls_last=True).iter_rows()]


def worst_case(at: pl.DataFrame, attacks: list[tuple] | None = None, images: set | None = None) -> tuple[
        Estimate | MeanEstimate, str, pl.DataFrame]:
    """One model's worst case at a budget, per image over all (or the given) attacks: robust under every one (or the
    lowest AP); which attacks broke the most images (or left the lowest mAP)."""
    m = measure_of(at)
    if attacks is not None:
        at = at.join(pl.DataFrame(attacks, schema=list(ATTACK), orient="row"), on=list(ATTACK), how="semi")
    if images is not None:
        at = at.filter(pl.col("image").is_in(sorted(images)))
    per_image = at.group_by("image").agg(pl.col(m.clean).min(), pl.col(m.value).min()).sort("image")
    if m is ACCURACY:
        breaks = (at.filter(pl.col("clean") & ~pl.col("robust")).group_by(ATTACK).len()
                  .sort(["len", "attack", "source"], descending=[True, False, False]))  # ties in a fixed order
        by = ", ".join(f"{r['attack']}/{r['source']} {r['len']}" for r in breaks.head(3).iter_rows(named=True))
    else:
        lowest = at.group_by(ATTACK).agg(pl.col(m.value).mean()).sort([m.value, "attack", "source"])
        by = ", ".join(f"{r['attack']}/{r['source']} {r[m.value]:.3f}" for r in lowest.head(3).iter_rows(named=True))
    return estimate(per_image[m.value].to_numpy()), by or "none", per_image


def _pair(at: pl.DataFrame, attack: tuple, other: tuple, column: str | None = None) -> tuple[
        np.ndarray, np.ndarray] | None:
    """Two attacks' per-image values (robust, or AP) on the images both saw, or None if one did not run."""
    a = at.filter((pl.col("attack") == attack[0]) & (pl.col("source") == attack[1]))
    b = at.filter((pl.col("attack") == other[0]) & (pl.col("source") == other[1]))
    if a.is_empty() or b.is_empty():
        return None
    shared = sorted(set(a["image"].to_list()) & set(b["image"].to_list()))
    return (_vector(a.filter(pl.col("image").is_in(shared)), column),
            _vector(b.filter(pl.col("image").is_in(shared)), column))


def _algorithms(at: pl.DataFrame, *sources: str) -> list[str]:
    """Attacks run with every one of `sources` on this model."""
    have = set(_attacks(at))
    return sorted({a for a, _ in have if all((a, s) in have for s in sources)})


# ---- sanity checks: a cell that fails one is invalid -------------------------------------------------------------
def check_bp_gradients_agree(bp_at: pl.DataFrame, cosine: float | None) -> Check:
    """bp attaches no hook: its rule and exact gradients are one computation, so their attacks must agree."""
    mismatched = total = 0
    for alg in _algorithms(bp_at, "rule", "exact"):
        a, b = _pair(bp_at, (alg, "rule"), (alg, "exact"))
        differ = ~np.isclose(a.astype(float), b.astype(float), rtol=0, atol=1e-6)  # AP sums in another order
        mismatched, total = mismatched + int(differ.sum()), total + len(a)
    parts = [f"{mismatched} of {total} outcomes differ between bp's rule and exact attacks"] if total else []
    if cosine is not None and not math.isnan(cosine):
        parts.append(f"cosine {cosine:.6f}")
    if not parts:
        return Check("bp gradients agree", None, "no attack ran on bp with both the rule and the exact gradient")
    ok = (mismatched <= 0.01 * total) and (cosine is None or math.isnan(cosine) or cosine >= 0.999)
    return Check("bp gradients agree", ok, "; ".join(parts))


def check_exact_not_weaker(at: pl.DataFrame, delta: float) -> Check:
    """The exact gradient of the same algorithm is at least as strong as the rule's, within delta."""
    worst = None
    for alg in _algorithms(at, "rule", "exact"):
        rule, exact = _pair(at, (alg, "rule"), (alg, "exact"))
        p = stats.greater_by(exact, rule, delta)
        if worst is None or p < worst[1]:
            worst = (alg, p, exact.mean(), rule.mean())
    if worst is None:
        return Check("exact gradient not weaker", None, "no algorithm ran with both the rule and the exact gradient")
    alg, p, e, r = worst
    f = measure_of(at).fmt
    return Check("exact gradient not weaker", p >= stats.ALPHA,
                 f"{alg}: exact {f(e)} vs rule {f(r)} (p={p:.3g} that exact is weaker by more than {delta:g})")


def check_accuracy_falls_with_eps(outcomes: pl.DataFrame) -> Check:
    """A budget's own run must not be significantly more accurate (or its mAP higher) than a smaller budget's: a
    broken attack."""
    m, worst = measure_of(outcomes), None
    for key, df in outcomes.sort(ATTACK, nulls_last=True).group_by(ATTACK, maintain_order=True):
        grid = sorted(df["eps"].unique().to_list())
        for small, large in zip(grid, grid[1:], strict=False):
            a = _vector(df.filter(pl.col("eps") == large), m.raw)
            b = _vector(df.filter(pl.col("eps") == small), m.raw)
            p = stats.paired_greater(a, b)
            if worst is None or p < worst[1]:
                worst = (f"{key[0]}/{key[1]} eps {small:g} -> {large:g}", p, b.mean(), a.mean())
    if worst is None:
        return Check("accuracy falls with eps", None, "no attack ran at two budgets")
    where, p, before, after = worst
    if after <= before:
        return Check("accuracy falls with eps", True, "no budget's own run is more accurate than a smaller one's")
    return Check("accuracy falls with eps", p >= stats.ALPHA, f"largest rise: {where}, {m.fmt(before)} -> "
                 f"{m.fmt(after)} (p={p:.3g})")


def check_bp_broken(bp_outcomes: pl.DataFrame, below: float | None) -> Check:
    """The strongest attack at the largest budget in the grid takes bp near 0 (a retrieval model near chance): the
    attacks can break a model. `below`: None where the DAG sets no limit for the task."""
    bp_outcomes = linf_only(bp_outcomes)
    if bp_outcomes.is_empty():
        return Check("attacks break bp", None, "no attack ran on bp")
    if below is None:
        return Check("attacks break bp", None, "no limit for this task in `verdicts.bp_broken_below`")
    top = float(bp_outcomes["eps"].max())
    worst, by, _ = worst_case(at_budget(bp_outcomes, top))
    return Check("attacks break bp", worst.value < below,
                 f"bp's worst case at eps {top:g}: {worst} by {by} (limit {measure_of(bp_outcomes).fmt(below)})")


def retrieval_worst_case(outcomes: pl.DataFrame, eps: float) -> pl.DataFrame:
    """Per hashing model (bp included, whatever its siblings): clean mAP and the mAP of each query's worst AP over
    every attack and source at `eps` (each attack at its largest budget <= eps), with bootstrap 95% intervals."""
    if outcomes.is_empty():  # no hashing model was attacked
        return pl.DataFrame()
    rows = []
    for model, at in at_budget(outcomes, eps).sort([*MODEL, *ATTACK]).group_by(list(MODEL), maintain_order=True):
        worst, by, per_query = worst_case(at)
        clean = estimate(per_query[RETRIEVAL.clean].to_numpy())
        rows.append({**dict(zip(MODEL, model, strict=True)), "clean mAP": clean.value, "clean_lo": clean.interval[0],
                     "clean_hi": clean.interval[1], "worst mAP": worst.value, "worst_lo": worst.interval[0],
                     "worst_hi": worst.interval[1], "queries": worst.n, "lowest by": by})
    return pl.DataFrame(rows) if rows else pl.DataFrame()


# ---- convergence: the re-run of the strongest exact attack on the survivors ----------------------------------------
def survivors(tables: list[pl.DataFrame], eps: float) -> list[int]:
    """The images robust at L-inf budget `eps` under every one of these attack outcome tables that saw them (each
    at its largest budget <= eps): what the convergence re-run attacks."""
    parts = []
    for t in tables:
        below = linf_only(t).filter(pl.col("eps") <= eps + 1e-12)
        if not below.is_empty():
            parts.append(below.filter(pl.col("eps") == below["eps"].max()).select("image", "robust"))
    if not parts:
        return []
    per_image = pl.concat(parts).group_by("image").agg(pl.col("robust").all())
    return sorted(per_image.filter(pl.col("robust"))["image"].to_list())


def check_converged(at: pl.DataFrame, reran: bool = False) -> Check:
    """The worst case before the re-run must lie within the Wilson interval of the worst case after it: a stronger
    attack may move the number only by what the sample cannot resolve anyway (Carlini et al. 2019: an evaluation
    whose number moves under a stronger attack had not converged). `reran`: a re-run ran on this model (with no
    survivors it leaves no rows)."""
    attacks = _attacks(at)
    reruns = [a for a in attacks if a[0].startswith(RERUN)]
    if not reruns:
        if measure_of(at) is RETRIEVAL:
            return Check("attack converged", None, "retrieval attacks have no convergence re-run", CONVERGENCE)
        if reran:
            return Check("attack converged", True, "the other attacks broke every image: nothing to re-run",
                         CONVERGENCE)
        return Check("attack converged", None, "no convergence re-run on this model (the DAG's `converge`)",
                     CONVERGENCE)
    before, _, _ = worst_case(at, [a for a in attacks if a not in reruns])
    after, _, _ = worst_case(at)
    lo, hi = after.interval
    return Check("attack converged", lo <= before.value <= hi,
                 f"{reruns[0][0].removeprefix(RERUN)}/exact re-run on the {before.k} images the other attacks left "
                 f"robust broke {before.k - after.k}: worst case {before.value:.1%} -> {after} (interval after "
                 f"[{lo:.1%}, {hi:.1%}])", CONVERGENCE)


def blackbox_strength(bp_outcomes: pl.DataFrame, eps: float, families: dict[str, str], above: float) -> list[Check]:
    """Each L-inf black-box (score or decision) attack's accuracy on bp at the primary budget: one that leaves bp
    above `above` is too weak for its failures on another model to mean anything."""
    at = at_budget(bp_outcomes, eps)
    out = []
    for attack in sorted({a for a in at["attack"].unique().to_list() if families.get(a) in ("score", "decision")}):
        est, _, _ = worst_case(at.filter(pl.col("attack") == attack))
        strong = est.value <= above
        out.append(Check(f"{attack} strong enough", strong, f"{attack} takes bp to {est} at eps {eps:g}"
                         + ("" if strong else f": too weak (above {above:.0%}); its failures say little"), STRENGTH))
    return out


# ---- signs of obfuscation (Athalye et al. 2018) ------------------------------------------------------------------
def sign_rule_above_exact(at: pl.DataFrame) -> Check:
    best = None
    for alg in _algorithms(at, "rule", "exact"):
        rule, exact = _pair(at, (alg, "rule"), (alg, "exact"))
        p = stats.paired_greater(rule, exact)
        if best is None or p < best[1]:
            best = (alg, p, rule.mean(), exact.mean())
    if best is None:
        return Check("rule gradient above exact", None, "no algorithm ran with both gradients", SIGN)
    alg, p, r, e = best
    f = measure_of(at).fmt
    return Check("rule gradient above exact", p < stats.ALPHA, f"{alg}: rule {f(r)} vs exact {f(e)} (p={p:.3g})",
                 SIGN)


def sign_transfer_or_blackbox_stronger(at: pl.DataFrame, families: dict[str, str]) -> Check:
    """A transfer or black-box attack beats the model's own gradient: it breaks images (or lowers APs) that every
    rule-gradient attack, taken together per image, left alone."""
    rule_side = [(a, s) for a, s in _attacks(at) if s == "rule"]
    other = [(a, s) for a, s in _attacks(at) if s == "transfer" or families.get(a) in ("score", "decision")]
    if not rule_side or not other:
        return Check("transfer or black-box stronger", None, "no transfer or black-box attack beside a rule one",
                     SIGN)
    m, best = measure_of(at), None
    for o in other:
        mine = at.filter((pl.col("attack") == o[0]) & (pl.col("source") == o[1]))
        _, _, own = worst_case(at, rule_side, set(mine["image"].to_list()))
        theirs = _vector(mine.filter(pl.col("image").is_in(own["image"].to_list())))
        p = stats.paired_greater(own[m.value].to_numpy(), theirs)
        if best is None or p < best[1]:
            best = (o, p, own[m.value].to_numpy().mean(), theirs.mean())
    o, p, ra, oa = best
    return Check("transfer or black-box stronger", p < stats.ALPHA,
                 f"{o[0]}/{o[1]} {m.fmt(oa)} vs every rule-gradient attack {m.fmt(ra)} (p={p:.3g})", SIGN)


def sign_single_step_stronger(at: pl.DataFrame, single_step: set[str]) -> Check:
    best = None
    have = {a for a, s in _attacks(at) if s == "rule"}
    for one in sorted(have & single_step):
        for many in sorted(have - single_step):
            pair = _pair(at, (many, "rule"), (one, "rule"))
            p = stats.paired_greater(*pair)
            if best is None or p < best[2]:
                best = (one, many, p, pair[1].mean(), pair[0].mean())
    if best is None:
        return Check("single step stronger than iterative", None, "no single-step and iterative rule attacks",
                     SIGN)
    one, many, p, oa, ma = best
    f = measure_of(at).fmt
    return Check("single step stronger than iterative", p < stats.ALPHA,
                 f"{one} {f(oa)} vs {many} {f(ma)}, rule gradient (p={p:.3g})", SIGN)


def assess(outcomes: pl.DataFrame, model: dict, bp: dict, settings: VerdictSettings, families: dict[str, str],
           single_step: set[str], cosine: float | None = None, reran: bool = False) -> Cell:
    """The checks and the deciding tests of one cell (not yet its verdict: that waits for Holm over all cells)."""
    def of(m: dict) -> pl.DataFrame:
        return outcomes.filter(pl.all_horizontal([pl.col(k) == m[k] for k in MODEL]))

    mine, bps = of(model), of(bp)
    m, task = measure_of(outcomes), model["task"]
    at, bp_at = at_budget(mine, settings.primary[task]), at_budget(bps, settings.primary[task])
    worst, by, per_image = worst_case(at)
    own = [(a, s) for a, s in _attacks(at) if s == "rule"]
    cell = Cell(model, estimate(per_image[m.clean].to_numpy()), worst, by, worst_case(at, own)[0] if own else None,
                None, [], measure=m)
    cell.checks = [check_bp_gradients_agree(bp_at, cosine), check_exact_not_weaker(at, settings.delta),
                   check_accuracy_falls_with_eps(mine), check_bp_broken(bps, settings.bp_broken_below.get(task)),
                   check_converged(at, reran),
                   sign_rule_above_exact(at), sign_transfer_or_blackbox_stronger(at, families),
                   sign_single_step_stronger(at, single_step)]
    shared = sorted(set(_attacks(at)) & set(_attacks(bp_at)))
    if model["rule"] == "bp" or not shared:
        return cell
    images = set(at["image"].to_list()) & set(bp_at["image"].to_list())
    _, _, per_mine = worst_case(at, shared, images)
    cell.bp_worst, _, per_bp = worst_case(bp_at, shared, images)
    r, b = per_mine[m.value].to_numpy(), per_bp[m.value].to_numpy()
    cell.tests = {BEYOND: stats.greater_by(r, b, settings.delta), NO_GAIN: stats.equivalent(r, b, settings.delta)}
    obfuscation = [stats.greater_by(*_pair(at, (alg, "rule"), (alg, "exact")), settings.delta)
                   for alg in _algorithms(at, "rule", "exact")]
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
        failed = [ch for ch in c.checks if ch.kind == SANITY and ch.passed is False]
        unconverged = [ch for ch in c.checks if ch.kind == CONVERGENCE and ch.passed is False]
        if c.model["rule"] == "bp":
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
    head = f"**{m['rule']}** ({m['dataset']}/{m['backbone']}/{m['task']}, this model: seed {m['seed']}): {c.verdict}"
    if c.verdict in (INVALID, NOT_CONVERGED):
        return head + " (" + "; ".join(f"{ch.name} failed: {ch.detail}" for ch in failed) + ")."
    most = "most breaks by" if c.measure is ACCURACY else "lowest mAP by"
    text = f"{head}. Worst case {c.worst}, {most} {c.broken_by}"
    if c.own is not None and c.model["rule"] != "bp":
        text += f"; its own gradient says {f(c.own.value)}"
        if c.own.value > c.worst.value:
            text += f" (overstated by {f(c.own.value - c.worst.value)})"
    if c.bp_worst is not None:
        text += f"; bp on the same attacks and {c.measure.unit} {c.bp_worst}"
    decided = {BEYOND: BEYOND, OBFUSCATION: OBFUSCATION, NO_GAIN: NO_GAIN}.get(c.verdict)
    if decided and p.get(decided) is not None:
        text += f" (Holm-adjusted p={p[decided]:.3g}, margin {settings.delta:g})"
    signs = [ch.name for ch in c.checks if ch.kind == SIGN and ch.passed]
    if signs:
        text += "; signs of obfuscation: " + ", ".join(signs)
    if c.verdict == INCONCLUSIVE and c.needed:
        text += f"; about {c.needed} {c.measure.unit} would decide it"
    return text + "."
