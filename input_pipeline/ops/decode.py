"""Decoding ops: encoded image bytes to uint8 RGB [height, width, 3].

`decode` reads JPEG, PNG, GIF (first frame), BMP and WebP, and turns
grayscale, grayscale+alpha, RGBA, CMYK and palette images into RGB (alpha is
dropped). TF's BMP decoder ignores the colour table of palette BMPs (1, 2, 4
and 8 bits per pixel), so those are decoded here with plain TF ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from input_pipeline.ops import general
from input_pipeline.ops import image as image_ops
from input_pipeline.ops.general import Op


def _little_endian(header: tf.Tensor, offset: int, nbytes: int) -> tf.Tensor:
  """The unsigned little-endian int at `header[offset:offset + nbytes]`."""
  b = tf.cast(header[offset:offset + nbytes], tf.int64)
  return tf.reduce_sum(b * (256 ** tf.range(nbytes, dtype=tf.int64)))


def _bmp_bits_per_pixel(contents: tf.Tensor) -> tf.Tensor:
  """Bits per pixel of a BMP file, or 24 for anything that is not a BMP."""
  def _bits():
    header = tf.io.decode_raw(tf.strings.substr(contents, 0, 30), tf.uint8)
    return _little_endian(header, 28, 2)

  is_bmp = tf.equal(tf.strings.substr(contents, 0, 2), b"BM")
  return tf.cond(is_bmp, _bits, lambda: tf.constant(24, tf.int64))


def _decode_palette_bmp(contents: tf.Tensor) -> tf.Tensor:
  """Decodes an uncompressed 1/2/4/8-bit palette BMP to uint8 RGB."""
  header = tf.io.decode_raw(tf.strings.substr(contents, 0, 54), tf.uint8)
  data_offset = _little_endian(header, 10, 4)
  dib_size = _little_endian(header, 14, 4)
  width = _little_endian(header, 18, 4)
  height = _little_endian(header, 22, 4)
  height = tf.where(height >= 2**31, height - 2**32, height)  # Signed.
  bpp = _little_endian(header, 28, 2)
  compression = _little_endian(header, 30, 4)
  num_colors = _little_endian(header, 46, 4)
  num_colors = tf.where(num_colors == 0, 2**bpp, num_colors)
  tf.debugging.assert_equal(
      compression, tf.constant(0, tf.int64),
      message="decode: compressed (RLE) palette BMPs are not supported.")

  palette = tf.io.decode_raw(
      tf.strings.substr(contents, 14 + dib_size, 4 * num_colors), tf.uint8)
  palette = tf.reverse(tf.reshape(palette, [-1, 4])[:, :3], [1])  # BGRx->RGB.

  rows = tf.abs(height)
  stride = (width * bpp + 31) // 32 * 4  # Rows are padded to 4 bytes.
  raw = tf.io.decode_raw(
      tf.strings.substr(contents, data_offset, stride * rows), tf.uint8)
  raw = tf.reshape(tf.cast(raw, tf.int64), [rows, stride, 1])
  # Unpack the pixels of each byte, most significant bits first.
  per_byte = 8 // bpp
  shifts = 8 - bpp * (tf.range(per_byte, dtype=tf.int64) + 1)
  index = tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(raw, shifts), 2**bpp - 1)
  index = tf.reshape(index, [rows, stride * per_byte])[:, :width]
  # Positive height: rows are stored bottom-up.
  index = tf.cond(height > 0, lambda: tf.reverse(index, [0]), lambda: index)
  return tf.gather(palette, index)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Already decoded uint8 [h, w, 1|2|3|4] image to [h, w, 3]."""
  channels = image.shape[-1]
  if channels in (1, 2):  # Grayscale, maybe with alpha.
    return tf.image.grayscale_to_rgb(image[..., :1])
  if channels == 4:
    return image[..., :3]
  return image


def decode_image(contents: tf.Tensor, precise: bool = False) -> tf.Tensor:
  """Decodes encoded image bytes (a scalar string) to uint8 [h, w, 3]."""
  if contents.dtype != tf.string:  # Already decoded (e.g. by TFDS).
    return _to_rgb(contents)

  def _jpeg():
    # decode_jpeg directly: decode_image's format dispatch costs more per
    # image. The accurate integer DCT gives PIL's pixels.
    return tf.io.decode_jpeg(
        contents, channels=3, dct_method="INTEGER_ACCURATE" if precise else "")

  def _other():
    return tf.cond(_bmp_bits_per_pixel(contents) <= 8,
                   lambda: _decode_palette_bmp(contents),
                   lambda: tf.io.decode_image(contents, 3,
                                              expand_animations=False))

  image = tf.cond(tf.io.is_jpeg(contents), _jpeg, _other)
  image.set_shape([None, None, 3])
  return image


def decode(precise: bool = False, key: str = "image") -> Op:
  """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 RGB [h, w, 3].

  Args:
    precise: decode JPEGs with the accurate integer DCT, which gives the same
      pixels as PIL (the default fast DCT differs by a few levels).
    key: the image key.

  Returns:
    The op.
  """
  return general.on_key(lambda x: decode_image(x, precise), key)


def decode_jpeg_and_inception_crop(
    size: int | Sequence[int] | None = None, area_min: float = 5,
    area_max: float = 100, ratio_min: float = 0.75, ratio_max: float = 1.33,
    method: str = "bilinear", antialias: bool = False,
    key: str = "image") -> Op:
  """`decode|inception_crop(...)` that decodes only the crop of a JPEG.

  tf.image.decode_and_crop_jpeg skips the DCT work outside the crop. Other
  formats are decoded fully, then cropped. The crop box equals the one
  `inception_crop` draws for the same image size and rng; the pixels equal
  decode-then-crop up to chroma upsampling at the crop border for JPEGs with
  chroma subsampling (exactly equal for 4:4:4 JPEGs).

  Args:
    size: resize the crop to this (int or [h, w]); None keeps the crop size.
    area_min: smallest crop area, in percent of the image.
    area_max: largest crop area, in percent of the image.
    ratio_min: smallest aspect ratio (width / height).
    ratio_max: largest aspect ratio.
    method: resize method (see image.RESIZE_METHODS).
    antialias: see tf.image.resize.
    key: the image key (encoded bytes in, uint8 RGB out).

  Returns:
    The op.
  """
  out_size = general.pair(size) if size else None
  image_ops.check_resize_method(method)
  box_args = (area_min, area_max, ratio_min, ratio_max)

  def _fn(contents, rng):
    def _jpeg():
      shape = tf.image.extract_jpeg_shape(contents)
      offset, crop = image_ops.sample_inception_box(shape, rng, *box_args)
      return tf.image.decode_and_crop_jpeg(
          contents, tf.concat([offset, crop], 0), channels=3)

    def _other():
      image = decode_image(contents)
      offset, crop = image_ops.sample_inception_box(tf.shape(image), rng,
                                                    *box_args)
      return tf.image.crop_to_bounding_box(image, offset[0], offset[1],
                                           crop[0], crop[1])

    image = tf.cond(tf.io.is_jpeg(contents), _jpeg, _other)
    image.set_shape([None, None, 3])
    if out_size:
      image = image_ops.resize_image(image, out_size, method, antialias)
    return image

  return general.on_key_random(_fn, key)
