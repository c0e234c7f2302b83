"""The attack stage as a plain function over checkpoints (what `harness stage attack` and the orchestrator call).

    result = attack_checkpoint("runs/ft-frsf.pt", "pgd", "exact", [0, .05, .1], {"n": 500},
                               sibling="runs/ft-bp.pt")

Config keys (all optional): n (test images attacked, default 500), batch_size (default 250), params (the attack's
own, e.g. {"steps": 50}), db_limit (hashing: database items ranked against), device ("cpu"), seed (default: the
checkpoint's), diagnostics (default True: the rule-vs-exact input-gradient cosine on the first batch). The images
are the first n of the target test split, in shard order, the same for every model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from workloads.attacks.run import attack, gradient_cosine, validate

STAGE_DEFAULTS = {"n": 500, "batch_size": 250, "params": {}, "db_limit": None, "device": "cpu", "seed": None,
                  "diagnostics": True}


def attack_checkpoint(checkpoint: str | Path, attack_name: str, source: str | None, eps_grid: list[float],
                      config: dict | None = None, sibling: str | Path | None = None,
                      on_row: Callable[[dict], None] | None = None) -> dict:
    from workloads.train import load_model, make_reader, split_names

    cfg = {**STAGE_DEFAULTS, **(config or {})}
    unknown = sorted(set(cfg) - set(STAGE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown attack-stage key(s) {', '.join(unknown)}; allowed: {', '.join(STAGE_DEFAULTS)}")
    target = load_model(checkpoint, cfg["device"])
    validate(attack_name, target.task.kind, source, eps_grid, cfg["params"])
    if source == "transfer" and sibling is None:
        raise ValueError("gradient source 'transfer' needs the BP-fine-tuned sibling checkpoint (sibling=...)")
    twin = load_model(sibling, cfg["device"]) if source == "transfer" else None
    tc = target.config
    seed = int(tc["seed"] if cfg["seed"] is None else cfg["seed"])
    classes = tc["data"].get("target_classes")
    _, test_split, db_split = split_names(tc["data"]["root"])
    batches = list(make_reader(tc, test_split, classes, int(cfg["n"]), False, int(cfg["batch_size"]), seed))
    database = None
    if target.task.kind == "hashing":
        limit = cfg["db_limit"] if cfg["db_limit"] is not None else tc["data"].get("db_limit")
        database = make_reader(tc, db_split, classes, limit, False, 500, seed)
    t0 = time.perf_counter()
    rows = attack(target, attack_name, source, eps_grid, batches, sibling=twin, params=cfg["params"], seed=seed,
                  database=database, on_row=on_row)
    seconds = time.perf_counter() - t0
    diagnostics = gradient_cosine(target, batches[:1]) if cfg["diagnostics"] and target.handle is not None else {}
    return {"checkpoint": str(checkpoint), "rule": target.checkpoint["rule"], "attack": attack_name,
            "source": source, "rows": rows, "diagnostics": diagnostics, "seconds": seconds, "seed": seed}
