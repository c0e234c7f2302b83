"""`attack(...)`: robustness of a fine-tuned model to one attack, per eps, for one gradient source.

Rows, one per eps point (an L-inf budget, or for an L2 attack such as Boundary an L2 one):
- classification: robust_acc, clean_acc, success_rate (fooled among the clean-correct), linf / l2 (mean size of
  the perturbation), queries (forward passes per image the attack spent);
- hashing: map, clean_map, success_rate (share of queries whose AP fell below half its clean AP), hamming (mean
  share of code bits flipped), linf, l2, queries.
Minimal attacks (decision attacks, fmn) run once; at each eps an image counts as fooled when the attack found an
adversarial, which the target misclassifies, with L-inf <= eps; their linf / l2 are the means over the images fooled
at that eps, and every row also carries the median minimal L2 / L-inf over the images where one was found; a decision
attack's rows carry its start search's queries per image apart from its own queries per image it attacked.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterable

import polars as pl
import torch

from workloads.attacks.base import AttackContext, AttackSpec, require_sibling
from workloads.attacks.registry import get_attack
from workloads.names import Metric as M
from workloads.settings import Section


def check_attack(attack: str, task_kind: str | None, source: str | None, eps_grid: list[float],
             params: dict | None = None) -> tuple[AttackSpec, Section]:
    """Every config error an attack can have, raised before anything is computed (`AttackSpec.check`); the spec and
    its parameters."""
    spec = get_attack(attack)
    return spec, spec.check(task_kind, source, eps_grid, params)[1]


class QueryCounter(torch.nn.Module):
    """Counts the images the attack pushes through the model (its queries)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0
        # torchattacks restores the mode it found on the module it was given: mirror the model's (eval) mode, or
        # a fresh wrapper's default train mode would leave BatchNorm updating its statistics after the attack
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def attack(target, attack_name: str, source: str | None, eps_grid: list[float], batches: Iterable,
           sibling=None, params: dict | None = None, seed: int = 0, database: Iterable | None = None,
           on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """The rows of `run_attack` (one per eps) after the one check of the attack's use (`AttackSpec.check`)."""
    spec = get_attack(attack_name)
    eps_grid, params = spec.check(target.task.kind, source, eps_grid, params)
    return run_attack(target, spec, source, eps_grid, params, batches, sibling, seed, database, on_row)[0]


def run_attack(target, spec: AttackSpec, source: str | None, eps_grid: list[float], params: Section,
               batches: Iterable, sibling=None, seed: int = 0, database: Iterable | None = None,
               on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], pl.DataFrame]:
    """Attack `target` (a `workloads.checkpoint.Loaded`) at every eps of the grid, with arguments that passed
    `AttackSpec.check` (`attack` checks them; a DAG's attack nodes were checked when the DAG was read): one row per
    eps, and the per-image outcome table: `image`, `eps`, `clean` (correct clean) and `robust` (correct clean and not
    broken at this or a smaller eps; `robust_raw`: by this eps's own run), or for hashing `clean_ap`, `ap` and
    `ap_raw`; the perturbation's `linf` and `l2`; `invalid` (a break the re-check refused).

    `sibling` (the twin fine-tuned with the baseline rule) is needed for source 'transfer'; `database` (batches of
    the retrieval database split) for hashing models. Crafting at eps = 0 is skipped: the images are the clean ones.
    Budgets run in increasing order and are nested: an image broken at eps counts as broken at every larger eps. A
    break counts only if the adversarial image passes the re-check (within eps of the clean one, inside [0, 1],
    scored by the target in eval mode); the others are counted in `invalid`. `on_row` sees each row as soon as it
    is measured.
    """
    require_sibling(source, sibling)
    task = target.task
    if task.kind == "hashing" and database is None:
        raise ValueError("attacking a hashing model needs the retrieval database (batches of its database split)")
    for loaded in (target, sibling):
        if loaded is not None:
            loaded.model.eval()  # attacks evaluate: BatchNorm statistics must not move
    crafting = QueryCounter(sibling.model if source == "transfer" else target.model)
    use_exact = source == "exact" and target.handle is not None
    exact = target.handle.exact if use_exact else contextlib.nullcontext
    device = _device(target.model)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    ctx = AttackContext(task=task, seed=seed)
    scorer = _HashScorer(target, crafting.model, database, ctx) if task.kind == "hashing" else _ClassScorer(target)
    clean = [scorer.clean(x, y) for x, y in batches]
    if spec.minimal:
        return _minimal_rows(spec, source, crafting, params, ctx, batches, (clean, scorer, exact), eps_grid, on_row)
    rows: dict[int, dict] = {}
    tables, nested = [], None
    for i in sorted(range(len(eps_grid)), key=lambda j: eps_grid[j]):
        eps = eps_grid[i]
        torch.manual_seed(seed)  # random starts are reproducible
        crafting.images = 0
        craft = spec.build(crafting, eps, params, ctx) if eps > 0 else None
        per_image = []
        for (x, y), before in zip(batches, clean, strict=True):
            if craft is None:
                x_adv = x
            else:
                with exact():
                    x_adv = craft(x, y).detach()
            delta = (x_adv - x).flatten(1)
            linf = delta.abs().amax(1)
            # the re-check: float32 projection can land a hair outside the ball, hence the tolerance
            valid = (linf <= eps * (1 + 1e-5) + 1e-6) & _inside(x_adv)
            per_image.append({**scorer.outcome(y, x_adv, before), M.LINF: linf, M.L2: delta.norm(dim=1),
                              "valid": valid})
        out = {k: torch.cat([o[k].cpu() for o in per_image]) for k in per_image[0]}
        out, invalid = scorer.settle(out, nested)
        nested, n = out, len(out[M.LINF])
        rows[i] = {"attack": spec.name, "source": source, "eps": eps, "norm": "linf", **scorer.row(out),
                   M.LINF: float(out[M.LINF].sum()) / n, M.L2: float(out[M.L2].sum()) / n,
                   M.QUERIES: crafting.images / n, M.N: n, "invalid": int(invalid.sum())}
        tables.append(_table(eps, "linf", scorer.columns(out), out, invalid))
        if on_row is not None:
            on_row(rows[i])
    return [rows[i] for i in range(len(eps_grid))], pl.concat(tables).sort("eps", "image")


