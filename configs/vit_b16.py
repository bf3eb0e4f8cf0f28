r"""ViT-B/16 ImageNet-1k pretraining, big_vision's `vit_i1k` (AugReg) recipe.

  python main.py --config=configs/vit_b16.py --workdir=/tmp/vit_b16

Other variants: `--config=configs/vit_b16.py:variant=L/16`.
Expected: about 79% top-1 on ImageNet val after 300 epochs (AugReg,
arXiv:2106.10270, ImageNet-1k from scratch with "medium2" augmentation); the
run takes about a day on a TPU v3-32. Not reproduced on this project's
hardware. Needs `imagenet2012` prepared with TFDS in
`--config.input.data.data_dir`. Smoke mode: `configs/vit_b16.py:runlocal`.
"""

import ml_collections

from configs import common

# Augmentation strength per variant, as in the AugReg paper's Fig. 4.
RANDAUG = {"Ti/16": "randaug(2, 0)", "S/32": "randaug(2, 10)"}
MIXUP = {"Ti/16": 0.0, "S/32": 0.2}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, variant="B/16")
  crop = common.RUNLOCAL_CROP if arg.runlocal else 224
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_epochs = 300
  c.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]"),
      pp=common.imagenet_pp(
          train=True, crop=crop,
          randaug=RANDAUG.get(arg.variant, "randaug(2, 15)")),
      batch_size=4096)
  c.model_name = "vit"
  c.model = dict(variant=arg.variant, num_classes=1000, pool_type="tok",
                 posemb="learn", rep_size=True)
  c.objective = dict(name="supervised", loss="softmax_xent",
                     mixing=dict(mixup_alpha=MIXUP.get(arg.variant, 0.5)))
  c.optim = dict(name="adamw", lr=0.001, wd=0.0001, mu_dtype="bfloat16",
                 grad_clip_norm=1.0)
  c.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  c.evals = common.imagenet_evals(
      common.imagenet_pp(train=False, crop=crop),
      common.imagenet_pp(train=False, crop=crop, label_key="real_label"),
      every_steps=2500, batch_size=4096, runlocal=arg.runlocal)
  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  if arg.runlocal:
    common.runlocal(c)
  return c
