"""The preprocessing ops the pp mini-language can name.

`OPS` maps each op name to its factory: `OPS["resize"](224)` returns an `Op`,
a function from one example (a dict of tensors) to a new dict. See
`input_pipeline.preprocess` for the spec syntax and `general` for the op and
randomness conventions.
"""

from __future__ import annotations

from collections.abc import Callable

from input_pipeline.ops import augment
from input_pipeline.ops import decode
from input_pipeline.ops import general
from input_pipeline.ops import image
from input_pipeline.ops import text
from input_pipeline.ops.general import Op

OPS: dict[str, Callable[..., Op]] = {
    # Decoding.
    "decode": decode.decode,
    "decode_jpeg_and_inception_crop": decode.decode_jpeg_and_inception_crop,
    # Geometry.
    "resize": image.resize,
    "resize_small": image.resize_small,
    "resize_long": image.resize_long,
    "central_crop": image.central_crop,
    "random_crop": image.random_crop,
    "inception_crop": image.inception_crop,
    "flip_lr": image.flip_lr,
    # Value ranges.
    "value_range": image.value_range,
    "vgg_value_range": image.vgg_value_range,
    "normalize": image.vgg_value_range,
    # Augmentation.
    "randaug": augment.randaug,
    "autoaugment": augment.autoaugment,
    "random_erasing": augment.random_erasing,
    "color_jitter": augment.color_jitter,
    # Labels and dict plumbing.
    "onehot": general.onehot,
    "keep": general.keep,
    "drop": general.drop,
    "copy": general.copy,
    # Text.
    "lower": text.lower,
    "tokenize": text.tokenize,
    "captions": text.captions,
}

__all__ = ["OPS", "Op"]
