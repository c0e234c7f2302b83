from workloads.datasets.sources import cifar, fashion_mnist, hashlist, imagefolder, webdataset  # noqa: F401  (register)
from workloads.datasets.sources.base import Sample, Source
from workloads.datasets.sources.registry import available_sources, get_source, register_source

__all__ = ["Sample", "Source", "available_sources", "get_source", "register_source"]
