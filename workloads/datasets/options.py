"""How a stage reads one prepared dataset: the `data` section of a stage config and of each DAG dataset."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from workloads.errors import Invalid
from workloads.settings import Limit, Section

ClassIndex = Annotated[int, Field(ge=0, le=10**6)]


class DataOptions(Section):
    root: Annotated[str, Field(min_length=1)]
    """Required: the folder `harness data prepare` wrote (shards and manifest.json)."""
    source_classes: Annotated[list[ClassIndex] | None, Field(min_length=1)] = None
    """Classes BP pre-training sees (null: all); disjoint from target_classes for a transfer split."""
    target_classes: Annotated[list[ClassIndex] | None, Field(min_length=1)] = None
    """Classes fine-tuning, evaluation and attacks see, with a new head (null: all)."""
    pad: Annotated[int, Field(ge=0, le=512)] = 0
    """Zero padding per side, in pixels (Fashion-MNIST: 2, so 28 px become 32)."""
    image_size: Annotated[int | None, Field(ge=1, le=4096)] = None
    """Side the images are resized to (null: their own, or the backbone's smallest input)."""
    train_limit: Limit = None
    """Training images per stage (null: the whole split)."""
    test_limit: Limit = None
    """Test images evaluated (null: the whole split)."""
    db_limit: Limit = None
    """Retrieval database items ranked against (hashing; null: the whole database split)."""

    @model_validator(mode="after")
    def _disjoint(self) -> DataOptions:
        for key in ("source_classes", "target_classes"):
            value = getattr(self, key)
            if value is not None and len(set(value)) != len(value):
                raise Invalid(key, "a class is listed twice")
        if self.source_classes and self.target_classes and set(self.source_classes) & set(self.target_classes):
            raise Invalid("", "source_classes and target_classes overlap: a transfer split needs disjoint classes")
        return self
