"""The model zoo: `config.model_name` picks a class, `config.model` its fields.

Every model is a linen Module called as `model.apply(variables, images,
train=...)` returning `(logits, out)`, with `out` a dict of named
intermediates ("stem", "pre_logits", "logits", ...); the two-tower model
takes `(images, texts)` and returns `(zimg, ztxt, out)` (see two_towers.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from big_vision_like import config as config_lib
from big_vision_like.models import resnet
from big_vision_like.models import two_towers
from big_vision_like.models import vit

MODELS = {
    "vit": vit.ViT,
    "bit": resnet.BiT,
    "resnet": resnet.ResNet,
    "two_towers": two_towers.TwoTowers,
}


def build(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
  """Instantiates `MODELS[name](**kwargs)`.

  Raises:
    ConfigError: for an unknown model name or field, naming the closest valid
      choice, or for an invalid field value (e.g. an unknown ViT variant).
  """
  model_cls = config_lib.lookup(MODELS, name, "model")
  config_lib.check_kwargs(model_cls, kwargs, "model")
  return model_cls(**kwargs)
