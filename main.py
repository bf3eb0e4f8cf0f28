"""Entry point: `python main.py --config=configs/demo.py --workdir=/tmp/demo`.

  --mode=train    (default) train and evaluate, resuming from the workdir.
  --mode=eval     run the config's evaluators (or --evals=a,b) on the
                  workdir's newest checkpoint (or --step=N); no training.
  --mode=predict  top-k classes of --inputs (a folder or comma-separated
                  image files) into --output (.csv or .jsonl); two-tower
                  models: zero-shot classes, or image embeddings (.npz).

Config files take an argument after a colon (`configs/vit_b16.py:runlocal`)
and any key can be overridden with `--config.a.b=value`. Exit codes are listed
in big_vision_like/trainers/train.py (EXIT_*) and in the README.
"""

import logging as std_logging
import os
import sys

from big_vision_like import hugepages

if __name__ == "__main__":
  hugepages.reexec()  # Before anything else: it runs this command again.

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from big_vision_like import config as config_lib
from big_vision_like import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file, e.g. configs/demo.py[:arg].")
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to run.")
flags.DEFINE_integer("step", None, "eval/predict: the checkpoint step.")
flags.DEFINE_list("evals", None, "eval/predict: evaluator names to use.")
flags.DEFINE_list("inputs", None, "predict: an image folder, or files.")
flags.DEFINE_string("output", None,
                    "predict: the .csv or .jsonl (two towers: or .npz) to "
                    "write.")
flags.DEFINE_integer("top_k", 5, "predict: classes written per image.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDES = {}  # --config.a.b=value, taken off argv before absl parses it.


def main(argv: list[str]) -> int:
  del argv
  # Our progress at INFO; libraries (orbax, tfds, jax) at WARNING.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("big_vision_like").setLevel(std_logging.INFO)
  std_logging.getLogger("input_pipeline").setLevel(std_logging.INFO)
  # Multi-host: a no-op unless the environment says several processes run.
  distributed.maybe_initialize()
  # Imported after initialisation: nothing may touch devices before.
  import jax
  from big_vision_like.inference import evaluate, predict
  from big_vision_like.trainers import train
  try:
    config = config_lib.load_resolved(FLAGS.config, _OVERRIDES)
    if FLAGS.mode == "train":
      code = train.run(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      code = evaluate.run(config, FLAGS.workdir, step=FLAGS.step,
                          names=FLAGS.evals)
    else:
      if not FLAGS.inputs or not FLAGS.output:
        raise config_lib.ConfigError(
            "--mode=predict needs --inputs=<folder or files> and "
            "--output=<file.csv or file.jsonl>.")
      code = predict.run(config, FLAGS.workdir, FLAGS.inputs, FLAGS.output,
                         step=FLAGS.step, top_k=FLAGS.top_k,
                         eval_name=(FLAGS.evals or [None])[0])
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
  app.run(main,
          flags_parser=config_lib.absl_flags_parser(FLAGS, _OVERRIDES))
