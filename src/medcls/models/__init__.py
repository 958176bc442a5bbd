"""CNNs as published: AlexNet, VGG, GoogLeNet / Inception v2, built by name.

>>> from medcls.models import create_model
>>> model = create_model("vgg16_bn", num_classes=2, in_channels=1, input_size=28)
>>> volume = create_model("vgg11_bn_acs", num_classes=2, in_channels=1, input_size=28)  # (N, 1, 28, 28, 28)
"""

from medcls.models import alexnet as _alexnet  # noqa: F401  (registers)
from medcls.models import googlenet as _googlenet  # noqa: F401
from medcls.models import vgg as _vgg  # noqa: F401
from medcls.models._base import AUX_WEIGHT, AuxOutputs, ClassifierModel, LocalResponseNorm, model_loss
from medcls.models._registry import create_model, list_models, register_model
from medcls.models.stats import count_flops, count_params, model_stats
from medcls.models.volume import VOLUME_MODES, base_name, register_volume_variants, volume_name

register_volume_variants(list_models())  # NAME_acs and NAME_3d for every 2-D model

__all__ = ["create_model", "list_models", "register_model", "model_loss", "AuxOutputs", "ClassifierModel",
           "LocalResponseNorm", "AUX_WEIGHT", "count_params", "count_flops", "model_stats", "VOLUME_MODES",
           "base_name", "volume_name"]
