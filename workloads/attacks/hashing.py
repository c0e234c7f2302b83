"""White-box attacks on deep hashing: HAG and SDHA, written from their papers and the reference code named in
docs/hashing.md (neither torchattacks nor foolbox has them).

Both are untargeted, batched, keep every iterate inside the L-inf eps ball and [0, 1] (projection after each step),
and the caller re-encodes the *final* image (SAAT returns the code of the iterate before the last step).
The relaxed code is f(x, a) = tanh(a * model(x)) with the 10-segment a schedule of the official HAG code.
Gradients are taken with `torch.autograd.grad` with respect to the image only, so whatever backward the crafting
model defines (rule or exact) is what they follow, and no weight gradient is ever computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.attacks.base import AttackContext, AttackSpec, Steps, gradient_cost, project
from workloads.attacks.registry import register_attack
from workloads.settings import Section

ALPHA_SCHEDULE = (0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def alpha_at(step: int, steps: int) -> float:
    return ALPHA_SCHEDULE[min(len(ALPHA_SCHEDULE) - 1, int(step * len(ALPHA_SCHEDULE) / max(steps, 1)))]


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, xh: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    """One optimiser step on the image alone (no weight gradient is computed), then back into the eps ball."""
    (xh.grad,) = torch.autograd.grad(loss, xh)
    opt.step()
    with torch.no_grad():
        xh.copy_(project(xh, x, eps))


class HAGParams(Section):
    steps: Steps = 2000
    """Iterations (the official code's 2000)."""
    lr: float = 100.0
    """SGD learning rate on the image."""
    momentum: float = 0.9
    """SGD momentum."""
    margin: float = 0.5
    """A bit drops out of the loss once it is flipped past this margin."""
    beta: float = 1.0
    """Weight of the bit-balance term."""


def _hag(model, eps: float, params: HAGParams, ctx: AttackContext):
    """Yang et al. 2020: push the masked inner product of relaxed and clean codes to -1, plus bit balance."""
    steps, margin, beta = params.steps, params.margin, params.beta

    def craft(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.tanh(model(x))  # continuous clean code, as in the official code
        target = torch.sign(h)
        xh = x.clone().requires_grad_(True)
        opt = torch.optim.SGD([xh], lr=params.lr, momentum=params.momentum)
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


class SDHAParams(Section):
    steps: Steps = 1500
    """Iterations (SAAT's attack script: 1500)."""
    lr: float = 0.01
    """Adam learning rate on the image."""
    sigma: float = 5.0
    """Sharpness of the dimension-wise same-sign gate."""
    weight_power: float = -0.5
    """Exponent of the AP-oriented weight on Hamming distance (negative: near items weigh more)."""
    strength: float = 25.0
    """Weight of the retrieval term, divided by the code length, against the image distance."""
    max_references: Steps = 1000
    """Database items drawn (seeded) as the relevant sets, to bound memory."""


def _sdha(model, eps: float, params: SDHAParams, ctx: AttackContext):
    """Lu et al. 2021 (SAAT's implementation): push each query away from the database items relevant to it."""
    from workloads.tasks.metrics import relevance

    steps, sigma, power = params.steps, params.sigma, params.weight_power
    device = next(model.parameters()).device  # the references are ranked on the host; the attack runs here
    refs, ref_labels = (t.to(device) for t in _references(ctx, params.max_references))

    def craft(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bits = refs.shape[1]
        rel = relevance(y, ref_labels).float()  # (B, N)
        n_rel = rel.sum(1)
        with torch.no_grad():
            own = torch.sign(torch.tanh(model(x)))  # fallback when no database item shares a label
        xh = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([xh], lr=params.lr, betas=(0.9, 0.999))
        for step in range(steps):
            q = torch.tanh(alpha_at(step, steps) * model(xh))
            with torch.no_grad():  # AP-oriented weight: items near the query in Hamming distance weigh more
                weight = (0.5 * (bits - torch.sign(q) @ refs.t()) + 1e-8) ** power
                own_weight = (0.5 * (bits - (torch.sign(q) * own).sum(1)) + 1e-8) ** power
            d = _surrogate(q, refs[None], sigma)  # (B, N)
            pushed = (d * weight * rel).sum(1) / n_rel.clamp(min=1)
            alone = _surrogate(q, own[:, None, :], sigma)[:, 0] * own_weight
            score = torch.where(n_rel > 0, pushed, alone)
            loss = F.mse_loss(xh, x) - params.strength / bits * score.mean()
            _step(opt, loss, xh, x, eps)
        return xh.detach()

    return craft


# Paper-faithful iteration counts (docs/hashing.md); the embedded default DAG lowers them and its report says so.
register_attack(AttackSpec("hag", "hashing", ("hashing",), _hag, HAGParams,
                           "HAG (Yang et al. 2020): flip code bits, untargeted", cost=lambda p: gradient_cost(p.steps)))
register_attack(AttackSpec("sdha", "hashing", ("hashing",), _sdha, SDHAParams,
                           "SDHA (Lu et al. 2021): AP-weighted surrogate Hamming distance to relevant items",
                           cost=lambda p: gradient_cost(p.steps)))
