"""malloc on huge pages: when the entry points re-execute themselves, and
that the re-executed process is the same one with the tunable set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from big_vision_like import hugepages

_VERSION = hugepages._glibc_version()  # pylint: disable=protected-access


def _thp(tmp_path, mode: str) -> str:
  path = tmp_path / "enabled"
  words = ["always", "madvise", "never"]
  path.write_text(" ".join(f"[{w}]" if w == mode else w for w in words))
  return str(path)


@pytest.mark.skipif(_VERSION is None or _VERSION < (2, 35),
                    reason="glibc 2.35+ only")
def test_the_tunable_is_added_only_where_it_changes_something(tmp_path):
  madvise = _thp(tmp_path, "madvise")
  env = hugepages.env_with_hugepages({"PATH": "/bin"}, thp_path=madvise)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept.
  env = hugepages.env_with_hugepages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_path=madvise)
  assert env["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  # Already set (also: the re-executed process itself), opted out, huge
  # pages for all memory or none, no such kernel file: nothing to do.
  for env, path in [
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise),
      ({"BIG_VISION_LIKE_HUGEPAGES": "0"}, madvise),
      ({}, _thp(tmp_path, "always")), ({}, _thp(tmp_path, "never")),
      ({}, str(tmp_path / "missing"))]:
    assert hugepages.env_with_hugepages(env, thp_path=path) is None, env


def test_off_glibc_nothing_changes(monkeypatch, tmp_path):
  monkeypatch.setattr(hugepages, "_glibc_version", lambda: None)
  assert hugepages.env_with_hugepages(
      {}, thp_path=_thp(tmp_path, "madvise")) is None
  monkeypatch.setattr(hugepages, "_glibc_version", lambda: (2, 31))
  assert hugepages.env_with_hugepages(
      {}, thp_path=_thp(tmp_path, "madvise")) is None


def test_reexec_runs_the_same_command_in_the_same_process(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  if hugepages.env_with_hugepages(env) is None:
    pytest.skip("malloc's huge pages change nothing on this machine")
  script = tmp_path / "script.py"
  script.write_text(
      "import json, os, sys\n"
      "from big_vision_like import hugepages\n"
      "print(json.dumps([os.getpid(), os.environ.get('GLIBC_TUNABLES'),"
      " sys.argv[1:], hugepages.active()]), flush=True)\n"
      "hugepages.reexec()\n")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo
  out = subprocess.run([sys.executable, "-u", str(script), "a", "b c"],
                       env=env, capture_output=True, text=True, check=True,
                       timeout=60).stdout.splitlines()
  # Printed twice: before and after the exec, by one process id, with the
  # arguments kept; the second time with the tunable (and no third run).
  assert len(out) == 2, out
  (pid1, tun1, args1, on1), (pid2, tun2, args2, on2) = map(json.loads, out)
  assert pid1 == pid2 and args1 == args2 == ["a", "b c"]
  assert (tun1, on1, tun2, on2) == (None, False, hugepages.TUNABLE, True)


def test_a_failed_reexec_warns_and_runs_on(monkeypatch, capsys):
  monkeypatch.setattr(hugepages, "env_with_hugepages",
                      lambda env: {"GLIBC_TUNABLES": hugepages.TUNABLE})

  def execve(*args):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(hugepages.os, "execve", execve)
  hugepages.reexec()  # Returns instead of raising.
  err = capsys.readouterr().err
  assert "could not re-run with glibc.malloc.hugetlb=1" in err
  assert "BIG_VISION_LIKE_HUGEPAGES=0" in err
