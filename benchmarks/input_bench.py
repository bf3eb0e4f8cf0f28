"""Input pipeline throughput: ours (grain + TF ops) against plain tf.data.

  python benchmarks/input_bench.py [--threads N] [--batch_size 128] \\
      [--seconds 10] [--rounds 2] [--num_images 256]

Writes `num_images` JPEGs of ImageNet's typical size (sides drawn around
500x375, either orientation; colour gradients, blobs, ripples and pixel
noise, quality 90: near ImageNet's ~110 KB per image) into a temporary
ImageFolder, then times decode + Inception crop to 224 + flip + [-1, 1] on
the same files, the same batch size and the same number of threads:

  ours     ImageFolder source -> pipeline.make_train_iterator, with the fused
           "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1,1)"
           and the unfused "decode|inception_crop(224)|flip_lr|..." spec;
  tf.data  from_tensor_slices(files) -> read_file -> decode_and_crop_jpeg
           (fused) or decode_jpeg + crop (unfused) with the same stateless
           box sampler -> resize (back to uint8, rounded, as our resize
           does) -> flip -> [-1, 1] -> batch, map with AUTOTUNE parallelism
           on a private pool of `threads` threads, deterministic=False.

TF's own thread pools are set to `threads` too, and the process is pinned
to that many CPUs when it may use more, so "per core" is images/s divided by
`threads`. Also printed: images per CPU-second (process time, all threads),
which is less sensitive to other load on a shared machine. Each
configuration runs `rounds` times, interleaved; the best round counts (for
each figure on its own). ratio = ours / tf.data for the same ops; the
per-round ratios (and their median) pair the runs of one round, which are
back to back and so see the same load from other processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

SIZE = 224
FUSED = "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1,1)"
UNFUSED = "decode|inception_crop(224)|flip_lr|value_range(-1,1)"
AREA, RATIO = (0.05, 1.0), (0.75, 1.33)  # The ops' inception defaults.


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def write_images(folder: str, num: int, seed: int = 0) -> float:
  """Writes `num` JPEGs into folder/class_<k>/; returns their mean KB."""
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num):
    h, w = int(rng.normal(375, 40)), int(rng.normal(500, 50))
    if rng.random() < 0.25:
      h, w = w, h  # Some portrait images, as in ImageNet.
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((h, w, 3), np.float32)
    for c in range(3):  # A gradient and a few blobs per channel.
      gx, gy, base = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), (
          rng.uniform(60, 190))
      image[..., c] = base + gx * (x - w / 2) + gy * (y - h / 2)
      for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 90)
        image[..., c] += rng.uniform(-70, 70) * np.exp(
            -((y - cy)**2 + (x - cx)**2) / (2 * r * r))
    for _ in range(6):  # Textures: ripples of a few frequencies.
      fx, fy, phase = rng.uniform(0.02, 0.3, 2).tolist() + [rng.uniform(0, 6)]
      image += 25 * np.sin(fx * x + fy * y + phase)[..., None] * (
          rng.uniform(0.3, 1, 3))
    image += rng.normal(0, 14, image.shape)  # Sensor noise and fine detail.
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    data = tf.io.encode_jpeg(pixels, quality=90).numpy()
    class_dir = os.path.join(folder, f"class_{i % 4}")
    os.makedirs(class_dir, exist_ok=True)
    with open(os.path.join(class_dir, f"{i:05d}.jpg"), "wb") as f:
      f.write(data)
    total += len(data)
  return total / num / 1024


def ours(folder: str, spec: str, batch_size: int, threads: int
         ) -> Iterator[dict[str, np.ndarray]]:
  from input_pipeline import folder as folder_lib
  from input_pipeline import pipeline
  from input_pipeline import preprocess
  source = folder_lib.ImageFolder(folder, val_fraction=0.0)
  return pipeline.make_train_iterator(
      source, preprocess.build(spec), global_batch_size=batch_size, seed=0,
      process_index=0, process_count=1, num_threads=threads, prefetch=2)


def tf_data(folder: str, fused: bool, batch_size: int, threads: int
            ) -> Iterator[dict[str, np.ndarray]]:
  import tensorflow as tf
  from input_pipeline import folder as folder_lib
  source = folder_lib.ImageFolder(folder, val_fraction=0.0)
  files = [source.origin(i) for i in range(len(source))]

  def box(shape, seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=RATIO, area_range=AREA, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    return begin, size

  def load(seed, path):
    data = tf.io.read_file(path)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if fused:
      begin, size = box(tf.image.extract_jpeg_shape(data), seeds[0])
      image = tf.image.decode_and_crop_jpeg(
          data, tf.stack([begin[0], begin[1], size[0], size[1]]), channels=3)
    else:
      image = tf.io.decode_jpeg(data, channels=3)
      begin, size = box(tf.shape(image), seeds[0])
      image = tf.slice(image, begin, size)
    # As our ops: resize keeps uint8 (rounded), value_range maps 0..255.
    image = tf.image.resize(image, [SIZE, SIZE])
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return {"image": tf.cast(image, tf.float32) / 127.5 - 1}

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.deterministic = False  # tf.data's fastest setting.
  seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([i, i]))
  paths = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files),
                                                           seed=0).repeat()
  ds = tf.data.Dataset.zip(seeds, paths).map(
      load, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(options).as_numpy_iterator()


def measure(make: Callable[[], Iterator], batch_size: int, seconds: float,
            warmup: int = 3) -> tuple[float, float]:
  """(images per second, images per CPU-second) after `warmup` batches."""
  iterator = make()
  for _ in range(warmup):
    next(iterator)
  wall, cpu, images = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - wall < seconds:
    batch = next(iterator)
    assert batch["image"].shape == (batch_size, SIZE, SIZE, 3)
    images += batch_size
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  if hasattr(iterator, "close"):
    iterator.close()
  return images / wall, images / cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--threads", type=int,
                      default=len(os.sched_getaffinity(0)))
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--seconds", type=float, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--num_images", type=int, default=256)
  args = parser.parse_args()
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) > args.threads:
    os.sched_setaffinity(0, cpus[:args.threads])  # Before TF starts threads.
  import tensorflow as tf
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)

  folder = tempfile.mkdtemp(prefix="input_bench_")
  try:
    kb = write_images(folder, args.num_images)
    b, t = args.batch_size, args.threads
    runs = {
        ("ours", "fused"): lambda: ours(folder, FUSED, b, t),
        ("tf.data", "fused"): lambda: tf_data(folder, True, b, t),
        ("ours", "unfused"): lambda: ours(folder, UNFUSED, b, t),
        ("tf.data", "unfused"): lambda: tf_data(folder, False, b, t),
    }
    rounds = {k: [] for k in runs}  # [(img/s, img/CPU-s)] per round.
    for _ in range(args.rounds):
      for key, make in runs.items():
        rounds[key].append(measure(make, b, args.seconds))
  finally:
    shutil.rmtree(folder)

  print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores on the machine, "
        f"{len(os.sched_getaffinity(0))} used; TF {tf.__version__}; load "
        f"average {os.getloadavg()[0]:.1f} (other processes skew img/s).")
  print(f"{args.num_images} JPEGs ~500x375 (mean {kb:.0f} KB, q90); batch "
        f"{b}, {t} threads; best of {args.rounds} x {args.seconds:g} s.\n")
  print(f"{'pipeline':9} {'ops':8} {'img/s':>7} {'img/s/core':>10} "
        f"{'ratio':>6} {'img/CPU-s':>10} {'ratio':>6}  per-round ratios")
  for (name, ops), values in rounds.items():
    per_s, per_cpu_s = np.max(values, axis=0)
    ref = np.asarray(rounds[("tf.data", ops)])
    paired = np.asarray(values)[:, 0] / ref[:, 0]
    print(f"{name:9} {ops:8} {per_s:7.1f} {per_s / t:10.1f} "
          f"{per_s / ref[:, 0].max():5.2f}x {per_cpu_s:10.1f} "
          f"{per_cpu_s / ref[:, 1].max():5.2f}x  "
          f"median {np.median(paired):.2f}x of "
          f"{' '.join(f'{r:.2f}' for r in paired)}")
  print("ratio: ours / tf.data with the same ops (best round of each); "
        "per-round: img/s of\nthe same round, ours and tf.data run back to "
        "back.")


if __name__ == "__main__":
  main()
