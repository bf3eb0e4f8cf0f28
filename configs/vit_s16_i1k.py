r"""ViT-S/16 on ImageNet-1k: "Better plain ViT baselines for ImageNet-1k".

  python main.py --config=configs/vit_s16_i1k.py --workdir=/tmp/vit_s16_i1k

Expected: 76.5% top-1 on ImageNet val after 90 epochs, 6-7 h on a TPU v3-8
(published, arXiv:2205.01580; 150 epochs: 78.5%, 300 epochs: 80.0%, set with
`--config.total_epochs=300`). Not reproduced on this project's hardware.
Needs `imagenet2012` prepared with TFDS in `--config.input.data.data_dir`.
Smoke mode on mock data: `--config=configs/vit_s16_i1k.py:runlocal`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, variant="S/16")
  crop = common.RUNLOCAL_CROP if arg.runlocal else 224
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_epochs = 90
  c.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]"),
      pp=common.imagenet_pp(train=True, crop=crop, randaug="randaug(2, 10)"),
      batch_size=1024)
  c.model_name = "vit"
  c.model = dict(variant=arg.variant, num_classes=1000, pool_type="gap",
                 posemb="sincos2d", rep_size=True)
  c.objective = dict(name="supervised", loss="softmax_xent",
                     mixing=dict(mixup_alpha=0.2))
  c.optim = dict(name="adamw", lr=0.001, wd=0.0001, mu_dtype="bfloat16",
                 grad_clip_norm=1.0)
  c.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  c.evals = common.imagenet_evals(
      common.imagenet_pp(train=False, crop=crop),
      common.imagenet_pp(train=False, crop=crop, label_key="real_label"),
      every_steps=2500, batch_size=1024, runlocal=arg.runlocal)
  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  if arg.runlocal:
    common.runlocal(c)
  return c
