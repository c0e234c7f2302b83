"""`harness bench rules`: cost of each learning rule relative to plain PyTorch backpropagation.

Two steps per rule, each timed interleaved with a plain-BP twin of the same model in the same process:
- train: forward, cross-entropy, backward, Adam step (the fine-tuning step of docs/protocol.md, "Training");
- input_grad: forward and d loss / d input only, with parameters still requiring grad (one step of a gradient
  attack, the cost BioTorch pays 2.4x for).
With `control=True` a third kind of row times `FreshBufferControl`, which is not a learning rule: the least any rule
that hands the convolution a freshly written B at every pass (brsf) can cost, so brsf's ratio can be read against
what writing B alone costs on the machine at hand.
Imports torch and torchvision only, so it runs on a GPU machine where Ray is not installed.
"""

from __future__ import annotations

import contextlib
import copy
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field
from torch import nn

import rules
from harness.bench import Bench, Timed, chosen_rules
from harness.bench.timing import interleaved_medians, paired_ratio
from rules.streams import UniformStream

# Sizes that finish on a 2-core CPU; the GPU preset is the paper's (224 px, batch 128). ResNet-18 at batch 256 is
# the step size the README's cost targets are stated for (results/bench/NOTES.md). Smaller steps show more of the
# per-step cost a sign rule cannot avoid (reading all of W once after each optimizer step to keep B in step); pass
# --batch-size 64 to see it.
CPU_SHAPES = {"resnet18": (32, 256), "alexnet": (64, 64), "vgg16": (32, 16)}
GPU_SHAPES = {"resnet18": (224, 128), "alexnet": (224, 128), "vgg16": (224, 64)}


class FreshBufferControl(rules.Rule):
    """Control, not a learning rule: B is a weight-sized buffer overwritten with a constant at every backward pass.

    It draws no random numbers and reads nothing of W, so its cost over plain autograd is what writing a fresh B for
    every layer costs inside a step (memory traffic, and the convolution reading B instead of the W the forward left
    in cache): the floor under brsf, whose draw writes the same bytes. Not registered, so no DAG can name it.
    """

    name = "fresh-B control"
    random_per_pass = True

    def feedback(self, layer: rules.Layer, stream: UniformStream | None = None) -> torch.Tensor:
        return layer.scratch("b", layer.weight).fill_(1e-3)


CONTROL = FreshBufferControl.name


@dataclass(frozen=True)
class Case:
    backbone: str
    image_size: int
    batch_size: int
    num_classes: int = 10
    amp: torch.dtype | None = None  # autocast dtype (e.g. torch.bfloat16), None for float32
    channels_last: bool = False

    @property
    def label(self) -> str:
        extras = [str(self.amp).removeprefix("torch.") + " autocast"] if self.amp else []
        extras += ["channels-last"] if self.channels_last else []
        return f"{self.backbone} {self.image_size}px batch {self.batch_size}" + "".join(f", {e}" for e in extras)


def _build(backbone: str, num_classes: int) -> nn.Module:
    factory = getattr(torchvision.models, backbone, None)
    if factory is None:
        raise ValueError(f"unknown torchvision backbone {backbone!r}")
    return factory(weights=None, num_classes=num_classes)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision as a user turns it on (torch.autocast around forward and loss), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None = None
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(x.device, amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def _input_grad_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None = None
) -> Callable[[], None]:
    def step() -> None:
        xa = x.detach().requires_grad_(True)
        with _autocast(x.device, amp):
            loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        g.sign_()  # what an FGSM/PGD step does next; keeps the result alive like a real attack

    return step


