"""`attack(...)`: robustness of a fine-tuned model to one attack, per eps, for one gradient source.

Rows, one per eps point:
- classification: robust_acc, clean_acc, success_rate (fooled among the clean-correct), linf / l2 (mean size of
  the perturbation), queries (forward passes per image the attack spent);
- hashing: map, clean_map, success_rate (share of queries whose AP fell below half its clean AP), hamming (mean
  share of code bits flipped), linf, l2, queries.
Decision attacks (minimal perturbations) run once; at each eps an image counts as fooled when the attack found an
adversarial with L-inf <= eps; their linf / l2 are the means over the images fooled at that eps, and every row also
carries the median minimal L2 / L-inf over the images where one was found.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterable

import torch

from workloads.attacks.base import GRADIENT_SOURCES, AttackContext, AttackSpec, check_eps
from workloads.attacks.registry import get_attack
from workloads.errors import ConfigError
from workloads.names import Metric as M
from workloads.settings import Section


def validate(attack: str, task_kind: str, source: str | None, eps_grid: list[float],
             params: dict | None = None) -> tuple[AttackSpec, Section]:
    """Every config error an attack can have, raised before anything is computed; the spec and its parameters."""
    spec = get_attack(attack)
    if task_kind not in spec.tasks:
        raise ConfigError(f"attack {attack!r} does not apply to a {task_kind} model (it applies to: "
                          f"{', '.join(spec.tasks)})")
    if spec.needs_gradient_source:
        if source not in GRADIENT_SOURCES:
            raise ConfigError(f"gradient source {source!r} for {attack!r}: choose one of "
                              f"{', '.join(GRADIENT_SOURCES)}")
    elif source not in (None, "none"):
        raise ConfigError(f"{attack!r} queries outputs only; it takes no gradient source (got {source!r})")
    check_eps(eps_grid)
    return spec, spec.parse(params)


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


def _codes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Binary codes on the CPU, where retrieval is ranked."""
    with torch.no_grad():
        return torch.where(model(x.to(_device(model))) >= 0, 1.0, -1.0).cpu()


def encode(model: torch.nn.Module, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    codes, labels = [], []
    for x, y in batches:
        codes.append(_codes(model, x))
        labels.append(y.cpu())
    return torch.cat(codes), torch.cat(labels)


def attack(target, attack_name: str, source: str | None, eps_grid: list[float], batches: Iterable,
           sibling=None, params: dict | None = None, seed: int = 0, database: Iterable | None = None,
           on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Attack `target` (a `workloads.train.Loaded`) at every eps of the grid; one row per eps.

    `sibling` (the BP-fine-tuned twin) is needed for source 'transfer'; `database` (batches of the retrieval
    database split) for hashing models. Crafting at eps = 0 is skipped: the images are the clean ones.
    `on_row` sees each row as soon as it is measured (progress for long grids).
    """
    task = target.task
    spec, params = validate(attack_name, task.kind, source, eps_grid, params)
    if source == "transfer" and sibling is None:
        raise ConfigError("gradient source 'transfer' needs the BP-fine-tuned sibling model")
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
    eps_grid = check_eps(eps_grid)
    if spec.minimal:
        rows = _minimal_rows(spec, crafting, params, ctx, batches, clean, eps_grid)
        for row in rows:
            if on_row is not None:
                on_row(row)
        return rows
    rows = []
    for eps in eps_grid:
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
            per_image.append({**scorer.outcome(y, x_adv, before), M.LINF: delta.abs().amax(1), M.L2: delta.norm(dim=1)})
        out = {k: torch.cat([o[k].cpu() for o in per_image]) for k in per_image[0]}
        n = len(out[M.LINF])
        rows.append({"attack": attack_name, "source": source, "eps": eps, **scorer.row(out),
                     M.LINF: float(out[M.LINF].sum()) / n, M.L2: float(out[M.L2].sum()) / n,
                     M.QUERIES: crafting.images / n, M.N: n})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _minimal_rows(spec, crafting, params, ctx, batches, clean, eps_grid) -> list[dict]:
    craft = spec.build(crafting, None, params, ctx)
    torch.manual_seed(ctx.seed)
    crafting.images = 0
    linf, l2, found, ok = [], [], [], []
    for (x, y), before in zip(batches, clean, strict=True):
        x_adv, hit = craft(x, y)
        delta = (x_adv - x).flatten(1)
        linf.append(delta.abs().amax(1))
        l2.append(delta.norm(dim=1))
        found.append(hit & before)
        ok.append(before)
    linf, l2, found, ok = (torch.cat([v.cpu() for v in t]) for t in (linf, l2, found, ok))
    n = len(ok)
    medians = {M.MEDIAN_LINF: statistics.median(linf[found].tolist()) if found.any() else float("nan"),
               M.MEDIAN_L2: statistics.median(l2[found].tolist()) if found.any() else float("nan"),
               M.FOUND: float(found.sum()) / max(int(ok.sum()), 1)}
    rows = []
    for eps in eps_grid:
        fooled = found & (linf <= eps)
        k = int(fooled.sum())
        rows.append({"attack": spec.name, "source": None, "eps": eps,
                     M.ROBUST_ACC: float((ok & ~fooled).sum()) / n, M.CLEAN_ACC: float(ok.sum()) / n,
                     M.SUCCESS_RATE: k / max(int(ok.sum()), 1),
                     M.LINF: float(linf[fooled].sum()) / k if k else 0.0,
                     M.L2: float(l2[fooled].sum()) / k if k else 0.0,
                     M.QUERIES: crafting.images / n, M.N: n, **medians})
    return rows


class _ClassScorer:
    """Per image: correct when clean, correct after the attack."""

    def __init__(self, target) -> None:
        self.model = target.model

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x).argmax(1) == y

    def outcome(self, y: torch.Tensor, x_adv: torch.Tensor, before: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"clean": before, "correct": self.model(x_adv).argmax(1) == y}

    def row(self, out: dict[str, torch.Tensor]) -> dict:
        n, clean = len(out["clean"]), int(out["clean"].sum())
        fooled = int((out["clean"] & ~out["correct"]).sum())
        return {M.ROBUST_ACC: int(out["correct"].sum()) / n, M.CLEAN_ACC: clean / n,
                M.SUCCESS_RATE: fooled / max(clean, 1)}


class _HashScorer:
    """Per query: AP of the adversarial code against the target's clean database codes, the clean AP, bits flipped."""

    def __init__(self, target, crafting_model: torch.nn.Module, database: Iterable, ctx: AttackContext) -> None:
        self.model, self.task = target.model, target.task
        database = list(database)
        self.db_codes, self.db_labels = encode(self.model, database)
        # the attacker's own view of the database (SDHA's relevant sets): the crafting model's codes
        ctx.references = (self.db_codes, self.db_labels) if crafting_model is self.model \
            else encode(crafting_model, database)

    def ap(self, codes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from workloads.tasks.metrics import average_precision_at_k

        return average_precision_at_k(codes, self.db_codes, y.cpu(), self.db_labels, self.task.topk)

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = _codes(self.model, x)
        return codes, self.ap(codes, y)

    def outcome(self, y: torch.Tensor, x_adv: torch.Tensor, before: tuple) -> dict[str, torch.Tensor]:
        clean_codes, clean_ap = before
        codes = _codes(self.model, x_adv)
        return {"ap": self.ap(codes, y), "clean_ap": clean_ap, "flipped": (codes != clean_codes).float().mean(1)}

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
