"""What a plan costs, estimated from counted work and one measured rate.

Method (also in the README):
1. Count the work of every node in image passes (`workloads.names.Passes`), as its stage declares it
   (`Stage.passes`): training = epochs x training images x 3 forward-equivalents (forward + backward for inputs
   and weights); evaluation = images x 1; a white-box attack step = images x 2 (forward + input gradient); a query
   = 1. Each attack declares its own cost from its parameters (`AttackSpec.cost`). Image counts come from the
   manifest when the data is prepared, else from the DAG's `sizes` hints.
2. Weight each pass by the backbone's forward FLOPs at its input size (torch's FlopCounterMode on one image).
3. Divide by a FLOP rate: by default the one measured here, `harness bench train` (ResNet-18 32 px training,
   results/bench/train.json) times 3 x ResNet-18's forward FLOPs; `--tflops` sets a rate measured elsewhere (a GPU:
   run `harness bench train --device cuda` there). Per-trial overheads (process start, data loading of small
   nodes) are not in it, so small nodes cost more than estimated.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field

from harness.config.grid import DagConfig
from harness.stages import STAGES, Node, ordered
from workloads.errors import ConfigError, DataError
from workloads.names import Passes
from workloads.settings import Section

Images = Annotated[int | None, Field(ge=0, le=10**10)]


class SizeHints(Section):
    """Image counts a stage sees, for a dataset that is not prepared yet (train and test are needed)."""

    train: Images = None
    test: Images = None
    database: Images = None
    train_source: Images = None
    """Pre-training images (default: train)."""
    test_source: Images = None
    """Pre-training test images (default: test)."""
    image_size: Annotated[int | None, Field(ge=1, le=4096)] = None


@functools.cache
def forward_flops(backbone: str, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from workloads import backbones

    model = backbones.build(backbone, 10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def measured_rate(bench_json: str | Path | None = None) -> tuple[float, str] | None:
    """FLOP/s of the measured ResNet-18 32 px training, from `harness bench train` (results/bench/train.json in
    the working directory, else the one committed with this package's checkout)."""
    shipped = Path(__file__).resolve().parents[2] / "results" / "bench" / "train.json"
    candidates = [Path(bench_json)] if bench_json else [Path("results/bench/train.json"), shipped]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    try:
        r = json.loads(path.read_text())
        ips = float(r["plain_images_per_s"])
    except (OSError, KeyError, ValueError):
        return None
    rate = ips * Passes.TRAIN * forward_flops("resnet18", 32)
    return rate, f"{r.get('device', '?')} ({ips:.0f} img/s ResNet-18 32px)"


def _count(manifest, split: str, classes) -> int:
    info = manifest.splits.get(split)
    if info is None:
        return 0
    if classes is None:
        return info.count
    return sum(info.class_counts.get(str(c), 0) for c in classes)


def dataset_sizes(dag: DagConfig, where: str) -> tuple[dict[str, dict], dict[str, int]]:
    """Per dataset: image counts the stages see (manifest, else the DAG's `sizes` hints) and the native side;
    `where` (the DAG file) names the input in errors."""
    from workloads.datasets import load_manifest
    from workloads.inputs import split_names

    sizes, sides = {}, {}
    for name, d in dag.datasets.items():
        try:
            m = load_manifest(d.root)
        except (DataError, OSError):
            m = None
        if m is None:
            hint = d.sizes or SizeHints()
            if hint.train is None or hint.test is None:
                raise ConfigError(f"{where}: datasets.{name}: {d.root} is not prepared; give `sizes: {{train: N, "
                                  "test: N, database: N}}` in the DAG to estimate its cost without the data")
            sizes[name] = {"train": hint.train, "test": hint.test, "database": hint.database or 0,
                           "train_source": hint.train if hint.train_source is None else hint.train_source,
                           "test_source": hint.test if hint.test_source is None else hint.test_source}
            sides[name] = int(d.image_size or hint.image_size or 224)
        else:
            _, test, db = split_names(m)
            tgt, src = d.target_classes, d.source_classes
            sizes[name] = {"train": _count(m, "train", tgt), "test": _count(m, test, tgt),
                           "database": _count(m, db, tgt), "train_source": _count(m, "train", src),
                           "test_source": _count(m, test, src)}
            sides[name] = int(d.image_size or ((m.image.get("height") or 224) + 2 * d.pad))
        s = sizes[name]
        for key, limit in (("train", d.train_limit), ("train_source", d.train_limit), ("test", d.test_limit),
                           ("test_source", d.test_limit), ("database", d.db_limit)):
            if limit is not None:
                s[key] = min(s[key], limit)
    return sizes, sides


def node_pflop(nodes: list[Node], sizes: dict[str, dict], sides: dict[str, int]) -> dict[str, float]:
    """Node key -> its PFLOPs: counted image passes times the backbone's forward FLOPs at its input size."""
    from workloads import backbones

    out = {}
    for n in nodes:
        side = backbones.input_size(n.axes["backbone"], sides[n.axes["dataset"]])
        out[n.key] = STAGES.get(n.stage).passes(n, sizes[n.axes["dataset"]]) * forward_flops(n.axes["backbone"],
                                                                                              side) / 1e15
    return out


def cost_by_stage(nodes: list[Node], sizes: dict[str, dict], sides: dict[str, int],
             rate_flops: float | None) -> dict[str, dict]:
    """Per stage, in the order they run: nodes, PFLOPs and hours at `rate_flops` (None: no time estimate)."""
    present = {n.stage for n in nodes}
    out: dict[str, dict] = {s.name: {"nodes": 0, "pflop": 0.0} for s in ordered() if s.name in present}
    pflop = node_pflop(nodes, sizes, sides)
    for n in nodes:
        row = out[n.stage]
        row["nodes"] += 1
        row["pflop"] += pflop[n.key]
    for row in out.values():
        row["hours"] = row["pflop"] * 1e15 / rate_flops / 3600 if rate_flops else None
    return out


def wall_hours(stages: list[list[float]], workers: int) -> float:
    """Wall time of stages run one after another (as `harness run` runs them), each stage's nodes (their hours)
    spread over `workers` that take one node at a time: longest first, each to the worker free soonest (LPT, within
    4/3 of the best schedule)."""
    import heapq

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    total = 0.0
    for hours in stages:
        free = [0.0] * min(workers, max(1, len(hours)))
        for h in sorted(hours, reverse=True):
            heapq.heappush(free, heapq.heappop(free) + h)
        total += max(free)
    return total
