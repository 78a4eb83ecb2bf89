"""Model zoo: the papers' architectures, registered by name and binarized from a config.

==================  ========  ===========  =======  =====================================
name                dataset   input        params   binary layers (via ``binarize=``)
==================  ========  ===========  =======  =====================================
resnet20_cifar      cifar10   3x32x32      0.27M    18 3x3 convs in Bi-Real-style blocks
resnet18_cifar      cifar10   3x32x32      11.01M   16 3x3 convs
vgg_small_cifar     cifar10   3x32x32      4.66M    conv1..conv5
resnet18_imagenet   imagenet  3x224x224    11.69M   16 3x3 convs (1x1 downsample FP)
resnet34_imagenet   imagenet  3x224x224    21.81M   32 3x3 convs (1x1 downsample FP)
vit_tiny            imagenet  3x224x224    5.72M    qkv, proj, fc1, fc2 of 12 blocks
mlp                 any       3x8x8        0.02M    hidden Linear layers
segnet_resnet20     scenes    3x64x64      0.32M    22 3x3 convs (encoder + U-Net decoder)
centernet_resnet20  scenes    3x64x64      0.33M    20 3x3 convs (encoder + upsampling block)
==================  ========  ===========  =======  =====================================

Models are plain float PyTorch modules; `create_model(name, binarize=config)` converts them
with `biper.binarize_`, keeping the stem and classifier (``keep_first`` / ``keep_last``) and
each model's ``fp_patterns`` in full precision. Every model offers ``conv_bn_pairs()`` for
BatchNorm folding at deployment (see `biper.models.common`).

Example::

    >>> import torch
    >>> from biper import BinarizeConfig
    >>> from biper.models import create_model
    >>> model = create_model("resnet18_imagenet", binarize=BinarizeConfig(weight_quantizer="biper"))
    >>> len(model.binarize_report.converted), len(model.conv_bn_pairs())
    (16, 20)
"""

from . import centernet, mlp, resnet_cifar, resnet_imagenet, segnet, vgg, vit  # noqa: F401  (register the models)
from .common import BiperModel, PadShortcut
from .registry import ModelInfo, ModelSpec, create_model, list_models, model_info, register_model

__all__ = [
    "BiperModel",
    "ModelInfo",
    "ModelSpec",
    "PadShortcut",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
