from workloads.datasets.adapters import cifar, fashion_mnist, hashlist, imagefolder, webdataset  # noqa: F401  (register)
from workloads.datasets.adapters.base import Adapter, Sample
from workloads.datasets.adapters.registry import available_adapters, get_adapter, register_adapter

__all__ = ["Sample", "Adapter", "available_adapters", "get_adapter", "register_adapter"]
