"""Backbones: torchvision AlexNet, VGG-16, ResNet-18 with normalisation inside the model and a replaceable head."""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.backbones import alexnet, resnet18, vgg16  # noqa: F401  (each registers itself)
from workloads.backbones.base import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, Network, Normalize
from workloads.backbones.registry import available_backbones, get_backbone, register_backbone

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "BackboneSpec", "Network", "Normalize", "available_backbones", "build",
    "get_backbone", "input_size", "register_backbone", "imagenet_weights_file",
]


def input_size(name: str, native: int) -> int:
    """The side the backbone is fed for a dataset whose images are `native` px (small inputs are resized up)."""
    spec = get_backbone(name)
    return native if native >= spec.min_size else max(spec.min_size, 2 * native)


def imagenet_weights_file(name: str) -> Path | None:
    """torchvision's ImageNet checkpoint for `name` if it is in the local torch hub cache (nothing is downloaded)."""
    import torchvision

    spec = get_backbone(name)
    enum_name, _, member = spec.imagenet_weights.partition(".")
    url = getattr(getattr(torchvision.models, enum_name), member).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def build(name: str, num_outputs: int, weights: str | Path | None = None) -> Network:
    """A backbone with a fresh `num_outputs`-way head.

    weights: None (random init), "imagenet" (torchvision's weights from the local hub cache), or a file holding a
    state dict (a torchvision checkpoint, or one saved by this package). A missing file is an error, never a
    silent random init. The head is always new.
    """
    spec = get_backbone(name)
    net = Network(spec.factory(1000), spec.head_path)
    if weights is not None:
        path = imagenet_weights_file(name) if weights == "imagenet" else Path(weights)
        if path is None:
            raise FileNotFoundError(
                f"ImageNet weights for {name} are not in the torch hub cache ({torch.hub.get_dir()}/checkpoints); "
                "download them once where there is network, pass a weights file, or run the pretrain stage"
            )
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} for backbone {name} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        load_body_weights(net, state)
    net.replace_head(num_outputs)
    return net


def load_body_weights(net: Network, state: dict) -> None:
    """Load everything but the head from a torchvision state dict or a Network state dict."""
    if any(k.startswith("body.") for k in state):
        state = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    head = net.head_path + "."
    body_state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = net.body.load_state_dict(body_state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")