def _inside(x_adv: torch.Tensor) -> torch.Tensor:
    flat = x_adv.flatten(1)
    return (flat.amin(1) >= 0) & (flat.amax(1) <= 1)


def _table(eps: float, norm: str, outcome: dict[str, torch.Tensor], sizes: dict,
           invalid: torch.Tensor) -> pl.DataFrame:
    """One eps of the per-image outcome table; `image` is the position in the attacked sample (the first n test
    images of the target split, in shard order: the same images for every model of a dataset)."""
    n = len(invalid)
    return pl.DataFrame({"image": pl.Series(range(n), dtype=pl.Int32), "eps": [float(eps)] * n, "norm": [norm] * n,
                         **{k: v.numpy() for k, v in outcome.items()},
                         M.LINF: sizes[M.LINF].float().numpy(), M.L2: sizes[M.L2].float().numpy(),
                         "invalid": invalid.numpy()})


def _minimal_rows(spec, source, crafting, params, ctx, batches, scoring, eps_grid, on_row) -> tuple[
        list[dict], pl.DataFrame]:
    clean, scorer, exact = scoring
    craft = spec.build(crafting, None, params, ctx)
    torch.manual_seed(ctx.seed)
    crafting.images = 0
    linf, l2, found, ok, outside = [], [], [], [], []
    for (x, y), before in zip(batches, clean, strict=True):
        with exact():
            x_adv, hit = craft(x, y)
        x_adv = x_adv.detach()
        # the re-check: inside [0, 1], and misclassified by the target itself (a transfer attack crafts elsewhere)
        hit = hit & ~scorer.outcome(y, x_adv, before)["correct"]
        delta = (x_adv - x).flatten(1)
        inside = _inside(x_adv)
        linf.append(delta.abs().amax(1))
        l2.append(delta.norm(dim=1))
        found.append(hit & before & inside)
        outside.append(hit & before & ~inside)
        ok.append(before)
    linf, l2, found, ok, outside = (torch.cat([v.cpu() for v in t]) for t in (linf, l2, found, ok, outside))
    n = len(ok)
    medians = {M.MEDIAN_LINF: statistics.median(linf[found].tolist()) if found.any() else float("nan"),
               M.MEDIAN_L2: statistics.median(l2[found].tolist()) if found.any() else float("nan"),
               M.FOUND: float(found.sum()) / max(int(ok.sum()), 1)}
    spent = getattr(craft, "spent", None)  # a decision attack's start search, apart from its own queries
    if spent is not None:
        medians.update({M.START_QUERIES: spent["start"] / n,
                        M.OWN_QUERIES: spent["own"] / spent["attacked"] if spent["attacked"] else float("nan")})
    rows, tables = [], []
    nan = torch.full_like(linf, float("nan"))
    sizes = {M.LINF: torch.where(found, linf, nan), M.L2: torch.where(found, l2, nan)}  # the minimal sizes found
    norm = spec.norm_of(params)
    size = l2 if norm == "l2" else linf
    for eps in eps_grid:
        fooled = found & (size <= eps)  # nested by construction: a minimal perturbation fits every larger eps
        k = int(fooled.sum())
        rows.append({"attack": spec.name, "source": source, "eps": eps, "norm": norm,
                     M.ROBUST_ACC: float((ok & ~fooled).sum()) / n, M.CLEAN_ACC: float(ok.sum()) / n,
                     M.SUCCESS_RATE: k / max(int(ok.sum()), 1),
                     M.LINF: float(linf[fooled].sum()) / k if k else 0.0,
                     M.L2: float(l2[fooled].sum()) / k if k else 0.0,
                     M.QUERIES: crafting.images / n, M.N: n, "invalid": int(outside.sum()), **medians})
        table = _table(eps, norm, {"clean": ok, "robust": ok & ~fooled, "robust_raw": ok & ~fooled}, sizes, outside)
        if M.OWN_QUERIES in medians:
            table = table.with_columns(pl.lit(medians[M.OWN_QUERIES], dtype=pl.Float64).alias(M.OWN_QUERIES))
        tables.append(table)
        if on_row is not None:
            on_row(rows[-1])
    return rows, pl.concat(tables).sort("eps", "image")


