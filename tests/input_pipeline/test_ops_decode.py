"""`decode` and `decode_jpeg_and_inception_crop` against PIL's decoders."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline.ops import decode as decode_ops
from input_pipeline.ops import image as image_ops


def _rgb(h=12, w=10):
  return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(pil_image, fmt, **kw):
  buf = io.BytesIO()
  pil_image.save(buf, fmt, **kw)
  return buf.getvalue()


def _decode(contents, **kw):
  return decode_ops.decode(**kw)({"image": tf.constant(contents)})["image"]


# (PIL mode, format): every one must decode to PIL's .convert("RGB").
_LOSSLESS = [
    ("RGB", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"),
    ("P", "PNG"), ("1", "PNG"), ("P", "GIF"), ("RGB", "BMP"), ("L", "BMP"),
    ("P", "BMP"), ("RGBA", "BMP"), ("1", "BMP"), ("RGB", "WEBP"),
]


@pytest.mark.parametrize("mode,fmt", _LOSSLESS)
def test_decode_lossless_formats_equal_pil_rgb(mode, fmt):
  kw = {"lossless": True} if fmt == "WEBP" else {}
  data = _encode(Image.fromarray(_rgb()).convert(mode), fmt, **kw)
  image = _decode(data)
  assert image.dtype == tf.uint8 and image.shape == (12, 10, 3)
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  np.testing.assert_array_equal(image.numpy(), want)


@pytest.mark.parametrize("bits,top_down", [(1, False), (4, False), (4, True)])
def test_decode_low_bit_palette_bmp_from_a_handmade_file(bits, top_down):
  # PIL writes no 4-bit BMPs; build them by hand, with odd-sized rows.
  h, w = 5, 7
  rng = np.random.default_rng(bits)
  palette = rng.integers(0, 256, (2**bits, 3), dtype=np.uint8)
  index = rng.integers(0, 2**bits, (h, w))
  stride = (w * bits + 31) // 32 * 4
  rows = bytearray()
  for row in index if top_down else index[::-1]:
    packed = 0
    for v in row:
      packed = packed << bits | int(v)
    packed <<= stride * 8 - w * bits
    rows += packed.to_bytes(stride, "big")
  table = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
  offset = 14 + 40 + len(table)
  data = (b"BM" + (offset + len(rows)).to_bytes(4, "little") + bytes(4) +
          offset.to_bytes(4, "little") + (40).to_bytes(4, "little") +
          w.to_bytes(4, "little") +
          (h if not top_down else 2**32 - h).to_bytes(4, "little") +
          (1).to_bytes(2, "little") + bits.to_bytes(2, "little") + bytes(24) +
          table + bytes(rows))
  image = _decode(data).numpy()
  np.testing.assert_array_equal(image, palette[index])
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  np.testing.assert_array_equal(image, want)


def test_decode_gif_keeps_the_first_frame():
  frames = [Image.fromarray(_rgb()).convert("P"),
            Image.fromarray(255 - _rgb()).convert("P")]
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
  want = np.asarray(frames[0].convert("RGB"))
  np.testing.assert_array_equal(_decode(buf.getvalue()).numpy(), want)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_decode_jpeg_precise_equals_pil_and_fast_is_close(mode):
  data = _encode(Image.fromarray(_rgb(16, 16)).convert(mode), "JPEG",
                 quality=90)
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
  precise = _decode(data, precise=True).numpy().astype(int)
  fast = _decode(data).numpy().astype(int)
  assert precise.shape == (16, 16, 3)
  assert np.abs(precise - want).max() <= (0 if mode != "CMYK" else 2)
  assert np.abs(fast - want).max() <= 8


def test_decode_passes_through_decoded_images_as_rgb():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
  np.testing.assert_array_equal(_decode(gray).numpy(),
                                np.repeat(gray, 3, axis=-1))


def test_decode_works_inside_tf_data():
  data = _encode(Image.fromarray(_rgb()).convert("P"), "BMP")
  ds = tf.data.Dataset.from_tensors({"image": data}).map(decode_ops.decode())
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  np.testing.assert_array_equal(next(iter(ds))["image"].numpy(), want)


def _crop_both_ways(data, seed, **kw):
  rng = tf.constant([seed, 3], tf.int32)
  fused = decode_ops.decode_jpeg_and_inception_crop(**kw)(
      {"image": tf.constant(data), "_rng": rng})["image"]
  decoded = _decode(data)
  unfused = image_ops.inception_crop(**kw)(
      {"image": decoded, "_rng": rng})["image"]
  return fused.numpy(), unfused.numpy()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fused_decode_and_crop_equals_decode_then_inception_crop(fmt):
  # 4:4:4 JPEG: no chroma upsampling, so cropped decoding is exact.
  kw = {"subsampling": 0, "quality": 95} if fmt == "JPEG" else {}
  data = _encode(Image.fromarray(_rgb(40, 48)), fmt, **kw)
  shapes = set()
  for seed in range(6):
    fused, unfused = _crop_both_ways(data, seed, area_min=20)
    np.testing.assert_array_equal(fused, unfused)
    shapes.add(fused.shape)
  assert len(shapes) > 1
  fused, unfused = _crop_both_ways(data, 0, size=16)
  assert fused.shape == (16, 16, 3)
  np.testing.assert_array_equal(fused, unfused)
