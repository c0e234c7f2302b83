"""The checklist and the verdicts, on synthetic per-image outcome tables whose answer is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from harness.analysis import stats
from harness.analysis.checks import Check, blackbox_strength, check_converged
from harness.analysis.outcomes import Estimate, MeanEstimate, at_budget, retrieval_worst_case, worst_case
from harness.analysis.verdicts import (
    EQUIVALENT,
    INCONCLUSIVE,
    INVALID,
    LESS,
    MORE,
    NOT_CONVERGED,
    OVERSTATES,
    WITHIN,
    Cell,
    assess,
    decide,
)
from harness.config.verdicts import VerdictSettings
from harness.stages.converge import RERUN
from workloads.attacks.outcomes import survivors

FAMILIES = {"fgsm": "gradient", "pgd": "gradient", "apgd": "gradient", "hsja": "decision", "boundary": "decision"}
SINGLE = {"fgsm"}
SETTINGS = VerdictSettings(primary={"classification": 0.1, "hashing": 0.1})  # fixed by hand here
CELL = {"dataset": "d", "backbone": "b", "task": "classification", "seed": 0}


def robust_first(n: int, share: float) -> np.ndarray:
    """The first share * n images robust (so two shares of one n are nested, as attacks on one model tend to be)."""
    return np.arange(n) < round(share * n)


def table(rule: str, attacks: dict[tuple[str, str], dict[float, float]], n: int = 200,
          clean: float = 1.0, raw: dict | None = None) -> pl.DataFrame:
    """Outcomes of `rule`'s model: (attack, source) -> eps -> share of images robust (the first ones)."""
    rows = []
    ok = robust_first(n, clean)
    for (attack, source), grid in attacks.items():
        for eps, share in grid.items():
            robust = robust_first(n, share) & ok
            own = robust_first(n, raw[attack, source, eps]) if (attack, source, eps) in (raw or {}) else robust
            rows.append(pl.DataFrame({**{k: [v] * n for k, v in CELL.items()}, "rule": [rule] * n,
                                      "attack": [attack] * n, "source": pl.Series([source] * n, dtype=pl.String),
                                      "image": range(n),
                                      "eps": [float(eps)] * n, "clean": ok, "robust": robust, "robust_raw": own}))
    return pl.concat(rows)


def verdict_of(rule_attacks: dict, bp_attacks: dict, n: int = 200, **kw) -> Cell:
    outcomes = pl.concat([table("frsf", rule_attacks, n, **kw), table("bp", bp_attacks, n)])
    cells = [assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)]
    return decide(cells, SETTINGS)[0]


BP = {("pgd", "rule"): {0: 1.0, 0.1: 0.0}, ("pgd", "exact"): {0: 1.0, 0.1: 0.0}}


def on_both(model: dict, bp: dict, **kw) -> Cell:
    """A cell whose model and bp faced the same attacks (`bp` gives bp's shares where they differ)."""
    return verdict_of(model, {a: bp.get(a, {0: 1.0, 0.1: 0.0}) for a in model}, **kw)


def test_robust_only_through_its_own_gradient_is_as_robust_as_bp_and_its_gradient_overstates():
    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.55}, ("pgd", "exact"): {0: 1.0, 0.1: 0.0},
                    ("pgd", "transfer"): {0: 1.0, 0.1: 0.02}}, BP)
    assert (cell.robustness, cell.gradient) == (EQUIVALENT, OVERSTATES), cell.line
    assert cell.worst.value == 0.0 and cell.own.value == 0.55 and cell.overstatement.value == 0.55
    assert "above the worst case by 55.0 points" in cell.line
    signs = {c.name: c.passed for c in cell.checks}
    assert signs["rule gradient above exact"] and signs["transfer or black-box stronger"]


def test_robust_under_exact_gradients_too_is_more_robust_than_bp():
    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.5}}, BP)
    assert cell.robustness == MORE and cell.worst.value == 0.5 and cell.bp_worst.value == 0.0, cell.line
    assert cell.difference.lo > SETTINGS.delta and cell.gradient == OVERSTATES  # 10 points above, of 200 images


def test_less_robust_than_bp_is_said_so():
    """The committed demo's numbers at eps 0.02: bp 55.5%, frsf 37.5% under exact-gradient PGD (n=200)."""
    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.5, 0.3: 0.0}, ("pgd", "exact"): {0: 1.0, 0.1: 0.375, 0.3: 0.0}},
                   {a: {0: 1.0, 0.1: 0.555, 0.3: 0.0} for a in (("pgd", "rule"), ("pgd", "exact"))})
    assert cell.robustness == LESS and cell.difference.hi < -SETTINGS.delta, cell.line
    assert "**less robust than bp**" in cell.line and "difference -18.0 points" in cell.line


def test_the_same_worst_case_as_bp_is_equivalent_and_an_honest_gradient_is_within_the_margin():
    same = {("pgd", "rule"): {0: 1.0, 0.1: 0.02}, ("pgd", "exact"): {0: 1.0, 0.1: 0.02}}
    cell = verdict_of(same, same)
    assert (cell.robustness, cell.gradient) == (EQUIVALENT, WITHIN), cell.line


def test_a_small_sample_is_inconclusive_and_says_how_many_images_would_decide():
    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.1}, ("pgd", "exact"): {0: 1.0, 0.1: 0.1}}, BP, n=20)
    assert cell.robustness == INCONCLUSIVE and cell.needed and cell.needed > 20, cell.line
    assert f"about {cell.needed} images would decide it" in cell.line


def test_a_failed_robustness_test_never_hides_the_robustness_answer_behind_obfuscation():
    """bp 15%, the model 25% under the exact gradient and 90% under its own (n=200): ten points above bp is not
    shown beyond the margin at this n, so the answer is inconclusive, says the interval lies above bp, and the
    gradient answer stands beside it."""
    grid = {0: 1.0, 0.1: 0.15, 0.3: 0.0}
    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.9, 0.3: 0.0}, ("pgd", "exact"): {0: 1.0, 0.1: 0.25, 0.3: 0.0}},
                   {("pgd", "rule"): grid, ("pgd", "exact"): grid})
    assert (cell.robustness, cell.gradient) == (INCONCLUSIVE, OVERSTATES), cell.line
    assert cell.difference.value == pytest.approx(0.1) and 0 < cell.difference.lo < SETTINGS.delta
    assert "the interval excludes 0: above bp" in cell.line


