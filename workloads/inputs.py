"""What a stage reads: the splits of a prepared dataset, as batches at the size its backbone takes.

    train, test, database = split_names(load_manifest(root))
    batches = make_reader(cfg, test, cfg.data.target_classes, cfg.data.test_limit, False, 256, cfg.seed)

Hashing datasets (NUS-WIDE and the like, `harness data prepare hashlist`) come as train/query/database; the others
as train/test, with the training split doubling as the retrieval database.
"""

from __future__ import annotations

from workloads import backbones
from workloads.config import StageConfig
from workloads.datasets import Manifest, ShardReader, load_manifest


def split_names(manifest: Manifest) -> tuple[str, str, str]:
    """(train, test, database) split names of a prepared dataset."""
    splits = manifest.splits
    test = "test" if "test" in splits else ("query" if "query" in splits else "val")
    db = "database" if "database" in splits else "train"
    return "train", test, db


def make_reader(cfg: StageConfig, split: str, classes, limit, shuffle: bool, batch_size: int, seed: int,
                holdout: float = 0.0, part: str = "all") -> ShardReader:
    """Batches of `split` at the side the config's backbone takes (padded, resized up where it is too small)."""
    data = cfg.data
    manifest = load_manifest(data.root)
    fixed = manifest.image.get("height")
    native = (fixed or data.image_size or 224) + 2 * data.pad
    size = data.image_size or backbones.input_size(cfg.backbone, native)
    resize = None if (fixed is not None and size == native) else size
    return ShardReader(data.root, split, batch_size=batch_size, shuffle=shuffle, seed=seed, classes=classes,
                       limit=limit, pad=data.pad, image_size=resize, channels=3, holdout=holdout, part=part)
