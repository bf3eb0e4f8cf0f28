"""glibc's malloc on transparent huge pages for the entry points (Linux).

XLA's CPU runtime allocates each execution's temporary buffers afresh, and
glibc serves blocks over 32 MB with mmap and returns them on free, so every
train step touches new 4 KiB pages: 190,000 page faults per ResNet-50 step at
batch 8 (torch's eager step: 77,000), about a fifth of the step's time on a
2-core AMD EPYC VM. glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35+)
has malloc ask for transparent huge pages (2 MiB, `madvise`): under 1,000
faults a step. A tunable is read only when a process starts, so the command
line entry points call `reexec()` first, which runs the same command again,
once, with the tunable added (exec keeps the process id, so launchers do not
notice). It does nothing off glibc, where the kernel has transparent huge
pages off (`never`) or on for all memory (`always`), where GLIBC_TUNABLES
already sets it, or with BIG_VISION_LIKE_HUGEPAGES=0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "BIG_VISION_LIKE_HUGEPAGES"  # "0": leave malloc as it is.
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None  # Not glibc (musl, macOS, Windows).
  if name != "glibc":
    return None
  major, minor = version.split(".")[:2]
  return int(major), int(minor)


def _thp_mode(path: str = _THP) -> str | None:
  """The kernel's transparent huge page mode: "always", "madvise" or
  "never" (the bracketed word of `path`); None where there is none."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def env_with_hugepages(env: Mapping[str, str], *, thp_path: str = _THP
                       ) -> dict[str, str] | None:
  """`env` with the tunable added to GLIBC_TUNABLES, or None where adding
  it would change nothing (see the module docstring)."""
  version = _glibc_version()
  tunables = env.get("GLIBC_TUNABLES", "")
  if (env.get(OPT_OUT) == "0" or version is None or version < (2, 35)
      or _thp_mode(thp_path) != "madvise"
      or "glibc.malloc.hugetlb" in tunables):
    return None
  return {**env, "GLIBC_TUNABLES": ":".join(filter(None, [tunables,
                                                          TUNABLE]))}


def active() -> bool:
  """Whether this process's malloc asks for huge pages."""
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def reexec() -> None:
  """Runs this command line again with malloc on huge pages, if that
  changes anything; returns where it does not. Call it first thing in a
  `__main__` block, never from library code (it replaces the process)."""
  env = env_with_hugepages(os.environ)
  if env is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, env)
  except OSError as e:  # Run on as we are: only slower.
    print(f"Warning: could not re-run with {TUNABLE} ({e}); set "
          f"{OPT_OUT}=0 to skip trying.", file=sys.stderr)