@pytest.mark.parametrize("broken,rule_attacks,bp_attacks,raw", [
    ("bp gradients agree", {("pgd", "rule"): {0: 1.0, 0.1: 0.3}, ("pgd", "exact"): {0: 1.0, 0.1: 0.3}},
     {("pgd", "rule"): {0: 1.0, 0.1: 0.0}, ("pgd", "exact"): {0: 1.0, 0.1: 0.2}}, None),
    ("exact gradient not weaker", {("pgd", "rule"): {0: 1.0, 0.1: 0.1}, ("pgd", "exact"): {0: 1.0, 0.1: 0.6}},
     BP, None),
    ("attacks break bp", {("pgd", "rule"): {0: 1.0, 0.1: 0.5}, ("pgd", "exact"): {0: 1.0, 0.1: 0.5}},
     {("pgd", "rule"): {0: 1.0, 0.1: 0.4}, ("pgd", "exact"): {0: 1.0, 0.1: 0.4}}, None),
    ("accuracy falls with eps", {("pgd", "rule"): {0: 1.0, 0.05: 0.1, 0.1: 0.1}, ("pgd", "exact"): {0: 1.0, 0.1: 0.1}},
     BP, {("pgd", "rule", 0.1): 0.8}),
    ("equal evidence", {("pgd", "rule"): {0: 1.0, 0.1: 0.3}, ("pgd", "exact"): {0: 1.0, 0.1: 0.3},
                        ("hsja", None): {0: 1.0, 0.1: 0.3}}, BP, None),
])
def test_a_failed_sanity_check_makes_the_cell_invalid_and_says_which(broken, rule_attacks, bp_attacks, raw):
    cell = verdict_of(rule_attacks, bp_attacks, raw=raw)
    assert cell.robustness == INVALID and f"{broken} failed" in cell.line, cell.line
    assert [c.name for c in cell.checks[:5] if c.passed is False] == [broken]
    assert cell.gradient == "n/a"  # the numbers of an invalid evaluation answer nothing


def test_budgets_are_nested_an_attack_counts_with_its_largest_budget_below_the_primary_one():
    # apgd ran only up to 0.05 and broke every image there: it counts at the primary 0.1 too
    outcomes = table("frsf", {("pgd", "rule"): {0: 1.0, 0.1: 0.7}, ("apgd", "exact"): {0: 1.0, 0.05: 0.0}})
    worst, by, _ = worst_case(at_budget(outcomes, 0.1))
    assert worst.value == 0.0 and by.startswith("apgd/exact 200")


