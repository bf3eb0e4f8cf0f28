"""Peak FLOP/s of the accelerator a run is on, for model FLOPs utilisation.

Published dense peaks per chip (no sparsity), by `jax.Device.device_kind`.
float32 matmuls run as bf16 passes on TPU (XLA's default precision) and as
TF32 on A100/H100/H200 (JAX's default precision on those GPUs), so their
float32 peaks are those rates. On CPU the peak is measured: the rate of a
large matmul in the same dtype, shared by the host's CPU devices.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

TERA = 1e12
# device_kind substring -> (bf16, fp32) peak FLOP/s per chip.
PEAKS = {
    "TPU v4": (275 * TERA, 275 * TERA),
    "TPU v5 lite": (197 * TERA, 197 * TERA),   # v5e.
    "TPU v5e": (197 * TERA, 197 * TERA),
    "TPU v5p": (459 * TERA, 459 * TERA),
    "TPU v5": (459 * TERA, 459 * TERA),        # v5p reports "TPU v5".
    "TPU v6 lite": (918 * TERA, 918 * TERA),   # v6e (Trillium).
    "TPU v6e": (918 * TERA, 918 * TERA),
    "A100": (312 * TERA, 156 * TERA),
    "H100": (989 * TERA, 494.7 * TERA),
    "H200": (989 * TERA, 494.7 * TERA),
}


def cpu_model() -> str:
  """The host CPU's model name (`lscpu`'s "Model name"), for figures."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def lscpu_model() -> str:
  """`lscpu`'s "Model name" (what figures in the README name), else
  `cpu_model()` where lscpu is missing."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return cpu_model()
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return cpu_model()


def _lookup(kind: str) -> tuple[float, float] | None:
  # Longest key first: "TPU v5 lite" before "TPU v5".
  for key in sorted(PEAKS, key=len, reverse=True):
    if key.lower() in kind.lower():
      return PEAKS[key]
  return None


@functools.cache
def measured_cpu_peak(dtype: str = "float32", n: int = 2048,
                      repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` n x n matmuls on the first CPU device.

  The product accumulates and is returned in float32, as the models' CPU
  dots do (`models.layers`): for bf16, XLA's CPU backend runs that natively
  where the CPU has AVX512-BF16 or AMX, and a bf16-output dot 2-3x slower.
  """
  device = jax.devices("cpu")[0]
  x = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal(
      (n, n)), dtype), device)
  matmul = jax.jit(lambda a, b: jnp.matmul(
      a, b, preferred_element_type=jnp.float32))
  matmul(x, x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(x, x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def peak_flops_per_device(dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s of one device for matmuls in `dtype`, where it is from)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    local = sum(1 for d in jax.local_devices() if d.platform == "cpu")
    return (measured_cpu_peak("bfloat16" if dtype == "bfloat16"
                              else "float32") / local,
            f"measured {dtype} matmul on this host's CPU, / {local} devices")
  peaks = _lookup(device.device_kind)
  if peaks is None:
    return float("nan"), f"unknown device kind {device.device_kind!r}"
  bf16, fp32 = peaks
  return (bf16 if dtype == "bfloat16" else fp32), (
      f"published {dtype} peak of {device.device_kind}")
