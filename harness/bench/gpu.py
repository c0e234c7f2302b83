"""`harness bench gpu` (`make gpu-check`): the prepared accelerator check, one command for a borrowed GPU.

Everything as a ratio to bp timed interleaved in the same process, so the figures compare across cards:
- the rules benchmark (training step and input-gradient step, `harness bench rules`) on ResNet-18 at 224 px, in
  float32 and in bf16 autocast with channels-last tensors, the way people fine-tune on a GPU;
- one ResNet-18 224 px fine-tuning step per rule (the float32 training step above is that step);
- attack throughput through the harness (`workloads.attacks.attack`, rule gradients, re-check and scoring
  included): PGD on a classifier and SDHA on a 32-bit hashing model, images per second per rule.
Writes results/bench/gpu.md (and the JSON next to it). Without CUDA it measures nothing, says so in one line and
succeeds, so the command can sit in any script. Imports torch, torchvision and torchattacks only: Ray does not
travel to the GPU machines this runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

import rules
from harness.bench import Bench, Timed, chosen_rules
from harness.bench.rules import Case, _device_name, bench_case
from harness.bench.timing import interleaved_medians, paired_ratio
from workloads.files import atomic_write_text

NO_CUDA = "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing measured, nothing written"


def _attack_runs(kind: str, rule_names: list[str], device: torch.device, image_size: int, batch_size: int,
                 steps: int, seed: int) -> dict[str, Callable[[], object]]:
    """One harness attack run per rule on the same weights and images: PGD (classification) or SDHA (hashing)."""
    from workloads import backbones
    from workloads.attacks import attack
    from workloads.checkpoint import Loaded
    from workloads.tasks import get_task

    task = get_task(kind)(10)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    database = [(torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(device),
                 torch.randint(0, 10, (batch_size,), generator=gen).to(device))] if kind == "hashing" else None
    torch.manual_seed(seed)
    state = backbones.build("resnet18", task.num_outputs).state_dict()
    name = "pgd" if kind == "classification" else "sdha"
    runs = {}
    for rule in rule_names:
        model = backbones.build("resnet18", task.num_outputs)
        model.load_state_dict(state)
        model = model.to(device).eval()
        loaded = Loaded(model, rules.attach(model, rule, seed=seed), task, {}, {})

        def run(loaded: Loaded = loaded) -> object:
            return attack(loaded, name, "rule", [8 / 255], [(x, y)], params={"steps": steps}, seed=seed,
                          database=database)

        runs[rule] = run
    return runs


class Settings(Timed):
    image_size: Annotated[int, Field(ge=1)] = 224
    batch_size: Annotated[int, Field(ge=1)] = 128
    """Training and input-gradient steps (the paper's)."""
    attack_batch: Annotated[int, Field(ge=1)] = 64
    """Images per attack run."""
    steps: Annotated[int, Field(ge=1)] = 10
    """PGD and SDHA steps."""
    rounds: Annotated[int, Field(ge=1)] = 10
    """Interleaved timing rounds."""
    device: str = "cuda"
    """cuda, cuda:1, ... (cpu runs the same code at toy sizes, as the tests do)."""
    out: str = "results/bench/gpu.md"
    """Markdown output (the JSON goes beside it)."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict | None:
    """The measurements, or None when `device` is CUDA and there is none. `device` cpu and small sizes run the
    same code on a CPU (the tests do; the figures mean nothing there)."""
    rule_names, rounds, device, image_size = chosen_rules(s.rules), s.rounds, s.device, s.image_size
    batch_size, attack_batch, steps, seed = s.batch_size, s.attack_batch, s.steps, s.seed
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None  # format_table says so
    rule_names = ["bp", *[r for r in rule_names if r != "bp"]]
    result: dict = {"benchmark": "gpu", "device": _device_name(dev), "torch": torch.__version__,
                    "rounds": rounds, "rules": [], "attacks": []}
    for amp, channels_last in ((None, False), (torch.bfloat16, True)):
        case = Case("resnet18", image_size, batch_size, amp=amp, channels_last=channels_last)
        result["rules"].extend(bench_case(case, rule_names, dev, rounds, seed=seed, log=log))
    for kind in ("classification", "hashing"):
        attack = "PGD" if kind == "classification" else "SDHA"
        log(f"[bench gpu] {attack}-{steps} through the harness, ResNet-18 {image_size}px batch {attack_batch}, "
            f"{rounds} interleaved rounds")
        runs = _attack_runs(kind, rule_names, dev, image_size, attack_batch, steps, seed)
        times = interleaved_medians(runs, dev, rounds, warmup=1)
        for rule in rule_names:
            result["attacks"].append({
                "attack": attack, "rule": rule, "steps": steps, "batch_size": attack_batch,
                "images_per_s": attack_batch / times[rule]["median_s"],
                "time_vs_bp": paired_ratio(times, rule, "bp"),
            })
    return result


def format_table(result: dict | None) -> str:
    if result is None:
        return NO_CUDA
    lines = [f"# Accelerator check (`make gpu-check`): {result['device']}", "",
             f"torch {result['torch']}, {result['rounds']} interleaved rounds; every figure is a ratio to bp "
             "timed in the same rounds (median over rounds of rule time / bp time).", "",
             "## Rules: training step (a fine-tuning step) and input-gradient step (an attack step)", "",
             "| setting | rule | train x bp | input-grad x bp | train ms | input-grad ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['rule']} | {r['train_ratio']:.3f} | {r['input_grad_ratio']:.3f} | "
              f"{r['train_ms']:.1f} | {r['input_grad_ms']:.1f} |" for r in result["rules"]]
    lines += ["", "## Attacks through the harness (rule gradients, re-check and scoring included)", "",
              "| attack | rule | images/s | time x bp |", "|---|---|---|---|"]
    lines += [f"| {a['attack']}-{a['steps']} | {a['rule']} | {a['images_per_s']:.1f} | {a['time_vs_bp']:.3f} |"
              for a in result["attacks"]]
    return "\n".join(lines)


def write_markdown(result: dict, path: str | Path) -> Path:
    return atomic_write_text(path, format_table(result) + "\n")


BENCH = Bench(
    "gpu", "the accelerator check (make gpu-check): rules, a 224 px fine-tuning step, PGD and SDHA vs bp",
    "On CUDA: the rules benchmark on ResNet-18 224 px in float32 and in bf16 autocast with channels-last, and PGD "
    "and SDHA images/s through the harness per rule, each as a ratio to bp in the same process; writes a markdown "
    "table (and its JSON). Without CUDA: one line saying so, exit 0.", Settings, run, format_table, write_markdown)
