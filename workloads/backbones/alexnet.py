import torchvision

from workloads.backbones.base import BackboneSpec
from workloads.backbones.registry import register_backbone

register_backbone(BackboneSpec(
    name="alexnet",
    factory=lambda n: torchvision.models.alexnet(weights=None, num_classes=n),
    head_path="classifier.6",
    # Its 11x11 stride-4 stem and three 3x3 stride-2 max-pools need at least 63 px. Smaller images are resized up
    # in the reader (32 -> 64 px: the architecture and ImageNet weights stay intact, at 4x the pixels to compute).
    min_size=63,
    imagenet_weights="AlexNet_Weights.IMAGENET1K_V1",
    note="inputs below 63 px are resized up to 64 px by the reader (4x the compute of 32 px)",
))
