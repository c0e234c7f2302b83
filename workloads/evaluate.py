"""The evaluate stage: a fine-tuned model's clean metrics and what its rule does to the gradient.

    result = evaluate_checkpoint("runs/ft-frsf.pt", {"diagnostic_images": 250})
    result["metrics"]       # top-1 (classification) or mAP@k (hashing) on the whole target test split
    result["diagnostics"]   # angle(B, W) per layer and its mean; cosine of the rule's and the exact input gradient

`harness stage evaluate` and the DAG's evaluate nodes both call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from workloads.names import Metric
from workloads.settings import Section, validate


class EvaluateSettings(Section):
    diagnostic_images: Annotated[int, Field(ge=1, le=10**9)] = 250
    """Test images the rule-vs-exact input-gradient cosine is measured on."""


def evaluate_checkpoint(checkpoint: str | Path, settings: dict | EvaluateSettings | None = None,
                        device: str | None = None) -> dict:
    """{"metrics", "diagnostics"} of a fine-tuned checkpoint, on `device` (default: the one it was trained for)."""
    from workloads.attacks import gradient_cosine
    from workloads.train import evaluate_loaded, load_model, make_reader, resolve_device, split_names

    s = settings if isinstance(settings, EvaluateSettings) else validate(EvaluateSettings, settings or {},
                                                                          "evaluate settings")
    loaded = load_model(checkpoint, device)
    cfg, dev = loaded.config, resolve_device(device or loaded.config.device)
    metrics = evaluate_loaded(loaded, dev)
    _, test_split, _ = split_names(cfg.data.root)
    n = s.diagnostic_images
    batches = list(make_reader(cfg, test_split, cfg.data.target_classes, n, False, min(n, 250), cfg.seed))
    layers = loaded.handle.diagnostics()
    angles = [r["angle_deg"] for r in layers]
    return {"metrics": metrics, "diagnostics": {**gradient_cosine(loaded, batches),
                                                Metric.ANGLE: sum(angles) / len(angles), "layers": layers}}