def test_an_attack_run_on_one_side_only_decides_nothing_and_a_model_broken_to_zero_is_never_more_robust():
    mine = {("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.6},
            ("hsja", None): {0: 1.0, 0.1: 0.0}}  # a black-box attack bp never faced breaks everything
    cell = verdict_of(mine, BP)
    assert cell.worst.value == 0.0 and cell.robustness == INVALID and cell.difference is None, cell.line
    assert "equal evidence failed: hsja/none ran on this model only" in cell.line
    assert on_both(mine, BP).robustness == EQUIVALENT  # bp faced it too: both at 0%
    fewer = verdict_of({("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.6}},
                       {**BP, ("pgd", "exact"): {0: 1.0, 0.1: 0.0}}, n=200)
    assert fewer.robustness == MORE
    other_images = pl.concat([table("frsf", BP, n=200), table("bp", BP, n=100)])
    check = assess(other_images, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)
    evidence = next(c for c in check.checks if c.name == "equal evidence")
    assert evidence.passed is False and "saw 200 images here and 100 on bp" in evidence.detail


def test_bps_worst_case_comes_from_its_strongest_algorithm():
    bp = {("pgd", "rule"): {0: 1.0, 0.1: 0.3}, ("pgd", "exact"): {0: 1.0, 0.1: 0.3},
          ("apgd", "exact"): {0: 1.0, 0.1: 0.0}}
    cell = verdict_of({("pgd", "rule"): {0: 1.0, 0.1: 0.35}, ("pgd", "exact"): {0: 1.0, 0.1: 0.3},
                       ("apgd", "exact"): {0: 1.0, 0.1: 0.0}}, bp)
    assert cell.bp_worst.value == 0.0 and cell.robustness == EQUIVALENT, cell.line


OBFUSCATED = {("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.3}}


def rerun(rule: str, before: float, after: float, n: int = 200) -> pl.DataFrame:
    """The convergence re-run's outcomes: only the images every other attack left robust (the first before * n),
    of which the first after * n stay robust."""
    t = table(rule, {(RERUN + "apgd", "exact"): {0.1: after}}, n)
    return t.filter(pl.col("image") < round(before * n))


def with_rerun(before: float, after: float, bp_reran: bool = True, attacks: dict = OBFUSCATED) -> Cell:
    """bp had no survivors: its re-run ran and left no rows. `attacks` leave `before` of the model's images."""
    outcomes = pl.concat([table("frsf", attacks), rerun("frsf", before, after), table("bp", BP),
                          rerun("bp", 0.0, 0.0)])
    cells = [assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE,
                    reran=True, bp_reran=bp_reran)]
    return decide(cells, SETTINGS)[0]


def test_a_re_run_whose_last_round_still_breaks_delta_over_two_of_the_images_is_attack_not_converged():
    cell = with_rerun(0.3, 0.1)  # 30% of 200 -> 10%: 40 breaks in its one round, the limit 5
    assert cell.robustness == NOT_CONVERGED, cell.line
    assert ("attack converged failed: apgd/exact re-run on the images the other attacks left robust, round 1: 40 of "
            "60 broken (not fewer than 5, delta/2 of 200, in the last): worst case 30.0% -> 10.0%") in cell.line
    assert cell.worst.value == 0.1  # the headline is the worst case with the re-run


def test_the_re_run_rounds_are_read_round_by_round_and_the_last_decides():
    rounds = rerun("frsf", 0.3, 0.2).with_columns(  # images 40-56 broken in round 1, 57-59 in round 2
        pl.when(pl.col("robust")).then(None).when(pl.col("image") < 57).then(1).otherwise(2).alias("round"))
    outcomes = pl.concat([table("frsf", OBFUSCATED), rounds, table("bp", BP), rerun("bp", 0.0, 0.0)], how="diagonal")
    cell = assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE,
                  reran=True)
    check = next(c for c in cell.checks if c.name == "attack converged")
    assert check.passed and check.detail == (
        "apgd/exact re-run on the images the other attacks left robust, round 1: 17 of 60, round 2: 3 of 43 broken "
        "(fewer than 5, delta/2 of 200, in the last): worst case 30.0% -> 20.0% [15.0%, 26.1%] (n=200)")
    # a last round that broke nothing leaves no row of its own: the table says how many rounds ran
    one = rounds.with_columns(pl.when(pl.col("round").is_null()).then(None).otherwise(1).alias("round"))
    for ran, passed in ((1, False), (2, True)):
        table2 = pl.concat([table("frsf", OBFUSCATED), one.with_columns(pl.lit(ran).alias("rounds"))],
                           how="diagonal")
        check = check_converged(table2.filter(pl.col("rule") == "frsf"), 0.1, 0.05)
        assert check.passed is passed and check.detail.count("round ") == ran, check.detail


def test_a_re_run_that_moves_bps_worst_case_gates_the_comparison_too():
    bp = {a: {0: 1.0, 0.1: 0.3, 0.3: 0.0} for a in (("pgd", "rule"), ("pgd", "exact"))}
    outcomes = pl.concat([table("frsf", bp), rerun("frsf", 0.3, 0.3), table("bp", bp), rerun("bp", 0.3, 0.1)])
    cell = decide([assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)],
                  SETTINGS)[0]
    assert cell.robustness == NOT_CONVERGED and "bp attack converged failed" in cell.line, cell.line


def test_a_re_run_within_the_interval_leaves_the_verdict_to_the_other_tests():
    cell = with_rerun(0.3, 0.29)  # two more breaks out of 60
    converged = next(c for c in cell.checks if c.name == "attack converged")
    assert converged.passed and cell.robustness == MORE, cell.line
    assert next(c for c in with_rerun(0.3, 0.3).checks if c.name == "attack converged").passed


def test_bps_empty_re_run_counts_as_run_and_the_comparison_uses_the_worst_case_after_the_re_run():
    """The model: 10% before its re-run, 8% after; bp: no survivor, so its re-run left no rows, and that counts as
    run. An earlier version compared on 10% (the re-run dropped out) and read 'more robust' at p=0.0027."""
    ten = {("pgd", "rule"): {0: 1.0, 0.1: 0.1}, ("pgd", "exact"): {0: 1.0, 0.1: 0.1}}
    cell = with_rerun(0.1, 0.08, attacks=ten)  # 4 more breaks: converged (fewer than 5)
    assert next(c for c in cell.checks if c.name == "equal evidence").passed, cell.line
    assert cell.difference.value == pytest.approx(0.08) and cell.robustness == INCONCLUSIVE, cell.line
    unequal = with_rerun(0.1, 0.08, bp_reran=False, attacks=ten)  # a re-run on one side only
    assert unequal.robustness == INVALID and "the convergence re-run ran on this model only" in unequal.line


def test_no_re_run_leaves_the_convergence_check_not_applicable():
    cell = verdict_of(OBFUSCATED, BP)
    assert next(c for c in cell.checks if c.name == "attack converged").passed is None
    outcomes = pl.concat([table("frsf", BP), table("bp", BP)])  # a re-run ran, but no image survived to re-run
    reran = assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE,
                   reran=True)
    check = next(c for c in reran.checks if c.name == "attack converged")
    assert check.passed and "nothing to re-run" in check.detail


def test_one_more_break_of_a_single_survivor_is_within_the_sample_noise():
    outcomes = pl.concat([table("frsf", OBFUSCATED), table("bp", {("pgd", "rule"): {0: 1.0, 0.1: 0.005},
                                                                  ("pgd", "exact"): {0: 1.0, 0.1: 0.005}}),
                          rerun("bp", 0.005, 0.0)])
    cell = assess(outcomes, {**CELL, "rule": "bp"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)
    check = next(c for c in cell.checks if c.name == "attack converged")
    assert check.passed, check.detail  # 0.5% -> 0.0% [0.0%, 1.9%] of 200


def test_survivors_are_the_images_robust_under_every_attack_that_saw_them_at_its_top_budget_below_eps():
    pgd = table("frsf", {("pgd", "exact"): {0: 1.0, 0.05: 0.5, 0.1: 0.3}}, n=10)  # images 0-2 robust at 0.1
    fgsm = table("frsf", {("fgsm", "exact"): {0: 1.0, 0.05: 0.5}}, n=4)  # saw 4 images; 0, 1 robust at 0.05
    big = table("frsf", {("fgsm", "exact"): {0.2: 0.0}}, n=10)  # above the budget: does not count
    assert survivors([pgd, fgsm, big], 0.1) == [0, 1]
    assert survivors([pgd], 0.05) == [0, 1, 2, 3, 4]


def test_an_l2_attack_never_counts_at_an_l_inf_budget():
    l2 = table("frsf", {("boundary", None): {0: 1.0, 0.1: 0.0}}).with_columns(pl.lit("l2").alias("norm"))
    linf = table("frsf", {("pgd", "exact"): {0: 1.0, 0.1: 0.4}}).with_columns(pl.lit("linf").alias("norm"))
    worst, by, _ = worst_case(at_budget(pl.concat([linf, l2]), 0.1))
    assert worst.value == 0.4 and by.startswith("pgd/exact")


def test_a_black_box_attack_that_leaves_bp_above_the_limit_is_marked_too_weak():
    bp = table("bp", {("hsja", None): {0: 1.0, 0.1: 0.5}, ("square", None): {0: 1.0, 0.1: 0.05},
                      ("pgd", "exact"): {0: 1.0, 0.1: 0.0}})
    checks = blackbox_strength(bp, 0.1, {**FAMILIES, "square": "score"}, 0.2)
    assert [(c.name, c.passed) for c in checks] == [("hsja strong enough", False), ("square strong enough", True)]
    assert "too weak" in checks[0].detail and "50.0%" in checks[0].detail
    elsewhere = blackbox_strength(bp, 0.05, {**FAMILIES, "square": "score"}, 0.2)  # both ran at 0 and 0.1 only
    assert [c.passed for c in elsewhere] == [None, None] and "did not run at eps 0.05" in elsewhere[0].detail


def test_retrieval_worst_case_is_the_map_of_each_querys_lowest_ap_over_attacks():
    def aps(attack: str, eps: float, ap: list[float]) -> pl.DataFrame:
        n = len(ap)
        return pl.DataFrame({**{k: [v] * n for k, v in {**CELL, "task": "hashing"}.items()}, "rule": ["bp"] * n,
                             "attack": [attack] * n, "source": ["exact"] * n, "image": range(n),
                             "eps": [eps] * n, "clean_ap": [1.0] * n, "ap": ap})
    outcomes = pl.concat([aps("hag", 0.1, [0.2, 0.9, 0.5, 0.6]), aps("sdha", 0.1, [0.8, 0.1, 0.5, 0.7]),
                          aps("sdha", 0.3, [0.0, 0.0, 0.0, 0.0])])  # above the budget: does not count
    row = retrieval_worst_case(outcomes, 0.1).row(0, named=True)
    assert row["worst mAP"] == pytest.approx((0.2 + 0.1 + 0.5 + 0.6) / 4) and row["clean mAP"] == 1.0
    assert row["worst_lo"] <= row["worst mAP"] <= row["worst_hi"] and row["queries"] == 4
    assert row["lowest by"] == "sdha/exact 0.525, hag/exact 0.550"
    assert retrieval_worst_case(pl.DataFrame(), 0.1).is_empty()  # a grid without hashing attacks


HASHING = {**CELL, "task": "hashing"}


def aps(level: float, n: int, phase: float = 0.0) -> np.ndarray:
    """n query APs spread around `level` (a fixed pattern, inside [0, 1]; models differ in `phase`)."""
    return np.clip(level + 0.08 * np.sin(np.arange(n) * 1.7 + phase), 0.0, 1.0)


def ap_table(rule: str, attacks: dict[tuple[str, str], dict[float, float]], n: int = 100,
             raw: dict | None = None) -> pl.DataFrame:
    """A hashing model's outcomes: (attack, source) -> eps -> the level of the query APs (nested over budgets as the
    attack runner nests them: a query's AP at eps is its lowest at any budget up to eps)."""
    rows, phase = [], 0.0 if rule == "bp" else 1.0
    for (attack, source), grid in attacks.items():
        nested = None
        for eps, level in sorted(grid.items()):
            own = aps(raw.get((attack, source, eps), level) if raw else level, n, phase)
            nested = own if nested is None else np.minimum(nested, aps(level, n, phase))
            rows.append(pl.DataFrame({**{k: [v] * n for k, v in HASHING.items()}, "rule": [rule] * n,
                                      "attack": [attack] * n, "source": pl.Series([source] * n, dtype=pl.String),
                                      "image": range(n), "eps": [float(eps)] * n, "clean_ap": aps(0.85, n, phase),
                                      "ap": nested, "ap_raw": own}))
    return pl.concat(rows)


def retrieval_verdict(rule_attacks: dict, bp_attacks: dict, n: int = 100, raw: dict | None = None) -> Cell:
    outcomes = pl.concat([ap_table("frsf", rule_attacks, n, raw), ap_table("bp", bp_attacks, n)])
    cells = [assess(outcomes, {**HASHING, "rule": "frsf"}, {**HASHING, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)]
    return decide(cells, SETTINGS)[0]


BP_HASH = {("hag", "rule"): {0: 0.85, 0.1: 0.14}, ("hag", "exact"): {0: 0.85, 0.1: 0.14},
           ("hag", "transfer"): {0: 0.85, 0.1: 0.14}}


HAG = (("hag", "rule"), ("hag", "exact"))


def retrieval_on_both(model: dict, bp: dict = BP_HASH, **kw) -> Cell:
    return retrieval_verdict(model, {a: bp.get(a, {0: 0.85, 0.1: 0.14}) for a in model}, **kw)


def test_retrieval_robust_only_through_its_own_gradient_is_as_robust_as_bp_and_its_gradient_overstates():
    cell = retrieval_on_both({("hag", "rule"): {0: 0.85, 0.1: 0.7}, ("hag", "exact"): {0: 0.85, 0.1: 0.15},
                              ("hag", "transfer"): {0: 0.85, 0.1: 0.35}})
    assert (cell.robustness, cell.gradient) == (EQUIVALENT, OVERSTATES), cell.line
    assert isinstance(cell.worst, MeanEstimate) and cell.worst.n == 100
    assert cell.worst.value == pytest.approx(aps(0.15, 100, 1.0).mean())
    assert cell.own.value == pytest.approx(aps(0.7, 100, 1.0).mean())
    assert "Worst case mAP 0.1" in cell.line and "lowest mAP by hag/exact" in cell.line
    assert "bp mAP 0.14" in cell.line and "on the same attacks and queries" in cell.line
    signs = {c.name: c.passed for c in cell.checks}
    assert signs["rule gradient above exact"] and signs["transfer or black-box stronger"]
    assert signs["attack converged"] is None  # retrieval has no convergence re-run


def test_retrieval_robust_under_exact_gradients_too_is_more_robust_than_bp():
    cell = retrieval_on_both({("hag", "rule"): {0: 0.85, 0.1: 0.7}, ("hag", "exact"): {0: 0.85, 0.1: 0.6}})
    assert cell.robustness == MORE and cell.worst.value == pytest.approx(aps(0.6, 100, 1.0).mean()), cell.line


def test_retrieval_below_bp_is_less_robust():
    cell = retrieval_on_both({a: {0: 0.85, 0.1: 0.3, 0.3: 0.1} for a in HAG},
                             {a: {0: 0.85, 0.1: 0.5, 0.3: 0.1} for a in HAG})
    assert cell.robustness == LESS and cell.difference.hi < -SETTINGS.delta, cell.line


def test_retrieval_with_the_same_query_aps_as_bp_is_equivalent():
    cell = retrieval_on_both({a: BP_HASH[a] for a in (("hag", "rule"), ("hag", "exact"))})
    assert (cell.robustness, cell.gradient) == (EQUIVALENT, WITHIN), cell.line


def test_retrieval_on_few_queries_is_inconclusive_and_says_how_many_queries_would_decide():
    cell = retrieval_on_both({("hag", "rule"): {0: 0.85, 0.1: 0.2}, ("hag", "exact"): {0: 0.85, 0.1: 0.2}}, n=6)
    assert cell.robustness == INCONCLUSIVE and cell.needed and cell.needed > 6, cell.line
    assert f"about {cell.needed} queries would decide it" in cell.line


def test_a_retrieval_attack_that_raises_a_querys_ap_above_clean_is_flagged_as_failed():
    cell = retrieval_on_both({("hag", "rule"): {0: 0.85, 0.03: 0.85, 0.1: 0.7}, ("hag", "exact"): {0: 0.85, 0.1: 0.15}},
                             raw={("hag", "rule", 0.03): 0.95})
    flag = next(c for c in cell.checks if c.name == "attack raised AP above clean")
    assert flag.passed, flag.detail
    assert flag.detail == "hag/rule raised 100 APs of 100 queries above clean (at eps 0.03): a failed attack"
    assert "Signs of obfuscation: " in cell.line and "attack raised AP above clean" in cell.line


@pytest.mark.parametrize("broken,rule_attacks,bp_attacks,raw", [
    ("attacks break bp", {a: {0: 0.85, 0.1: 0.6} for a in HAG}, {a: {0: 0.85, 0.1: 0.5} for a in HAG}, None),
    ("exact gradient not weaker", {("hag", "rule"): {0: 0.85, 0.1: 0.2}, ("hag", "exact"): {0: 0.85, 0.1: 0.6}},
     {a: BP_HASH[a] for a in HAG}, None),
    ("accuracy falls with eps", {("hag", "rule"): {0: 0.85, 0.05: 0.2, 0.1: 0.2},
                                 ("hag", "exact"): {0: 0.85, 0.1: 0.2}},
     {a: BP_HASH[a] for a in HAG}, {("hag", "rule", 0.1): 0.6}),
    ("bp gradients agree", {a: {0: 0.85, 0.1: 0.3} for a in HAG},
     {("hag", "rule"): {0: 0.85, 0.1: 0.14}, ("hag", "exact"): {0: 0.85, 0.1: 0.2}}, None),
])
def test_a_failed_sanity_check_makes_a_retrieval_cell_invalid(broken, rule_attacks, bp_attacks, raw):
    cell = retrieval_verdict(rule_attacks, bp_attacks, raw=raw)
    assert cell.robustness == INVALID and f"{broken} failed" in cell.line, cell.line
    assert [c.name for c in cell.checks[:5] if c.passed is False] == [broken]


def test_the_report_decides_classification_and_retrieval_cells_side_by_side():
    from harness.analysis.verdicts import verdict_report

    obfuscated = {("pgd", "rule"): {0: 1.0, 0.1: 0.55}, ("pgd", "exact"): {0: 1.0, 0.1: 0.0}}
    classification = pl.concat([table("frsf", obfuscated), table("bp", BP)])
    retrieval = pl.concat([ap_table("frsf", {("hag", "rule"): {0: 0.85, 0.1: 0.7},
                                             ("hag", "exact"): {0: 0.85, 0.1: 0.15}}),
                           ap_table("bp", {a: BP_HASH[a] for a in HAG})])
    axes = ("dataset", "backbone", "task", "rule", "seed")
    runs = pl.DataFrame({"stage": ["evaluate"], **{a: [None] for a in axes}},
                        schema_overrides=dict.fromkeys(axes, pl.String))
    lines, rows, checks = verdict_report(runs, [classification, retrieval], SETTINGS)
    by_task = {r["task"]: r for r in rows.filter(pl.col("rule") == "frsf").iter_rows(named=True)}
    assert [(r["robustness"], r["gradient"]) for r in by_task.values()] == [(EQUIVALENT, OVERSTATES)] * 2
    assert by_task["hashing"]["gradient_overstatement_lo"] > SETTINGS.delta
    assert {r["primary"] for r in rows.iter_rows(named=True)} == {0.1}
    assert set(rows["primary_chosen_by"]) == {"verdicts.primary"}
    assert by_task["hashing"]["n"] == 100 and by_task["hashing"]["worst"] == pytest.approx(aps(0.15, 100, 1.0).mean())
    assert by_task["classification"]["worst"] == 0.0 and by_task["classification"]["n"] == 200
    assert [line.split(")")[0] for line in lines] == ["**frsf** (d/b/classification, seed 0, eps 0.1",
                                                      "**frsf** (d/b/hashing, seed 0, eps 0.1"]
    assert len(checks) == 2 * 12  # every check of both cells, with its numbers


def test_settings_logged_before_retrieval_verdicts_read_as_they_were_meant():
    old = VerdictSettings.from_logged({"primary": {"classification": 0.05}, "delta": 0.05, "bp_broken_below": 0.2,
                                       "retrieval": 0.03, "blackbox_weak_above": 0.2})
    assert old.primary == {"classification": 0.05, "hashing": 0.03}
    assert old.bp_broken_below == {"classification": 0.2, "hashing": 0.25}
    assert VerdictSettings.from_logged(VerdictSettings().model_dump()) == VerdictSettings()


def test_holm_over_cells_turns_a_lone_significance_into_inconclusive_one_family_per_answer():
    def cell(p: float, q: float = 0.5) -> Cell:
        c = Cell({**CELL, "rule": "frsf"}, Estimate(10, 10), Estimate(5, 10), "pgd/exact 5", Estimate(9, 10),
                 Estimate(0, 10), [Check("x", True, "")] * 4, eps=0.1)
        c.difference = stats.Reading(0.5, 0.1, 0.9, 10, MORE, p)
        c.overstatement = stats.Reading(0.4, 0.1, 0.7, 10, OVERSTATES, q)
        return c

    alone = decide([cell(0.03)], SETTINGS)
    assert alone[0].robustness == MORE
    together = decide([cell(0.03, 0.001), cell(0.04, 0.02)], SETTINGS)  # Holm: 0.03 * 2 = 0.06, 0.04 * 1 -> 0.06
    assert [c.robustness for c in together] == [INCONCLUSIVE, INCONCLUSIVE]
    assert [c.gradient for c in together] == [OVERSTATES, OVERSTATES]  # its own family: 0.002, 0.02
    assert [c.adjusted["gradient"] for c in together] == pytest.approx([0.002, 0.02])


def test_statistics_against_known_values():
    assert stats.wilson(100, 200) == pytest.approx((0.4314, 0.5686), abs=1e-4)
    assert stats.wilson(0, 200)[0] == 0.0 and stats.wilson(0, 200)[1] == pytest.approx(0.0188, abs=1e-4)
    a, b = np.array([1] * 30 + [0] * 70, bool), np.array([1] * 20 + [0] * 80, bool)
    assert stats.mcnemar_greater(a, b) == pytest.approx(0.5 ** 10)  # 10 discordant pairs, all one way
    assert stats.mcnemar_greater(b, a) == 1.0
    assert stats.greater_by(a, b, 0.02) < 0.05 and stats.greater_by(a, b, 0.2) > 0.5
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # AP values (floats): paired t-tests, and the sign test where the differences have no spread
    x, y = aps(0.6, 50), aps(0.5, 50)
    assert stats.paired_greater(x, y) == stats.greater_by(x, y, 0.0) < 1e-6  # a constant 0.1 above: sign test
    assert stats.paired_greater(y, x) == 1.0 and stats.greater_by(x, y, 0.15) == 1.0
    z = x + np.where(np.arange(50) % 2 == 0, 0.05, -0.04)
    assert stats.paired_greater(z, x) == pytest.approx(
        float(__import__("scipy").stats.ttest_rel(z, x, alternative="greater").pvalue))
    lo, hi = stats.bootstrap_mean(np.linspace(0, 1, 101))
    assert lo < 0.5 < hi and hi - lo < 0.2


REAL_DAG = """
experiment: real-verdict
seeds: [0]
device: cpu
datasets:
  fashion-mnist: {{root: {root}, source_classes: [0, 1, 2, 3, 4], target_classes: [5, 6, 7, 8, 9], pad: 2,
                  train_limit: 2000, test_limit: 300}}
tasks: {{classification: {{}}}}
rules: [bp, frsf]
pretrain: {{epochs: 1, batch_size: 64}}
finetune: {{epochs: 1, batch_size: 64, lr_backbone: 7.4e-05, lr_head: 0.00043, weight_decay: 5.0e-05}}
evaluate: {{diagnostic_images: 100}}
attacks:
  - {{name: pgd, sources: [rule, exact], eps: [0, 0.1, 0.3], n: 100, batch_size: 100, params: {{steps: 5}}}}
converge: {{params: {{loss: dlr, steps: 10, restarts: 1}}, batch_size: 100}}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_on_real_fashion_mnist_frsf_is_gradient_obfuscation_and_bp_agrees_with_itself(tmp_path, fmnist_source):
    from smokerun import harness

    from workloads.datasets import prepare

    prepare("fashion-mnist", tmp_path / "fm", src=fmnist_source)
    dag = tmp_path / "dag.yaml"
    dag.write_text(REAL_DAG.format(root=tmp_path / "fm"))
    done = harness("run", str(dag), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pl.read_csv(tmp_path / "results" / "diagnostics.csv")
    bp_cos = table.filter(pl.col("rule") == "bp")["cos(rule grad, exact grad)"][0]
    assert bp_cos >= 0.9999
    verdicts = pl.read_csv(tmp_path / "results" / "verdicts.csv")
    frsf = verdicts.filter(pl.col("rule") == "frsf").row(0, named=True)
    assert frsf["gradient"] == OVERSTATES, (tmp_path / "results" / "README.md").read_text()
    assert frsf["robustness"] in (MORE, EQUIVALENT, LESS, INCONCLUSIVE)  # every sanity check passed
    assert frsf["bp gradients agree"] == "pass" and frsf["attacks break bp"] == "pass"
    assert frsf["equal evidence"] == "pass"
    assert frsf["rule gradient above exact"] == "yes"
    assert frsf["attack converged"] == "pass"  # the re-run ran on the survivors, and moved nothing beyond noise
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "overstates" in readme and "rule gradient above exact" in readme


def test_a_cells_line_and_every_checks_numbers_read_exactly_so():
    """The report's words are its product: every number a check decided on, as a reader sees it."""
    rule = {("pgd", "rule"): {0: 1.0, 0.05: 0.7, 0.1: 0.55}, ("pgd", "exact"): {0: 1.0, 0.05: 0.1, 0.1: 0.0},
            ("pgd", "transfer"): {0: 1.0, 0.1: 0.02}, ("fgsm", "rule"): {0: 1.0, 0.1: 0.6},
            ("hsja", None): {0: 1.0, 0.1: 0.4}}
    bp = table("bp", {a: {0: 1.0, 0.1: 0.0} for a in rule})
    outcomes = pl.concat([table("frsf", rule, clean=0.9), rerun("frsf", 0.0, 0.0), bp])
    cell = decide([assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE,
                          cosine=1.0, reran=True)], SETTINGS)[0]
    assert cell.line == (
        "**frsf** (d/b/classification, seed 0, eps 0.1): **equivalent to bp**. Worst case 0.0% [0.0%, 1.9%] (n=200), "
        "most breaks by pgd/exact 180, pgd/transfer 176, hsja/none 100; bp 0.0% [0.0%, 1.9%] (n=200) on the same "
        "attacks and images; difference +0.0 points (90% interval -1.8 to +1.8), margin 5.0 (Holm-adjusted "
        "p=7.01e-05). Its own gradient says 55.0%, above the worst case by 55.0 points (90% interval 48.9 to 61.0): "
        "overstates (Holm-adjusted p<=1e-16). Signs of obfuscation: rule gradient above exact, transfer or black-box "
        "stronger.")
    assert [(c.name, c.passed, c.purpose, c.detail) for c in cell.checks] == [
        ("bp gradients agree", True, "sanity", "0 of 200 outcomes differ between bp's rule and exact attacks; "
                                               "cosine 1.000000"),
        ("exact gradient not weaker", True, "sanity",
         "pgd: exact 0.0% vs rule 55.0% (p=1 that exact is weaker by more than 0.05)"),
        ("accuracy falls with eps", True, "sanity", "no budget's own run is more accurate than a smaller one's"),
        ("attacks break bp", True, "sanity", "bp's worst case at eps 0.1: 0.0% [0.0%, 1.9%] (n=200) by fgsm/rule "
                                             "200, hsja/none 200, pgd/exact 200 (limit 10.0%)"),
        ("equal evidence", True, "sanity",
         "5 attacks on the same images on both models, and the convergence re-run on both"),
        ("attack converged", True, "convergence", "the other attacks broke every image: nothing to re-run"),
        ("bp attack converged", True, "convergence", "the other attacks broke every image: nothing to re-run"),
        ("rule gradient above exact", True, "sign", "pgd: rule 55.0% vs exact 0.0% (p=7.7e-34)"),
        ("transfer or black-box stronger", True, "sign",  # the smaller of two p-values, times two (Bonferroni)
         "pgd/transfer 2.0% vs every rule-gradient attack 55.0% (p=2.47e-32)"),
        ("single step stronger than iterative", False, "sign", "fgsm 60.0% vs pgd 55.0%, rule gradient (p=1)"),
        ("attack raised AP above clean", None, "sign", "classification outcomes have no AP"),
        ("decision attack stopped early", None, "sign", "no decision attack ran on both this model and bp")]
    assert (cell.clean.k, cell.clean.n, cell.own.k, cell.bp_worst.k) == (180, 200, 110, 0)


def test_a_retrieval_cells_line_and_checks_read_in_map():
    cell = retrieval_on_both({("hag", "rule"): {0: 0.85, 0.1: 0.7}, ("hag", "exact"): {0: 0.85, 0.1: 0.15},
                              ("hag", "transfer"): {0: 0.85, 0.1: 0.35}})
    assert cell.line == (
        "**frsf** (d/b/hashing, seed 0, eps 0.1): **equivalent to bp**. Worst case mAP 0.150 [0.139, 0.161] (n=100 "
        "queries), lowest mAP by hag/exact 0.150, hag/transfer 0.350, hag/rule 0.700; bp mAP 0.140 [0.129, 0.151] "
        "(n=100 queries) on the same attacks and queries; difference +0.010 (90% interval +0.001 to +0.019), margin "
        "0.050 (Holm-adjusted p<=0.00025). Its own gradient says 0.700, above the worst case by 0.550 (90% interval "
        "0.504 to 0.563): overstates (Holm-adjusted p<=1e-16). Signs of obfuscation: rule gradient above exact, "
        "transfer or black-box stronger.")
    assert [(c.name, c.passed, c.detail) for c in cell.checks] == [
        ("bp gradients agree", True, "0 of 100 outcomes differ between bp's rule and exact attacks"),
        ("exact gradient not weaker", True, "hag: exact 0.150 vs rule 0.700 (p=1 that exact is weaker by more than "
                                            "0.05)"),
        ("accuracy falls with eps", True, "no budget's own run is more accurate than a smaller one's"),
        ("attacks break bp", True, "bp's worst case at eps 0.1: mAP 0.140 [0.129, 0.151] (n=100 queries) by "
                                   "hag/exact 0.140, hag/rule 0.140, hag/transfer 0.140 (limit 0.250)"),
        ("equal evidence", True, "3 attacks on the same images on both models"),
        ("attack converged", None, "retrieval attacks have no convergence re-run"),
        ("bp attack converged", None, "retrieval attacks have no convergence re-run"),
        ("rule gradient above exact", True, "hag: rule 0.700 vs exact 0.150 (p=7.89e-31)"),
        ("transfer or black-box stronger", True, "hag/transfer 0.350 vs every rule-gradient attack 0.700 "
                                                 "(p=7.89e-31)"),
        ("single step stronger than iterative", None, "no single-step and iterative rule attacks"),
        ("attack raised AP above clean", False, "no attack raised a query's AP above its clean AP"),
        ("decision attack stopped early", None, "no decision attack ran on both this model and bp")]


def test_an_answer_about_the_rule_needs_three_seeds_and_reads_seeds_and_images_together():
    from harness.analysis.verdicts import rule_lines

    def seed(s: int, own: float, exact: float, bp: float = 0.0) -> Cell:
        attacks = {("pgd", "rule"): {0: 1.0, 0.1: own, 0.3: 0.0}, ("pgd", "exact"): {0: 1.0, 0.1: exact, 0.3: 0.0}}
        bp_attacks = {a: {0: 1.0, 0.1: bp, 0.3: 0.0} for a in attacks}
        outcomes = pl.concat([table("frsf", attacks), table("bp", bp_attacks)]).with_columns(pl.lit(s).alias("seed"))
        model = {**CELL, "seed": s}
        return assess(outcomes, {**model, "rule": "frsf"}, {**model, "rule": "bp"}, SETTINGS, FAMILIES, SINGLE)

    agree = decide([seed(0, 0.5, 0.0), seed(1, 0.6, 0.0), seed(2, 0.7, 0.0)], SETTINGS)
    assert rule_lines(agree, SETTINGS) == [
        "**frsf** (d/b/classification, the rule over 3 seeds): **equivalent to bp**; difference from bp +0.0 points "
        "(90% interval -0.6 to +0.6) over seeds and images (Holm-adjusted p=8.61e-14 over the rule lines); its own "
        "gradient overstates its worst case by 60.0 points (90% interval 43.1 to 76.9): overstates; per seed: "
        "equivalent to bp x3."]  # every seed at 0%: the interval is the pooled images', not a t-interval's [0, 0]
    assert rule_lines(agree[:2], SETTINGS) == []  # two seeds say something about these models only
    below = decide([seed(0, 0.4, 0.2, 0.35), seed(1, 0.4, 0.15, 0.35), seed(2, 0.4, 0.25, 0.35)], SETTINGS)
    line = rule_lines(below, SETTINGS)[0]
    assert line.startswith("**frsf** (d/b/classification, the rule over 3 seeds): **less robust than bp**; "
                           "difference from bp -15.0 points (90% interval "), line
    assert line.endswith("per seed: inconclusive x1, less robust than bp x2."), line  # the seeds together decide
    gated = decide([seed(0, 0.4, 0.2, 0.35), seed(1, 0.4, 0.15, 0.35), seed(2, 0.4, 0.8, 0.35)], SETTINGS)
    assert rule_lines(gated, SETTINGS)[0].endswith(  # a seed whose exact gradient is weaker: an invalid evaluation
        "the rule over 3 seeds): **invalid**; per seed: invalid x1, less robust than bp x2.")


def test_checks_that_have_nothing_to_decide_say_so_and_name_the_baseline():
    from harness.analysis.checks import (
        SANITY,
        check_accuracy_falls_with_eps,
        check_bp_broken,
        check_bp_gradients_agree,
    )

    empty = table("bp", {("pgd", "rule"): {0.1: 0.0}}).clear()
    one_budget = table("bp", {("pgd", "rule"): {0.1: 0.0}})
    assert [(c.name, c.passed, c.detail, c.purpose) for c in (
        check_accuracy_falls_with_eps(one_budget), check_bp_broken(empty, 0.1), check_bp_broken(one_budget, None),
        check_bp_gradients_agree(one_budget, None))] == [
        ("accuracy falls with eps", None, "no attack ran at two budgets", SANITY),
        ("attacks break bp", None, "no attack ran on bp", SANITY),
        ("attacks break bp", None, "no limit for this task in `verdicts.bp_broken_below`", SANITY),
        ("bp gradients agree", None, "no attack ran on bp with both the rule and the exact gradient", SANITY)]
    # a baseline with a backward of its own has two gradients by design: their agreement is not checked
    own = check_bp_gradients_agree(at_budget(table("usf", BP), 0.1), 0.3, "usf")
    assert (own.name, own.passed) == ("usf gradients agree", None) and "its own feedback" in own.detail
    exact = check_bp_gradients_agree(at_budget(table("bp", BP), 0.1), None)
    assert exact.passed is True and exact.detail == "0 of 200 outcomes differ between bp's rule and exact attacks"


def test_another_baseline_is_named_in_the_verdict_and_a_grid_without_it_says_why_it_has_none():
    from harness.analysis.verdicts import verdict_report

    outcomes = pl.concat([table("frsf", {("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.5}}),
                          table("usf", BP)])
    cell = decide([assess(outcomes, {**CELL, "rule": "frsf"}, {**CELL, "rule": "usf"}, SETTINGS, FAMILIES, SINGLE)],
                  SETTINGS)[0]
    assert cell.robustness == MORE and cell.label == "more robust than usf", cell.line
    assert "; usf 0.0% [0.0%, 1.9%] (n=200) on the same attacks" in cell.line
    assert [c.name for c in cell.checks][:5] == ["usf gradients agree", "exact gradient not weaker",
                                                 "accuracy falls with eps", "attacks break usf", "equal evidence"]
    axes = ("dataset", "backbone", "task", "rule", "seed")
    runs = pl.DataFrame({"stage": ["evaluate"], **{a: [None] for a in axes}},
                        schema_overrides=dict.fromkeys(axes, pl.String))
    lines, rows, _ = verdict_report(runs, [outcomes], SETTINGS, baseline="usf")
    assert rows.filter(pl.col("rule") == "frsf")["robustness"].to_list() == ["more robust than usf"]
    assert "usf_worst" in rows.columns
    lines, rows, _ = verdict_report(runs, [outcomes], SETTINGS)  # the DAG's baseline, bp, trained no model here
    assert rows.is_empty() and lines == ["No verdicts: the baseline rule bp has no attacked model here to compare "
                                         "with; add it to the DAG's rules (or set `baseline` to one of them)."]


def test_the_robustness_curve_reads_every_model_at_every_budget_on_the_same_images(tmp_path):
    from harness.analysis.curves import curve_figure, worst_case_curve

    frsf = table("frsf", {("pgd", "exact"): {0: 1.0, 0.05: 0.6, 0.1: 0.3}, ("hsja", None): {0: 1.0, 0.1: 0.2}})
    bp = pl.concat([table("bp", {("pgd", "exact"): {0: 1.0, 0.05: 0.4, 0.1: 0.0}}),
                    table("bp", {("hsja", None): {0: 1.0, 0.1: 0.0}}, n=250).filter(pl.col("image") >= 200)])
    curve = worst_case_curve(pl.concat([frsf, bp]))
    assert curve.select("rule", "eps", "worst", "n").rows() == [
        ("bp", 0.0, 1.0, 200), ("bp", 0.05, 0.4, 200), ("bp", 0.1, 0.0, 200),  # bp first, images 200+ left out
        ("frsf", 0.0, 1.0, 200), ("frsf", 0.05, 0.6, 200), ("frsf", 0.1, 0.2, 200)]  # hsja counts at 0.1 only
    assert curve.filter(pl.col("eps") == 0.1)["worst_hi"].to_list() == pytest.approx(
        [stats.wilson(0, 200)[1], stats.wilson(40, 200)[1]])
    assert curve_figure(curve, tmp_path / "curve.png").is_file()
    assert worst_case_curve(pl.DataFrame()).is_empty()


def test_the_verdict_table_row_holds_both_answers_and_how_the_budget_was_chosen():
    from harness.analysis.verdicts import _row

    cell = on_both({("pgd", "rule"): {0: 1.0, 0.1: 0.6}, ("pgd", "exact"): {0: 1.0, 0.1: 0.5}}, BP)
    row = _row(cell)
    d, o = cell.difference, cell.overstatement
    assert row == {
        **CELL, "rule": "frsf", "primary": 0.1, "primary_chosen_by": "verdicts.primary", "robustness": MORE,
        "difference": 0.5, "difference_lo": d.lo, "difference_hi": d.hi, "robustness_p": cell.adjusted["robustness"],
        "gradient": OVERSTATES, "gradient_overstatement": 0.1, "gradient_overstatement_lo": o.lo,
        "gradient_overstatement_hi": o.hi, "gradient_overstatement_p": cell.adjusted["gradient"],
        "clean": 1.0, "clean_lo": stats.wilson(200, 200)[0], "clean_hi": 1.0, "worst": 0.5,
        "worst_lo": stats.wilson(100, 200)[0], "worst_hi": stats.wilson(100, 200)[1], "n": 200,
        "broken_by": "pgd/exact 100, pgd/rule 80", "own_gradient": 0.6, "bp_worst": 0.0,
        "bp gradients agree": "pass", "exact gradient not weaker": "pass", "accuracy falls with eps": "pass",
        "attacks break bp": "pass", "equal evidence": "pass", "attack converged": "n/a", "bp attack converged": "n/a",
        "rule gradient above exact": "yes", "transfer or black-box stronger": "n/a",
        "single step stronger than iterative": "n/a", "attack raised AP above clean": "n/a",
        "decision attack stopped early": "n/a"}
    assert 0.39 < d.lo < 0.5 < d.hi < 0.6 and 0 < cell.adjusted["robustness"] < 1e-6
    failed = verdict_of({("pgd", "rule"): {0: 1.0, 0.1: 0.1}, ("pgd", "exact"): {0: 1.0, 0.1: 0.6}}, BP)
    assert _row(failed)["exact gradient not weaker"] == "FAIL" and _row(failed)["robustness"] == INVALID


def test_the_primary_budget_of_each_panel_comes_from_its_primary_node_unless_the_dag_fixes_it():
    from harness.analysis.verdicts import primary_budgets
    from harness.stages.primary import CALIBRATED

    axes = ("dataset", "backbone", "task", "rule", "seed")
    runs = pl.DataFrame({"stage": ["primary", "primary", "evaluate", "primary"],
                         "dataset": ["d"] * 4, "backbone": ["b"] * 4,
                         "task": ["classification", "classification", "hashing", "hashing"],
                         "rule": ["bp"] * 4, "seed": ["0", "1", "0", "0"],
                         "metrics.primary_eps": [0.02, 0.05, 0.3, None]},
                        schema_overrides=dict.fromkeys(axes, pl.String))
    chosen = primary_budgets(runs, VerdictSettings())
    assert chosen == {("d", "b", "classification", "0"): (0.02, CALIBRATED),
                      ("d", "b", "classification", "1"): (0.05, CALIBRATED)}  # the evaluate run's metric is not one
    fixed = primary_budgets(runs, VerdictSettings(primary={"hashing": 0.1}))
    assert fixed[("d", "b", "hashing", "0")] == (0.1, "verdicts.primary") and len(fixed) == 3
    assert primary_budgets(runs.drop("metrics.primary_eps"), VerdictSettings()) == {}  # a run from before budgets


def test_a_decision_attack_that_stops_early_on_the_model_and_not_on_bp_is_flagged():
    from harness.analysis.checks import sign_stopped_early

    def spent(rule: str, own: dict[str, float]) -> pl.DataFrame:
        return pl.concat([table(rule, {(a, "none"): {0: 1.0, 0.1: 0.5}}).with_columns(
            pl.lit(q, dtype=pl.Float64).alias("own_queries")) for a, q in own.items()])

    bp = spent("bp", {"boundary": 1000.0, "hsja": 900.0})
    early = sign_stopped_early(spent("frsf", {"boundary": 300.0, "hsja": 880.0}), bp)
    assert early.passed is True and early.purpose == "sign"
    assert early.detail.startswith("boundary spent 300 queries per image it attacked, bp 1000: stopped early")
    assert "hsja" not in early.detail
    level = sign_stopped_early(spent("frsf", {"boundary": 950.0, "hsja": 880.0}), bp)
    assert level.passed is False and "hsja spent 880" in level.detail
    cell = verdict_of({("pgd", "exact"): {0: 1.0, 0.1: 0.3}}, {("pgd", "exact"): {0: 1.0, 0.1: 0.3}})
    assert next(c for c in cell.checks if c.name == "decision attack stopped early").passed is None



def test_an_interval_in_no_region_at_any_confidence_says_so_instead_of_a_p_value():
    # 2 discordant images of 40, both for the model: +5 points, an interval across 0 and beyond +-5 at every alpha
    cell = on_both({("pgd", "exact"): {0: 1.0, 0.1: 0.1}}, {("pgd", "exact"): {0: 1.0, 0.1: 0.05}}, n=40)
    assert cell.robustness == INCONCLUSIVE and cell.difference.region is None and "robustness" not in cell.adjusted
    assert "margin 5.0; at no confidence level does the interval lie in one region" in cell.line
    assert "Holm-adjusted p" not in cell.line.split("Its own gradient")[0]
