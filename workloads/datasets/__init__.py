"""Datasets: adapters (one per original format) -> WebDataset shards + manifest (`prepare`); the shard reader.

Imports neither Ray nor MLflow.
"""

from workloads.datasets.adapters import available_adapters, get_adapter
from workloads.datasets.manifest import Manifest, load_manifest
from workloads.datasets.prepare import prepare
from workloads.datasets.reader import ShardReader
from workloads.errors import DataError

__all__ = ["DataError", "Manifest", "ShardReader", "available_adapters", "get_adapter", "load_manifest", "prepare"]
