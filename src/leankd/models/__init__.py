"""Model construction for leankd: registry names, torchvision/timm/python: hub names, local weights."""

from leankd.models.registry import create_model, infer_num_classes, list_models, load_weights, register_model

# Imported for their @register_model side effects.
from leankd.models import cifar_resnet, mobilenetv2, vgg, wrn  # noqa: E402,F401  isort: skip
from leankd.models import crnn, dscnn, lm, seq2seq, text_rnn  # noqa: E402,F401  isort: skip

__all__ = ["register_model", "create_model", "list_models", "load_weights", "infer_num_classes"]
