"""Datasets: source adapters -> WebDataset shards + manifest (`prepare`), and the shard reader (`ShardReader`).

Imports neither Ray nor MLflow.
"""

from workloads.datasets.manifest import Manifest, load_manifest
from workloads.datasets.prepare import prepare
from workloads.datasets.reader import ShardReader
from workloads.datasets.sources import available_sources, get_source
from workloads.errors import DataError

__all__ = ["DataError", "Manifest", "ShardReader", "available_sources", "get_source", "load_manifest", "prepare"]
