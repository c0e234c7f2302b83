"""The evaluate stage: a fine-tuned model's clean metrics and what its rule does to the gradient.

    result = evaluate_checkpoint("runs/ft-frsf.pt", {"diagnostic_images": 250})
    result["metrics"]       # top-1 (classification) or mAP@k (hashing) on the whole target test split
    result["diagnostics"]   # angle(B, W) per layer and its mean; cosine of the rule's and the exact input gradient

`harness stage evaluate` and the DAG's evaluate nodes both call it; fine-tuning scores its model with
`evaluate_loaded` before it saves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

from workloads.checkpoint import Loaded, load_model
from workloads.datasets import load_manifest
from workloads.inputs import make_reader, split_names
from workloads.names import Metric
from workloads.settings import Section, resolve_device, validate


class EvaluateSettings(Section):
    diagnostic_images: Annotated[int, Field(ge=1, le=10**9)] = 250
    """Test images the rule-vs-exact input-gradient cosine is measured on."""


class EvalMode(torch.nn.Module):
    """Runs a model in eval mode on `device` for batches that arrive on the CPU (bf16 autocast on CUDA)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(x.to(self.device)).float().cpu()


def evaluate_loaded(loaded: Loaded, device: torch.device) -> dict:
    """Clean metrics on the target test split: top-1 (classification) or mAP@k against the database (hashing)."""
    cfg, task, data = loaded.config, loaded.task, loaded.config.data
    _, test_split, db_split = split_names(load_manifest(data.root))
    test = make_reader(cfg, test_split, data.target_classes, data.test_limit, False, 256, cfg.seed)
    model = EvalMode(loaded.model, device)
    if task.kind == "hashing":
        db = make_reader(cfg, db_split, data.target_classes, data.db_limit, False, 256, cfg.seed)
        return task.evaluate(model, test, db)
    return task.evaluate(model, test)


def evaluate_checkpoint(checkpoint: str | Path, settings: dict | EvaluateSettings | None = None,
                        device: str | None = None) -> dict:
    """{"metrics", "diagnostics"} of a fine-tuned checkpoint, on `device` (default: the one it was trained for)."""
    from workloads.attacks import gradient_cosine

    s = settings if isinstance(settings, EvaluateSettings) else validate(EvaluateSettings, settings or {},
                                                                          "evaluate settings")
    loaded = load_model(checkpoint, device)
    cfg, dev = loaded.config, resolve_device(device or loaded.config.device)
    metrics = evaluate_loaded(loaded, dev)
    _, test_split, _ = split_names(load_manifest(cfg.data.root))
    n = s.diagnostic_images
    batches = list(make_reader(cfg, test_split, cfg.data.target_classes, n, False, min(n, 250), cfg.seed))
    layers = loaded.handle.diagnostics()
    angles = [r["angle_deg"] for r in layers]
    return {"metrics": metrics, "diagnostics": {**gradient_cosine(loaded, batches),
                                                Metric.ANGLE: sum(angles) / len(angles), "layers": layers}}
