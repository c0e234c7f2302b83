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
import math
import statistics
from collections.abc import Callable, Iterable

import torch

from workloads.attacks.base import GRADIENT_SOURCES, AttackContext, AttackSpec, check_eps
from workloads.attacks.registry import get_attack


def validate(attack: str, task_kind: str, source: str | None, eps_grid: list[float],
             params: dict | None = None) -> AttackSpec:
    """Every config error an attack can have, raised before anything is computed."""
    spec = get_attack(attack)
    if task_kind not in spec.tasks:
        raise ValueError(f"attack {attack!r} does not apply to a {task_kind} model (it applies to: "
                         f"{', '.join(spec.tasks)})")
    if spec.needs_gradient_source:
        if source not in GRADIENT_SOURCES:
            raise ValueError(f"gradient source {source!r} for {attack!r}: choose one of {', '.join(GRADIENT_SOURCES)}")
    elif source not in (None, "none"):
        raise ValueError(f"{attack!r} queries outputs only; it takes no gradient source (got {source!r})")
    unknown = sorted(set(params or {}) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(sorted(spec.defaults)) or "none"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for attack {attack!r}; allowed: {allowed}")
    for key, value in (params or {}).items():
        _check_param(spec, key, value)
    check_eps(eps_grid)
    return spec


MAX_COUNT = 10**7  # steps, queries, restarts: far beyond any published setting, short of running for years


def _check_param(spec: AttackSpec, key: str, value: object) -> None:
    default = spec.defaults[key]
    where = f"parameter {key}={value!r} of attack {spec.name!r}"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT
        want = f"an integer in [0, {MAX_COUNT}]"
    elif isinstance(default, float):
        ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
              and abs(value) <= 1e6)
        want = "a finite number"
    else:
        allowed = spec.choices.get(key)
        ok = isinstance(value, str) and (allowed is None or value in allowed)
        want = f"one of {', '.join(allowed)}" if allowed else "a string"
    if not ok:
        raise ValueError(f"{where}: expected {want} (default {default!r})")


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
    spec = validate(attack_name, task.kind, source, eps_grid, params)
    if source == "transfer" and sibling is None:
        raise ValueError("gradient source 'transfer' needs the BP-fine-tuned sibling model")
    if task.kind == "hashing" and database is None:
        raise ValueError("attacking a hashing model needs the retrieval database (batches of its database split)")
    params = {**spec.defaults, **(params or {})}
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
        acc = scorer.accumulator()
        for (x, y), before in zip(batches, clean, strict=True):
            if craft is None:
                x_adv = x
            else:
                with exact():
                    x_adv = craft(x, y).detach()
            acc.add(x, y, x_adv, before)
        n = acc.n
        rows.append({"attack": attack_name, "source": source, "eps": eps, **acc.row(),
                     "queries": crafting.images / n, "n": n})
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
    medians = {"median_linf": statistics.median(linf[found].tolist()) if found.any() else float("nan"),
               "median_l2": statistics.median(l2[found].tolist()) if found.any() else float("nan"),
               "found": float(found.sum()) / max(int(ok.sum()), 1)}
    rows = []
    for eps in eps_grid:
        fooled = found & (linf <= eps)
        k = int(fooled.sum())
        rows.append({"attack": spec.name, "source": None, "eps": eps,
                     "robust_acc": float((ok & ~fooled).sum()) / n, "clean_acc": float(ok.sum()) / n,
                     "success_rate": k / max(int(ok.sum()), 1),
                     "linf": float(linf[fooled].sum()) / k if k else 0.0,
                     "l2": float(l2[fooled].sum()) / k if k else 0.0,
                     "queries": crafting.images / n, "n": n, **medians})
    return rows


class _ClassScorer:
    def __init__(self, target) -> None:
        self.model = target.model

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x).argmax(1) == y

    def accumulator(self) -> _ClassAcc:
        return _ClassAcc(self.model)


class _Sizes:
    def __init__(self) -> None:
        self.n, self.linf, self.l2 = 0, 0.0, 0.0

    def add_sizes(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        delta = (x_adv - x).flatten(1)
        self.n += len(x)
        self.linf += float(delta.abs().amax(1).sum())
        self.l2 += float(delta.norm(dim=1).sum())

    def sizes(self) -> dict:
        return {"linf": self.linf / self.n, "l2": self.l2 / self.n}


class _ClassAcc(_Sizes):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.correct, self.clean_correct, self.fooled = model, 0, 0, 0

    def add(self, x, y, x_adv, before) -> None:
        self.add_sizes(x, x_adv)
        with torch.no_grad():
            after = self.model(x_adv).argmax(1) == y
        self.correct += int(after.sum())
        self.clean_correct += int(before.sum())
        self.fooled += int((before & ~after).sum())

    def row(self) -> dict:
        return {"robust_acc": self.correct / self.n, "clean_acc": self.clean_correct / self.n,
                "success_rate": self.fooled / max(self.clean_correct, 1), **self.sizes()}


class _HashScorer:
    """Adversarial query codes ranked against the target's clean database codes."""

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

    def accumulator(self) -> _HashAcc:
        return _HashAcc(self)


class _HashAcc(_Sizes):
    def __init__(self, scorer: _HashScorer) -> None:
        super().__init__()
        self.scorer, self.ap, self.clean_ap, self.flipped, self.fooled = scorer, 0.0, 0.0, 0.0, 0

    def add(self, x, y, x_adv, before) -> None:
        self.add_sizes(x, x_adv)
        clean_codes, clean_ap = before
        codes = _codes(self.scorer.model, x_adv)
        ap = self.scorer.ap(codes, y)
        self.ap += float(ap.sum())
        self.clean_ap += float(clean_ap.sum())
        self.flipped += float((codes != clean_codes).float().mean(1).sum())
        self.fooled += int(((clean_ap > 0) & (ap < 0.5 * clean_ap)).sum())

    def row(self) -> dict:
        return {"map": self.ap / self.n, "clean_map": self.clean_ap / self.n, "success_rate": self.fooled / self.n,
                "hamming": self.flipped / self.n, **self.sizes()}


def gradient_cosine(target, batches: Iterable) -> dict:
    """Cosine between the input gradient the rule hands an attacker and the exact one, per image, on the batches.

    1.0 for bp; near 0 means a white-box attack through the rule is close to a random direction.
    """
    if target.handle is None:
        raise ValueError("gradient_cosine needs the model with its rule attached (load_model(..., attach_rule=True))")
    cos = []
    device = _device(target.model)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        grads = []
        for ctx in (contextlib.nullcontext, target.handle.exact):
            xa = x.detach().clone().requires_grad_(True)
            with ctx():
                (g,) = torch.autograd.grad(target.task.loss(target.model(xa), y), xa)
            grads.append(g.flatten(1))
        cos.append(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=1))
    c = torch.cat(cos)
    return {"input_grad_cosine_mean": float(c.mean()), "input_grad_cosine_median": float(c.median()),
            "input_grad_cosine_min": float(c.min()), "n": len(c)}
