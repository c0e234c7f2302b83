"""The attack stage as a plain function over checkpoints (what `harness stage attack` and the orchestrator call).

    result = attack_checkpoint("runs/ft-frsf.pt", "pgd", "exact", [0, .05, .1], {"n": 500},
                               sibling="runs/ft-bp.pt")

The images are the first n of the target test split, in shard order, the same for every model. The result's
`outcomes` is the per-image table (polars; `run_attack` says what it holds): `write_outcomes` stores it next to
the result as parquet, the rest of the result is plain JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from workloads.attacks.run import gradient_cosine, run_attack, validate
from workloads.errors import ConfigError
from workloads.settings import Count, Device, Limit, Section, Seed
from workloads.settings import validate as validate_settings


class AttackSample(Section):
    n: Count = 500
    """Test images attacked: the first n of the target test split, the same for every model."""
    batch_size: Count = 250
    """Images per batch the attack crafts at once."""


class AttackStageSettings(AttackSample):
    params: dict = {}
    """The attack's own parameters (checked by the attack), e.g. {steps: 50}."""
    db_limit: Limit = None
    """Hashing: database items ranked against (null: the model's own data setting)."""
    device: Device = "cpu"
    seed: Seed | None = None
    """Random starts and restarts (null: the checkpoint's seed)."""
    diagnostics: bool = True
    """Also measure the cosine between the rule's and the exact input gradient on the first batch."""


def attack_checkpoint(checkpoint: str | Path, attack_name: str, source: str | None, eps_grid: list[float],
                      config: dict | None = None, sibling: str | Path | None = None,
                      on_row: Callable[[dict], None] | None = None) -> dict:
    from workloads.train import load_model, make_reader, split_names

    cfg = validate_settings(AttackStageSettings, config or {}, "attack-stage config")
    target = load_model(checkpoint, cfg.device)
    validate(attack_name, target.task.kind, source, eps_grid, cfg.params)
    if source == "transfer" and sibling is None:
        raise ConfigError("gradient source 'transfer' needs the BP-fine-tuned sibling checkpoint (sibling=...)")
    twin = load_model(sibling, cfg.device) if source == "transfer" else None
    tc = target.config
    seed = tc.seed if cfg.seed is None else cfg.seed
    _, test_split, db_split = split_names(tc.data.root)
    batches = list(make_reader(tc, test_split, tc.data.target_classes, cfg.n, False, cfg.batch_size, seed))
    database = None
    if target.task.kind == "hashing":
        limit = cfg.db_limit if cfg.db_limit is not None else tc.data.db_limit
        database = make_reader(tc, db_split, tc.data.target_classes, limit, False, 500, seed)
    t0 = time.perf_counter()
    rows, outcomes = run_attack(target, attack_name, source, eps_grid, batches, sibling=twin, params=cfg.params,
                                seed=seed, database=database, on_row=on_row)
    seconds = time.perf_counter() - t0
    diagnostics = gradient_cosine(target, batches[:1]) if cfg.diagnostics and target.handle is not None else {}
    return {"checkpoint": str(checkpoint), "rule": target.checkpoint["rule"], "attack": attack_name,
            "source": source, "metric": target.task.attack_metric, "rows": rows, "diagnostics": diagnostics,
            "seconds": seconds, "seed": seed, "outcomes": outcomes}


def write_outcomes(outcomes: pl.DataFrame, path: str | Path) -> Path:
    """The per-image table as parquet, written to a temporary name and renamed (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    outcomes.write_parquet(tmp)
    tmp.replace(path)
    return path
