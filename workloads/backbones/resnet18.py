import torchvision

from workloads.backbones.base import BackboneSpec
from workloads.backbones.registry import register_backbone

register_backbone(BackboneSpec(
    name="resnet18",
    factory=lambda n: torchvision.models.resnet18(weights=None, num_classes=n),
    head_path="fc",
    min_size=32,  # 5 stride-2 stages: 32 px ends at 1x1
    imagenet_weights="ResNet18_Weights.IMAGENET1K_V1",
))
