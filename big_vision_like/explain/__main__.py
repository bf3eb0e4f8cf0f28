"""python -m big_vision_like.explain --config=C --workdir=W --inputs=a.png,b.png
    --method=gradcam|rollout|saliency|smoothgrad --output=DIR [--step=N]
    [--evals=NAME] [--class_index=K] [--gradcam_layer=stage1]

Writes DIR/<image>.<method>.png overlays (and .npy maps); see command.py.
Exits 2 with one message on a bad config, input or checkpoint.
"""

from absl import app
from absl import flags
from absl import logging

from big_vision_like import config as config_lib

FLAGS = flags.FLAGS
config_lib.define_run_flags(flags)
flags.DEFINE_list("inputs", None, "Image files, or folders of images.")
flags.DEFINE_string("output", None, "The folder the overlays go to.")
flags.DEFINE_string("method", "saliency",
                    "saliency, smoothgrad, gradcam (ResNet/BiT) or rollout "
                    "(ViT).")
flags.DEFINE_list("evals", None, "The evaluator whose pp spec to use.")
flags.DEFINE_integer("class_index", None, "Class to explain (default: "
                     "the predicted one).")
flags.DEFINE_string("gradcam_layer", None, "Grad-CAM's layer, as "
                    "pytorch-grad-cam's target_layers: stage1..stageN (a "
                    "finer grid at earlier stages) or, for BiT, "
                    "pre_logits_2d (default: the last stage's).")
flags.mark_flags_as_required(["config", "workdir", "inputs", "output"])
_OVERRIDES = {}


def main(argv: list[str]) -> int:
  del argv
  logging.set_verbosity(logging.INFO)
  from big_vision_like.explain import command
  from big_vision_like.trainers import train
  return config_lib.run_command(
      lambda config: command.run(
          config, FLAGS.workdir, FLAGS.inputs, FLAGS.output,
          method=FLAGS.method, step=FLAGS.step,
          eval_name=(FLAGS.evals or [None])[0],
          class_index=FLAGS.class_index,
          gradcam_layer=FLAGS.gradcam_layer),
      FLAGS.config, _OVERRIDES, exit_config=train.EXIT_CONFIG)


if __name__ == "__main__":
  app.run(main,
          flags_parser=config_lib.absl_flags_parser(FLAGS, _OVERRIDES))
