"""Tests of the model table and `models.build`."""

import ml_collections
import pytest

from big_vision_like import config as config_lib
from big_vision_like import models
from big_vision_like.models import resnet
from big_vision_like.models import two_towers
from big_vision_like.models import vit


def test_table_maps_names_to_the_model_classes():
  assert models.MODELS == {
      "vit": vit.ViT, "bit": resnet.BiT, "resnet": resnet.ResNet,
      "two_towers": two_towers.TwoTowers}


def test_build_passes_config_fields_to_the_model():
  config = ml_collections.ConfigDict(
      dict(variant="S/16", num_classes=10, pool_type="map", scan=True))
  model = models.build("vit", config)
  assert isinstance(model, vit.ViT)
  assert (model.variant, model.num_classes, model.pool_type, model.scan) == (
      "S/16", 10, "map", True)
  assert models.build("bit", {"depth": 101, "width": 3}).width == 3
  assert models.build("resnet", {}).depth == 50


def test_unknown_model_name_fails_naming_the_closest_one():
  with pytest.raises(config_lib.ConfigError,
                     match="Unknown model 'resnte'. Did you mean 'resnet'?"):
    models.build("resnte", {})


@pytest.mark.parametrize("name,kwargs,key,hint", [
    ("vit", {"variant": "B/16", "pool": "tok"}, "model.pool", "pool_type"),
    ("vit", {"num_class": 10}, "model.num_class", "num_classes"),
    ("bit", {"widht": 2}, "model.widht", "width"),
    ("resnet", {"zero_init_lst": False}, "model.zero_init_lst",
     "zero_init_last"),
])
def test_unknown_model_field_fails_naming_the_closest_one(name, kwargs, key,
                                                          hint):
  with pytest.raises(config_lib.ConfigError,
                     match=f"'{key}'. Did you mean '{hint}'"):
    models.build(name, kwargs)


def test_bad_field_values_fail_at_build_time():
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'So400m'"):
    models.build("vit", {"variant": "So400/14"})
  with pytest.raises(config_lib.ConfigError, match="BiT depth 34"):
    models.build("bit", {"depth": 34})
