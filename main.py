"""Entry point: `python main.py --config=configs/demo.py --workdir=/tmp/demo`.

Config files take an argument after a colon (`configs/vit_b16.py:runlocal`)
and any key can be overridden with `--config.a.b=value`. Exit codes are listed
in big_vision_like/trainers/train.py (EXIT_*) and in the README.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

from big_vision_like import config as config_lib
from big_vision_like import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file, e.g. configs/demo.py[:arg].")
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDES = {}


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, after taking the `--config.a.b=value` overrides off argv."""
  try:
    rest, overrides = config_lib.split_overrides(argv)
  except config_lib.ConfigError as e:
    sys.exit(f"Error: {e}")
  _OVERRIDES.update(overrides)
  return FLAGS(rest)


def main(argv: list[str]) -> int:
  del argv
  # Our progress at INFO; libraries (orbax, tfds, jax) at WARNING.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("big_vision_like").setLevel(std_logging.INFO)
  std_logging.getLogger("input_pipeline").setLevel(std_logging.INFO)
  # Multi-host: a no-op unless the environment says several processes run.
  distributed.maybe_initialize()
  # Imported after initialisation: importing JAX-heavy modules is fine, but
  # nothing may touch devices before jax.distributed is set up.
  import jax
  from big_vision_like.trainers import train
  try:
    config = config_lib.resolve(config_lib.load(FLAGS.config))
    config_lib.apply_overrides(config, _OVERRIDES)
    code = train.run(config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    logging.error("%s", e)
    print(f"Error: {e}", file=sys.stderr)
    code = train.EXIT_CONFIG
  if code != train.EXIT_DONE and jax.process_count() > 1:
    # A failed process must not wait in jax's shutdown barrier while its
    # peers wait for it in a step: exit now so the launcher stops them all.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
