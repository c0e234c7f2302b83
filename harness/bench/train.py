"""`harness bench train`: fine-tuning images/s of each rule vs BP inside the real training loop (reader included).

Each variant is a model built from the same initial weights with its own optimizer and its own ShardReader over
the target classes; every round times the same number of steps of `workloads.train.train_step`, batches fetched
from the reader inside the timed region, variants in a shuffled order. Imports no Ray.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Annotated

import torch
from pydantic import Field

import rules
from harness.bench import Bench, Timed, chosen_rules
from harness.bench.timing import interleaved_medians, paired_ratio
from workloads import backbones
from workloads.config import stage_config
from workloads.datasets import load_manifest
from workloads.inputs import make_reader
from workloads.settings import resolve_device
from workloads.tasks import get_task
from workloads.train import train_step


def _cycle(reader) -> Iterator:
    epoch = 0
    while True:
        reader.set_epoch(epoch)
        yield from reader
        epoch += 1


class Settings(Timed):
    folder: str = "data/fashion-mnist"
    """Prepared shards."""
    backbone: str = "resnet18"
    classes: list[int] | None = [5, 6, 7, 8, 9]
    """Target classes (the embedded default's fine-tuning split)."""
    pad: Annotated[int, Field(ge=0)] = 2
    batch_size: Annotated[int, Field(ge=1)] = 256
    """The ResNet-18 step size `bench rules` uses on a CPU."""
    steps_per_round: Annotated[int, Field(ge=1)] = 3
    rounds: Annotated[int, Field(ge=1)] = 15
    """Interleaved timing rounds."""
    out: str = "results/bench/train.json"
    """JSON output (`harness plan` estimates hours from it)."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict:
    folder, rule_names, backbone, classes, pad = s.folder, chosen_rules(s.rules), s.backbone, s.classes, s.pad
    batch_size, steps_per_round, rounds, device, seed = s.batch_size, s.steps_per_round, s.rounds, s.device, s.seed
    cfg = stage_config({"backbone": backbone, "device": device, "seed": seed,
                        "data": {"root": str(folder), "target_classes": classes, "pad": pad}}, "bench train")
    dev = resolve_device(device)
    n_classes = len(classes) if classes is not None else load_manifest(folder).num_classes
    task = get_task("classification")(n_classes)
    torch.manual_seed(seed)
    base = backbones.build(backbone, n_classes).to(dev)
    variants = {}
    for name in ["plain", *rule_names]:
        model = copy.deepcopy(base).train()
        if name != "plain":
            rules.attach(model, name, seed=seed)
        opt = torch.optim.Adam([{"params": model.backbone_parameters(), "lr": 1e-5},
                                {"params": model.head_parameters(), "lr": 1e-4}], weight_decay=5e-4)
        batches = _cycle(make_reader(cfg, "train", classes, None, True, batch_size, seed))

        def step(model=model, opt=opt, batches=batches) -> None:
            for _ in range(steps_per_round):
                x, y = next(batches)
                train_step(model, task, opt, x, y, dev)

        variants[name] = step
    log(f"[bench train] {backbone}, {len(variants)} variants x {rounds} rounds x {steps_per_round} steps")
    result = interleaved_medians(variants, dev, rounds)
    images = steps_per_round * batch_size
    rows = [{"rule": n, "images_per_s": images / result[n]["median_s"],
             "ratio_to_bp_time": paired_ratio(result, n, "plain")} for n in rule_names]
    return {"benchmark": "train", "backbone": backbone, "batch_size": batch_size, "device": str(dev),
            "plain_images_per_s": images / result["plain"]["median_s"], "rounds": rounds,
            "steps_per_round": steps_per_round, "rows": rows, "threads": torch.get_num_threads(),
            "timestamp": time.time()}


def format_table(r: dict) -> str:
    lines = [f"{r['backbone']} fine-tuning, batch {r['batch_size']}, {r['device']}, reader included; "
             f"plain BP: {r['plain_images_per_s']:.0f} img/s",
             f"{'rule':<6} {'img/s':>8} {'time x BP':>10}"]
    lines += [f"{row['rule']:<6} {row['images_per_s']:>8.0f} {row['ratio_to_bp_time']:>10.3f}" for row in r["rows"]]
    return "\n".join(lines)


BENCH = Bench("train", "fine-tuning images/s per rule vs BP inside the real training loop, data loading included",
              "Times the same number of steps of `workloads.train.train_step` per rule and for plain BP, batches "
              "fetched from the reader inside the timed region, variants interleaved in a shuffled order.",
              Settings, run, format_table, positional=("folder",))
