"""The attack stage as a plain function over checkpoints (what `harness stage attack` and the orchestrator call).

    result = attack_checkpoint("runs/ft-frsf.pt", "pgd", "exact", [0, .05, .1], {"n": 500},
                               sibling="runs/ft-bp.pt")

The images are n of the target test split, the same for every model: the first n in shard order, or (`sample:
random`) n drawn without replacement from the whole split with a fixed seed. The result's
`outcomes` is the per-image table (polars; `run_attack` says what it holds): `write_outcomes` stores it next to
the result as parquet, the rest of the result is plain JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import Field, SerializeAsAny, WithJsonSchema, model_validator

from workloads.attacks.base import require_sibling
from workloads.attacks.registry import get_attack
from workloads.attacks.run import gradient_cosine, run_attack
from workloads.checkpoint import load_model
from workloads.datasets import load_manifest
from workloads.errors import ConfigError, Invalid
from workloads.inputs import make_reader, split_names
from workloads.settings import Count, Device, Limit, Section, Seed
from workloads.settings import validate as validate_settings


class AttackSample(Section):
    n: Count = 500
    """Test images attacked, the same for every model (`sample` says which)."""
    batch_size: Count = 250
    """Images per batch the attack crafts at once."""
    sample: Literal["first", "random"] = "first"
    """Which n: the first of the target test split in shard order, or drawn at random from all of it (seeded by
    `sample_seed`, never by the model's seed, so every model sees the same ones): a sample of the whole split, where
    the first n can sit far from it (a retrieval split's first queries, say)."""
    sample_seed: Annotated[int, Field(ge=0)] = 0
    """The seed of a random sample."""

    def keyed(self) -> dict:
        """How it picks its images, for a node's key: nothing where it takes the first n (keys made before the
        setting existed stay valid)."""
        return {} if self.sample == "first" else {"sample": self.sample, "sample_seed": self.sample_seed}


class AttackConfig(AttackSample):
    """One attack stage: which attack, with which gradient source, at which budgets, on which images, with which
    parameters. Checked once, by the attack's own declaration (`AttackSpec.check`), when it is made."""

    attack: str
    """A registered attack (`harness stage attack --attack` lists them)."""
    source: str | None = None
    """The gradient source of a white-box attack: rule, exact or transfer (query attacks take none)."""
    eps: list[float] = [0.0, 0.02, 0.05, 0.1, 0.2]
    """Budgets in the attack's norm, in [0, 1] pixel space."""
    params: SerializeAsAny[Section] = Section()
    """The attack's own parameters (checked by the attack), e.g. {steps: 50}."""
    db_limit: Limit = None
    """Hashing: database items ranked against (null: the model's own data setting)."""
    device: Device = "cpu"
    seed: Seed | None = None
    """Random starts and restarts (null: the checkpoint's seed)."""
    diagnostics: bool = True
    """Also measure the cosine between the rule's and the exact input gradient on the first batch."""
    images: list[Annotated[int, Field(ge=0)]] | None = None
    """Attack only these test images (positions in the test split, as in the outcome table's `image`); null: n of
    them as `sample` says. The convergence re-run uses it for the images every other attack left robust."""

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("attack"), str):
            spec = get_attack(data["attack"])
            eps = data.get("eps", cls.model_fields["eps"].default)
            eps, params = spec.check(None, data.get("source"), eps, data.get("params"))
            data = {**data, "eps": eps, "params": params}
        return data


RERUN_PARAMS = {"loss": "dlr", "steps": 100, "restarts": 2}


class RerunConfig(AttackConfig):
    """A convergence re-run node: its attack, and when its rounds stop (docs/evaluation.md, "Convergence")."""

    rounds: Annotated[int, Field(ge=1, le=100)] = 1
    """The most rounds; each attacks, with fresh random starts, the images the rounds before left robust."""
    stop_below: Annotated[float, Field(ge=0)] = 0.0
    """A round that breaks fewer images than this is the last: the attacks have converged."""


class ConvergeSettings(Section):
    """The convergence re-run (docs/evaluation.md, "Convergence"): after every attack on a classifier, one more
    exact-gradient attack with more steps, restarts and a margin loss (which does not saturate the way
    cross-entropy does on confident models), on the images all of them left robust at the primary budget, in
    rounds."""

    attack: str = "apgd"
    """A white-box classification attack (registered name)."""
    # always the attack's own model (the validator below parses it); the default is for the schema
    params: Annotated[SerializeAsAny[Section], WithJsonSchema({"type": "object"})] = RERUN_PARAMS
    """Its parameters, checked by the attack: stronger than the grid's (APGD-DLR, 100 steps, 2 restarts by
    default)."""
    batch_size: Count = 250
    """Images per batch."""
    rounds: Annotated[int, Field(ge=1, le=100)] = 3
    """The most rounds of the re-run, each with fresh random starts on the images the rounds before left robust;
    they stop once a round breaks fewer than delta/2 of the images (`verdicts.delta`), and a cell whose last round
    still broke more is "attack not converged"."""

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # not a mapping: the model's own error says what is wrong
        name = data.get("attack", "apgd")
        try:
            spec = get_attack(name)
        except ConfigError as exc:
            raise Invalid("attack", str(exc)) from None
        if spec.family != "gradient":
            raise Invalid("attack", f"{name!r} is a {spec.family} attack; the re-run needs a white-box "
                          "classification attack with an exact gradient (apgd, pgd)")
        return {**data, "params": spec.parse(data.get("params", RERUN_PARAMS), "converge.params")}


def attack_checkpoint(checkpoint: str | Path, attack_name: str, source: str | None, eps_grid: list[float],
                      config: dict | None = None, sibling: str | Path | None = None,
                      on_row: Callable[[dict], None] | None = None) -> dict:
    """`run_config` with an AttackConfig of these arguments and `config` (n, batch_size, params, ...)."""
    cfg = validate_settings(AttackConfig, {**(config or {}), "attack": attack_name, "source": source,
                                           "eps": eps_grid}, "attack-stage config")
    return run_config(cfg, checkpoint, sibling, on_row)


def run_config(cfg: AttackConfig, checkpoint: str | Path, sibling: str | Path | None = None,
               on_row: Callable[[dict], None] | None = None) -> dict:
    """Attack the fine-tuned `checkpoint` as `cfg` says (`sibling`: the baseline twin a transfer attack crafts on);
    the result's rows, diagnostics and per-image `outcomes` (polars)."""
    require_sibling(cfg.source, sibling)
    spec = get_attack(cfg.attack)
    target = load_model(checkpoint, cfg.device)
    spec.check_task(target.task.kind)  # the rest was checked when cfg was made; the task is known only now
    twin = load_model(sibling, cfg.device) if cfg.source == "transfer" else None
    tc = target.config
    seed = tc.seed if cfg.seed is None else cfg.seed
    _, test_split, db_split = split_names(load_manifest(tc.data.root))
    images = cfg.images
    if images is None and cfg.sample == "random":
        batches = list(make_reader(tc, test_split, tc.data.target_classes, None, False, cfg.batch_size, seed))
        images = _drawn(sum(len(y) for _, y in batches), cfg)
    else:
        n = cfg.n if images is None else max(images, default=-1) + 1
        batches = list(make_reader(tc, test_split, tc.data.target_classes, n, False, cfg.batch_size, seed))
    if images is not None:
        batches = _select(batches, images, cfg.batch_size)
    database = None
    if target.task.kind == "hashing":
        limit = cfg.db_limit if cfg.db_limit is not None else tc.data.db_limit
        database = make_reader(tc, db_split, tc.data.target_classes, limit, False, 500, seed)
    t0 = time.perf_counter()
    rows, outcomes = run_attack(target, spec, cfg.source, cfg.eps, cfg.params, batches, sibling=twin, seed=seed,
                                 database=database, on_row=on_row)
    seconds = time.perf_counter() - t0
    if images is not None:  # the table's `image` is the position in what was attacked: back to the split's
        outcomes = outcomes.with_columns(pl.col("image").replace_strict(dict(enumerate(images)),
                                                                        return_dtype=pl.Int32)).sort("eps", "image")
    diagnostics = gradient_cosine(target, batches[:1]) if cfg.diagnostics and target.handle is not None else {}
    return {"checkpoint": str(checkpoint), "rule": target.checkpoint["rule"], "attack": cfg.attack,
            "source": cfg.source, "metric": target.task.attack_metric, "rows": rows, "diagnostics": diagnostics,
            "seconds": seconds, "seed": seed, "outcomes": outcomes}


def _drawn(size: int, cfg: AttackSample) -> list[int]:
    """`cfg.n` of a split's `size` positions, drawn without replacement with `cfg.sample_seed`, in order."""
    import numpy as np

    if cfg.n > size:
        raise ConfigError(f"n: {cfg.n} images asked for, and the test split has {size} of the target classes; "
                          "lower n")
    return sorted(int(i) for i in np.random.default_rng(cfg.sample_seed).choice(size, cfg.n, replace=False))


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