class _ClassScorer:
    """Per image: correct when clean, correct after the attack (robust: both)."""

    def __init__(self, target) -> None:
        self.model = target.model

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x).argmax(1) == y

    def outcome(self, y: torch.Tensor, x_adv: torch.Tensor, before: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"clean": before, "correct": self.model(x_adv).argmax(1) == y}

    def settle(self, out: dict, nested: dict | None) -> tuple[dict, torch.Tensor]:
        """Breaks that failed the re-check do not count (returned as `invalid`); a break at a smaller eps holds."""
        invalid = out["clean"] & ~out["correct"] & ~out.pop("valid")
        out["raw"] = out["clean"] & (out["correct"] | invalid)  # this budget's own result, before nesting
        out["correct"] = (out["correct"] | invalid) & (nested["correct"] if nested is not None else True)
        return out, invalid

    def columns(self, out: dict) -> dict[str, torch.Tensor]:
        return {"clean": out["clean"], "robust": out["clean"] & out["correct"], "robust_raw": out["raw"]}

    def row(self, out: dict[str, torch.Tensor]) -> dict:
        n, clean = len(out["clean"]), int(out["clean"].sum())
        robust = out["clean"] & out["correct"]
        return {M.ROBUST_ACC: int(robust.sum()) / n, M.CLEAN_ACC: clean / n,
                M.SUCCESS_RATE: int((out["clean"] & ~robust).sum()) / max(clean, 1)}