def bench_case(
    case: Case,
    rule_names: list[str],
    device: torch.device,
    rounds: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
    control: bool = False,
) -> list[dict]:
    torch.manual_seed(seed)
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    base = _build(case.backbone, case.num_classes).to(device, memory_format=layout)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(case.batch_size, 3, case.image_size, case.image_size, generator=gen).to(device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, case.num_classes, (case.batch_size,), generator=gen).to(device)

    train_variants: dict[str, Callable[[], None]] = {}
    grad_variants: dict[str, Callable[[], None]] = {}
    timed = [*rule_names, *([CONTROL] if control else [])]
    for name in ["plain", *timed]:
        model, attacked = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
        if name != "plain":  # same seed, so both copies run the same rule state
            rule = FreshBufferControl if name == CONTROL else name
            rules.attach(model, rule, seed=seed)
            rules.attach(attacked, rule, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=5e-4)
        train_variants[name] = _train_step(model, opt, x, y, case.amp)
        grad_variants[name] = _input_grad_step(attacked, x, y, case.amp)

    label = case.label
    log(f"[bench rules] {label}: training step, {rounds} interleaved rounds")
    train = interleaved_medians(train_variants, device, rounds, progress=_progress(log, label, "train"))
    log(f"[bench rules] {label}: input-gradient step, {rounds} interleaved rounds")
    grad = interleaved_medians(grad_variants, device, rounds, progress=_progress(log, label, "input_grad"))
    rows = []
    for name in timed:
        rows.append({
            "backbone": case.backbone, "image_size": case.image_size, "batch_size": case.batch_size, "rule": name,
            "case": case.label,
            "train_ratio": paired_ratio(train, name, "plain"),
            "input_grad_ratio": paired_ratio(grad, name, "plain"),
            "train_ms": 1e3 * train[name]["median_s"], "train_plain_ms": 1e3 * train["plain"]["median_s"],
            "input_grad_ms": 1e3 * grad[name]["median_s"], "input_grad_plain_ms": 1e3 * grad["plain"]["median_s"],
            "train_iqr_ms": 1e3 * (train[name]["q3_s"] - train[name]["q1_s"]),
            "input_grad_iqr_ms": 1e3 * (grad[name]["q3_s"] - grad[name]["q1_s"]),
        })
    return rows


def _progress(log: Callable[[str], None], label: str, what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 4) == 0:
            log(f"[bench rules] {label} {what}: round {done}/{total}")

    return report


class Settings(Timed):
    backbones: list[str] = ["resnet18"]
    """Comma list: resnet18, alexnet, vgg16, any torchvision classification model."""
    image_size: Annotated[int | None, Field(ge=1)] = None
    """Override the per-backbone image size."""
    batch_size: Annotated[int | None, Field(ge=1)] = None
    """Override the per-backbone batch size."""
    control: bool = False
    """Also time a control that only overwrites a weight-sized B at every pass (no random numbers, no read of W):
    the least brsf, which redraws B every pass, can cost here."""
    rounds: Annotated[int, Field(ge=1)] = 30
    """Interleaved timing rounds."""
    out: str = "results/bench/rules.json"
    """JSON output."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict:
    backbones, rule_names, device, rounds = s.backbones, chosen_rules(s.rules), s.device, s.rounds
    image_size, batch_size, seed, control = s.image_size, s.batch_size, s.seed, s.control
    dev = torch.device(device)
    shapes = GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES
    rows: list[dict] = []
    for backbone in backbones:
        size, batch = shapes.get(backbone, (32, 64))
        case = Case(backbone, image_size or size, batch_size or batch)
        rows.extend(bench_case(case, rule_names, dev, rounds, seed=seed, log=log, control=control))
    return {
        "benchmark": "rules",
        "device": _device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "baseline": "plain PyTorch autograd on an identical model, interleaved in the same process",
        "ratio": "median over rounds of (rule time / plain time in the same round)",
        "rows": rows,
    }


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(result: dict) -> str:
    w = max([4, *(len(r["rule"]) for r in result["rows"])])
    head = f"{'backbone':<10} {'size':>4} {'batch':>5} {'rule':<{w}} {'train x BP':>10} {'input-grad x BP':>15}" \
           f" {'train ms':>9} {'input-grad ms':>13}"
    lines = [f"device: {result['device']}, torch {result['torch']}, {result['rounds']} rounds", head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['backbone']:<10} {r['image_size']:>4} {r['batch_size']:>5} {r['rule']:<{w}} {r['train_ratio']:>10.3f}"
            f" {r['input_grad_ratio']:>15.3f} {r['train_ms']:>9.1f} {r['input_grad_ms']:>13.1f}"
        )
    return "\n".join(lines)


BENCH = Bench(
    "rules", "training-step and input-gradient cost of each learning rule vs plain PyTorch BP",
    "Times one training step (forward, backward, Adam) and one input-gradient step (an attack's d loss/d input with "
    "parameters requiring grad) for each rule, interleaved with a plain-autograd twin of the same model, and prints "
    "the ratios of medians. Runs without Ray; works on CUDA.", Settings, run, format_table)
