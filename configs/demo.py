r"""The embedded default: a small ViT on scikit-learn's handwritten digits.

  python main.py --config=configs/demo.py --workdir=workdirs/demo

The dataset (1,797 8x8 digit images shipped inside scikit-learn) is built into
a local TFDS dataset on first use, with no network. Expected: at least 97%
top-1 on the 360-image test split in under 3 minutes on 2 CPU cores (see the
README for the latest measured figure).
Smoke mode (a few steps): `--config=configs/demo.py:runlocal`.

`:classes=0-4` trains on those digits only (relabelled 0..4, in train and
test), and `:probe_classes=5-9` adds probes on the features of those
(few-shot, linear probe, k-NN, fitted on their train and scored on their
test images): the pretraining half of the transfer demo
(benchmarks/transfer_demo.py).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, classes="", probe_classes="")
  classes = common.parse_classes(arg.classes)
  num_classes = len(classes) or 10
  digits = lambda split, cls: common.with_classes(
      dict(name="sklearn_digits", split=split), cls)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 500
  c.input = dict(
      data=digits("train", classes),
      pp=common.classification_pp(16, num_classes), batch_size=128)
  c.model_name = "vit"
  c.model = dict(num_classes=num_classes, width=128, depth=4, mlp_dim=512,
                 num_heads=4, patch_size=(4, 4), pool_type="gap",
                 posemb="learn")
  c.objective = dict(name="supervised", loss="softmax_xent")
  c.optim = dict(name="adamw", lr=0.001, wd=0.0001, grad_clip_norm=1.0)
  c.schedule = dict(warmup_steps=50, decay_type="cosine")
  c.evals = dict(test=dict(
      type="classification", data=digits("test", classes),
      pp=common.classification_pp(16, num_classes), batch_size=360,
      every_steps=250))
  if arg.probe_classes:
    probe = common.parse_classes(arg.probe_classes)
    c.evals.update(common.probe_evals(
        digits("train", probe), digits("test", probe),
        common.classification_pp(16, len(probe)), batch_size=360,
        shots=(1, 5, 10)))
  c.log_every_steps = 50
  c.ckpt_every_steps = 250
  if arg.runlocal:
    c.total_steps = 4
    c.log_every_steps = 1
    c.ckpt_every_steps = 2
    c.schedule.warmup_steps = 1
    c.evals.test.every_steps = None
  return c