class _HashScorer:
    """Per query: AP of the adversarial code against the target's clean database codes, the clean AP, bits flipped."""

    def __init__(self, target, crafting_model: torch.nn.Module, database: Iterable, ctx: AttackContext) -> None:
        self.model, self.task = target.model, target.task
        database = list(database)
        self.db_codes, self.db_labels = self.task.encode(self.model, database)
        # the attacker's own view of the database (SDHA's relevant sets): the crafting model's codes
        ctx.references = (self.db_codes, self.db_labels) if crafting_model is self.model \
            else self.task.encode(crafting_model, database)

    def ap(self, codes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from workloads.tasks.metrics import average_precision_at_k

        return average_precision_at_k(codes, self.db_codes, y.cpu(), self.db_labels, self.task.topk)

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.task.codes(self.model, x)
        return codes, self.ap(codes, y)

    def outcome(self, y: torch.Tensor, x_adv: torch.Tensor, before: tuple) -> dict[str, torch.Tensor]:
        clean_codes, clean_ap = before
        codes = self.task.codes(self.model, x_adv)
        return {"ap": self.ap(codes, y), "clean_ap": clean_ap, "flipped": (codes != clean_codes).float().mean(1)}

    def settle(self, out: dict, nested: dict | None) -> tuple[dict, torch.Tensor]:
        """A lowered AP whose image failed the re-check is the clean AP again; AP never rises with eps."""
        invalid = (out["ap"] < out["clean_ap"]) & ~out.pop("valid")
        out["ap"] = torch.where(invalid, out["clean_ap"], out["ap"])
        out["flipped"] = torch.where(invalid, 0.0, out["flipped"])
        out["ap_raw"] = out["ap"]
        if nested is not None:
            out["ap"] = torch.minimum(out["ap"], nested["ap"])
        return out, invalid

    def columns(self, out: dict) -> dict[str, torch.Tensor]:
        return {"clean_ap": out["clean_ap"], "ap": out["ap"], "ap_raw": out["ap_raw"]}

    def row(self, out: dict[str, torch.Tensor]) -> dict:
        n, ap, clean = len(out["ap"]), out["ap"], out["clean_ap"]
        return {M.MAP: float(ap.sum()) / n, M.CLEAN_MAP: float(clean.sum()) / n,
                M.SUCCESS_RATE: int(((clean > 0) & (ap < 0.5 * clean)).sum()) / n,
                M.HAMMING: float(out["flipped"].sum()) / n}


def gradient_cosine(target, batches: Iterable) -> dict:
    """Cosine between the input gradient the rule hands an attacker and the exact one, per image, on the batches.

    1.0 for bp; near 0 means a white-box attack through the rule is close to a random direction. An image whose
    gradient vanishes (a confidently classified one: its float32 cross-entropy gradient underflows to exactly 0)
    has no direction to compare: it is counted in `vanishing`, not scored. The cosine is taken in float64 without
    clamping the norms, so tiny gradients are compared as they are (a clamp would score them near 0).
    """
    if target.handle is None:
        raise ValueError("gradient_cosine needs the model with its rule attached (load_model(..., attach_rule=True))")
    cos, vanishing = [], 0
    device = _device(target.model)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        grads = []
        for ctx in (contextlib.nullcontext, target.handle.exact):
            xa = x.detach().clone().requires_grad_(True)
            with ctx():
                (g,) = torch.autograd.grad(target.task.loss(target.model(xa), y), xa)
            grads.append(g.flatten(1).double())
        norms = grads[0].norm(dim=1) * grads[1].norm(dim=1)
        defined = norms > 0
        vanishing += int((~defined).sum())
        cos.append(((grads[0] * grads[1]).sum(1)[defined] / norms[defined]).cpu())
    c = torch.cat(cos)
    n = len(c) + vanishing
    if not len(c):
        return {M.GRAD_COSINE: float("nan"), "vanishing": vanishing, "n": n}
    return {M.GRAD_COSINE: float(c.mean()), "input_grad_cosine_median": float(c.median()),
            "input_grad_cosine_min": float(c.min()), "vanishing": vanishing, "n": n}
