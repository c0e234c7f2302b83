"""Interleaved timing: every variant is timed once per round, rounds repeat, medians are compared.

This machine is shared and noisy; interleaving puts every variant under the same background load, so the ratio
of medians is stable where absolute times are not.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    warmup: int = 2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median and spread (seconds) of each variant, timed in a shuffled order within each round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(seed)
    for r in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            synchronize(device)
            t0 = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
        if progress is not None:
            progress(r + 1, rounds)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[name] = {"median_s": statistics.median(ts), "q1_s": q[0], "q3_s": q[2], "n": len(ts), "times_s": ts}
    return out


def paired_ratio(result: dict[str, dict], name: str, baseline: str) -> float:
    """Median over rounds of time(name) / time(baseline) within the same round.

    Both were timed within one round, seconds apart, so a slow drift of the machine's load cancels; the median
    drops rounds where a burst hit one of the two.
    """
    a, b = result[name]["times_s"], result[baseline]["times_s"]
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
