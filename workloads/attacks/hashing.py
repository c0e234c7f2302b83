"""White-box attacks on deep hashing: HAG and SDHA, written from HASHING.md (neither library has them).

Both are untargeted, batched, keep every iterate inside the L-inf eps ball and [0, 1] (projection after each step),
and the caller re-encodes the *final* image (SAAT returns the code of the iterate before the last step).
The relaxed code is f(x, a) = tanh(a * model(x)) with the 10-segment a schedule of the official HAG code.
Gradients are taken with `torch.autograd.grad` with respect to the image only, so whatever backward the crafting
model defines (rule or exact) is what they follow, and no weight gradient is ever computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.attacks.base import AttackContext, AttackSpec, project
from workloads.attacks.registry import register_attack

ALPHA_SCHEDULE = (0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def alpha_at(step: int, steps: int) -> float:
    return ALPHA_SCHEDULE[min(len(ALPHA_SCHEDULE) - 1, int(step * len(ALPHA_SCHEDULE) / max(steps, 1)))]


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, xh: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    """One optimiser step on the image alone (no weight gradient is computed), then back into the eps ball."""
    (xh.grad,) = torch.autograd.grad(loss, xh)
    opt.step()
    with torch.no_grad():
        xh.copy_(project(xh, x, eps))


def _hag(model, eps: float, params: dict, ctx: AttackContext):
    """Yang et al. 2020: push the masked inner product of relaxed and clean codes to -1, plus bit balance."""
    steps, margin, beta = int(params["steps"]), float(params["margin"]), float(params["beta"])

    def craft(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.tanh(model(x))  # continuous clean code, as in the official code
        target = torch.sign(h)
        xh = x.clone().requires_grad_(True)
        opt = torch.optim.SGD([xh], lr=float(params["lr"]), momentum=float(params["momentum"]))
        for step in range(steps):
            z = torch.tanh(alpha_at(step, steps) * model(xh))
            s = (((1 + margin) - (z - target).abs()) > 0).float()  # bits not yet flipped past the margin
            if not s.any():
                break  # every bit of every image is flipped: the official early stop
            inner = (s * z * h).sum(1) / (s.sum(1) + 1e-8)
            loss = ((inner + 1) ** 2).mean() + beta * (z.mean(1) ** 2).mean()
            _step(opt, loss, xh, x, eps)
        return xh.detach()

    return craft


def _references(ctx: AttackContext, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    if ctx.references is None:
        raise ValueError("sdha needs the retrieval database codes of the crafting model (AttackContext.references)")
    codes, labels = ctx.references
    if len(codes) > limit:  # a seeded subsample keeps the (batch x refs x bits) tensors small
        keep = torch.randperm(len(codes), generator=torch.Generator().manual_seed(ctx.seed))[:limit].sort().values
        codes, labels = codes[keep], labels[keep]
    return codes.float(), labels


def _surrogate(q: torch.Tensor, r: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dimension-wise surrogate Hamming distance between relaxed codes q (B, K) and codes r (B or 1, N, K)."""
    gate = torch.sigmoid(sigma * q[:, None, :] * r)
    return 0.5 * ((q[:, None, :] - r).abs() * gate).sum(-1) + (1 - gate).sum(-1)


def _sdha(model, eps: float, params: dict, ctx: AttackContext):
    """Lu et al. 2021 (SAAT's implementation): push each query away from the database items relevant to it."""
    from workloads.tasks.metrics import relevance

    steps, sigma, power = int(params["steps"]), float(params["sigma"]), float(params["weight_power"])
    refs, ref_labels = _references(ctx, int(params["max_references"]))

    def craft(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bits = refs.shape[1]
        rel = relevance(y, ref_labels).float()  # (B, N)
        n_rel = rel.sum(1)
        with torch.no_grad():
            own = torch.sign(torch.tanh(model(x)))  # fallback when no database item shares a label
        xh = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([xh], lr=float(params["lr"]), betas=(0.9, 0.999))
        for step in range(steps):
            q = torch.tanh(alpha_at(step, steps) * model(xh))
            with torch.no_grad():  # AP-oriented weight: items near the query in Hamming distance weigh more
                weight = (0.5 * (bits - torch.sign(q) @ refs.t()) + 1e-8) ** power
                own_weight = (0.5 * (bits - (torch.sign(q) * own).sum(1)) + 1e-8) ** power
            d = _surrogate(q, refs[None], sigma)  # (B, N)
            pushed = (d * weight * rel).sum(1) / n_rel.clamp(min=1)
            alone = _surrogate(q, own[:, None, :], sigma)[:, 0] * own_weight
            score = torch.where(n_rel > 0, pushed, alone)
            loss = F.mse_loss(xh, x) - float(params["strength"]) / bits * score.mean()
            _step(opt, loss, xh, x, eps)
        return xh.detach()

    return craft


# Paper-faithful iteration counts (HASHING.md); the embedded default DAG lowers them and its report says so.
register_attack(AttackSpec("hag", "hashing", ("hashing",), _hag,
                           {"steps": 2000, "lr": 100.0, "momentum": 0.9, "margin": 0.5, "beta": 1.0},
                           "HAG (Yang et al. 2020): flip code bits, untargeted"))
register_attack(AttackSpec("sdha", "hashing", ("hashing",), _sdha,
                           {"steps": 1500, "lr": 0.01, "sigma": 5.0, "weight_power": -0.5, "strength": 25.0,
                            "max_references": 1000},
                           "SDHA (Lu et al. 2021): AP-weighted surrogate Hamming distance to relevant items"))
