import torchvision

from workloads.backbones.base import BackboneSpec
from workloads.backbones.registry import register_backbone

register_backbone(BackboneSpec(
    name="vgg16",
    factory=lambda n: torchvision.models.vgg16(weights=None, num_classes=n),
    head_path="classifier.6",
    min_size=32,  # five 2x2 max-pools: 32 px ends at 1x1, which the adaptive pool repeats to 7x7
    imagenet_weights="VGG16_Weights.IMAGENET1K_V1",
))
