"""`harness bench attacks`: what the attack harness costs on top of torchattacks, and what a rule's backward costs
an attacker.

- overhead: PGD over the same batches of the same rule-attached model, (a) through `workloads.attacks.attack`
  (query counting, the rule/exact switch, scoring) and (b) a direct `torchattacks.PGD` loop that scores the same
  way, timed interleaved in one process;
- input_grad: d loss / d input through the rule's backward vs `handle.exact()` on the same weights (one step of a
  white-box attack under the `rule` vs the `exact` gradient source).
Imports torch, torchvision and torchattacks only, so it runs on a GPU machine without Ray.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F
import torchattacks
from pydantic import Field

import rules
from harness.bench import Bench, Timed, chosen_rules
from harness.bench.timing import interleaved_medians, paired_ratio
from workloads import backbones
from workloads.checkpoint import Loaded
from workloads.tasks import get_task


def _pgd_direct(model: torch.nn.Module, batches: list, eps: float, steps: int) -> Callable[[], float]:
    def run() -> float:
        atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
        correct = 0
        for x, y in batches:
            with torch.no_grad():
                model(x).argmax(1)
            x_adv = atk(x, y)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
        return correct

    return run


def _pgd_harness(loaded: Loaded, batches: list, eps: float, steps: int) -> Callable[[], float]:
    from workloads.attacks import attack

    def run() -> float:
        return attack(loaded, "pgd", "rule", [eps], batches, params={"steps": steps})[0]["robust_acc"]

    return run


def _input_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> Callable[[], None]:
    def step() -> None:
        xa = x.detach().requires_grad_(True)
        with ctx():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        g.sign_()

    return step


class Settings(Timed):
    backbone: str = "resnet18"
    image_size: Annotated[int, Field(ge=1)] = 32
    batch_size: Annotated[int, Field(ge=1)] = 64
    batches: Annotated[int, Field(ge=1)] = 2
    """Batches per PGD run."""
    steps: Annotated[int, Field(ge=1)] = 5
    """PGD steps."""
    eps: float = 0.05
    rounds: Annotated[int, Field(ge=1)] = 10
    """Interleaved timing rounds."""
    out: str = "results/bench/attacks.json"
    """JSON output."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict:
    rule_names, backbone, image_size, batch_size, batches = (chosen_rules(s.rules), s.backbone, s.image_size,
                                                             s.batch_size, s.batches)
    steps, eps, rounds, device, seed = s.steps, s.eps, s.rounds, s.device, s.seed
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(dev),
             torch.randint(0, 10, (batch_size,), generator=gen).to(dev)) for _ in range(batches)]
    task = get_task("classification")(10)
    torch.manual_seed(seed)
    base_state = backbones.build(backbone, 10).state_dict()
    rows = []
    for name in rule_names:
        model = backbones.build(backbone, 10)
        model.load_state_dict(base_state)
        model = model.to(dev).eval()
        handle = rules.attach(model, name, seed=seed)
        loaded = Loaded(model, handle, task, {}, {})
        log(f"[bench attacks] {name}: PGD-{steps} harness vs direct torchattacks, {rounds} rounds")
        pgd = interleaved_medians({"direct": _pgd_direct(model, data, eps, steps),
                                   "harness": _pgd_harness(loaded, data, eps, steps)}, dev, rounds, warmup=1)
        log(f"[bench attacks] {name}: input gradient, rule vs exact, {rounds * 3} rounds")
        x, y = data[0]
        grad = interleaved_medians({"exact": _input_grad(model, x, y, handle.exact),
                                    "rule": _input_grad(model, x, y, contextlib.nullcontext)}, dev, rounds * 3)
        images = batches * batch_size
        rows.append({
            "rule": name,
            "harness_overhead": paired_ratio(pgd, "harness", "direct"),
            "pgd_images_per_s_harness": images / pgd["harness"]["median_s"],
            "pgd_images_per_s_direct": images / pgd["direct"]["median_s"],
            "rule_vs_exact_input_grad": paired_ratio(grad, "rule", "exact"),
            "input_grad_ms_rule": 1e3 * grad["rule"]["median_s"],
            "input_grad_ms_exact": 1e3 * grad["exact"]["median_s"],
        })
    return {"benchmark": "attacks", "backbone": backbone, "image_size": image_size, "batch_size": batch_size,
            "batches": batches, "pgd_steps": steps, "eps": eps, "rounds": rounds, "device": str(dev),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "timestamp": time.time(), "rows": rows}


def format_table(r: dict) -> str:
    lines = [f"{r['backbone']} {r['image_size']}px, batch {r['batch_size']} x {r['batches']}, PGD-{r['pgd_steps']}, "
             f"{r['device']}, {r['rounds']} rounds",
             f"{'rule':<6} {'harness/direct':>14} {'PGD img/s':>10} {'rule/exact grad':>16} {'grad ms':>8}"]
    lines += [f"{x['rule']:<6} {x['harness_overhead']:>14.3f} {x['pgd_images_per_s_harness']:>10.1f}"
              f" {x['rule_vs_exact_input_grad']:>16.3f} {x['input_grad_ms_rule']:>8.1f}" for x in r["rows"]]
    return "\n".join(lines)


BENCH = Bench(
    "attacks", "PGD through the harness vs torchattacks directly; a rule's input gradient vs the exact one",
    "For each rule, on one rule-attached model: PGD over the same batches through workloads.attacks.attack and "
    "through a direct torchattacks loop (ratio = harness overhead), and the input-gradient step through the rule's "
    "backward vs handle.exact() (the cost of the 'rule' gradient source). Interleaved in one process; runs without "
    "Ray; works on CUDA.", Settings, run, format_table)
