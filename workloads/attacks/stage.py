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
from typing import Annotated

import polars as pl
from pydantic import Field, model_validator

from workloads.attacks.run import gradient_cosine, run_attack, validate
from workloads.errors import ConfigError
from workloads.settings import Count, Device, Invalid, Limit, Section, Seed
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
    images: list[Annotated[int, Field(ge=0)]] | None = None
    """Attack only these test images (positions in the test split, as in the outcome table's `image`); null: the
    first n. The convergence re-run uses it for the images every other attack left robust."""


class ConvergeSettings(Section):
    """The convergence re-run (docs/evaluation.md, "Convergence"): after every attack on a classifier, one more
    exact-gradient attack with more steps, restarts and a margin loss (which does not saturate the way
    cross-entropy does on confident models), on the images all of them left robust at the primary budget. A cell
    whose worst case falls below its interval under it is "attack not converged"."""

    attack: str = "apgd"
    """A white-box classification attack (registered name)."""
    params: dict = {"loss": "dlr", "steps": 100, "restarts": 2}
    """Its parameters: stronger than the grid's (APGD-DLR, 100 steps, 2 restarts by default)."""
    batch_size: Count = 250
    """Images per batch."""

    @model_validator(mode="after")
    def _known(self) -> ConvergeSettings:
        from workloads.attacks.registry import get_attack

        try:
            spec = get_attack(self.attack)
        except ConfigError as exc:
            raise Invalid("attack", str(exc)) from None
        if spec.family != "gradient":
            raise Invalid("attack", f"{self.attack!r} is a {spec.family} attack; the re-run needs a white-box "
                          "classification attack with an exact gradient (apgd, pgd)")
        self.params = spec.parse(self.params, "converge.params").model_dump()
        return self


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
    n = cfg.n if cfg.images is None else max(cfg.images, default=-1) + 1
    batches = list(make_reader(tc, test_split, tc.data.target_classes, n, False, cfg.batch_size, seed))
    if cfg.images is not None:
        batches = _select(batches, cfg.images, cfg.batch_size)
    database = None
    if target.task.kind == "hashing":
        limit = cfg.db_limit if cfg.db_limit is not None else tc.data.db_limit
        database = make_reader(tc, db_split, tc.data.target_classes, limit, False, 500, seed)
    t0 = time.perf_counter()
    rows, outcomes = run_attack(target, attack_name, source, eps_grid, batches, sibling=twin, params=cfg.params,
                                seed=seed, database=database, on_row=on_row)
    seconds = time.perf_counter() - t0
    if cfg.images is not None:  # the table's `image` is the position in what was attacked: back to the split's
        outcomes = outcomes.with_columns(pl.col("image").replace_strict(dict(enumerate(cfg.images)),
                                                                        return_dtype=pl.Int32)).sort("eps", "image")
    diagnostics = gradient_cosine(target, batches[:1]) if cfg.diagnostics and target.handle is not None else {}
    return {"checkpoint": str(checkpoint), "rule": target.checkpoint["rule"], "attack": attack_name,
            "source": source, "metric": target.task.attack_metric, "rows": rows, "diagnostics": diagnostics,
            "seconds": seconds, "seed": seed, "outcomes": outcomes}


def _select(batches: list, images: list[int], batch_size: int) -> list:
    import torch

    if not images:
        raise ConfigError("images: the list is empty; give at least one test image, or null for the first n")
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if max(images) >= len(x):
        raise ConfigError(f"images: {max(images)} is past the end of the test split ({len(x)} images)")
    index = torch.tensor(images)
    x, y = x[index], y[index]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def write_outcomes(outcomes: pl.DataFrame, path: str | Path) -> Path:
    """The per-image table as parquet, written to a temporary name and renamed (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    outcomes.write_parquet(tmp)
    tmp.replace(path)
    return path
