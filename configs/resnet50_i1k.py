r"""ResNet-50 v1.5 (BatchNorm, torchvision/timm layout) on ImageNet-1k.

  python main.py --config=configs/resnet50_i1k.py --workdir=/tmp/resnet50_i1k

Recipe: 90 epochs, batch 1024, SGD with Nesterov momentum 0.9, peak lr 0.4
(0.1 x batch/256) with 5 warmup epochs and cosine decay, weight decay
equivalent to L2 1e-4, label smoothing 0.1, inception crop + flip.
Expected: about 76-77% top-1 on ImageNet val (torchvision's step-schedule
reference reaches 76.1%; cosine and label smoothing add about half a point).
Not reproduced on this project's hardware. Needs `imagenet2012` prepared with
TFDS. Smoke mode: `--config=configs/resnet50_i1k.py:runlocal`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, depth=50)
  crop = common.RUNLOCAL_CROP if arg.runlocal else 224
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_epochs = 90
  batch_size = 1024
  lr = 0.1 * batch_size / 256
  c.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]"),
      pp=common.imagenet_pp(train=True, crop=crop, smoothing=0.1),
      batch_size=batch_size)
  c.model_name = "resnet"
  c.model = dict(depth=arg.depth, num_classes=1000)
  c.objective = dict(name="supervised", loss="softmax_xent")
  # Our weight decay is decoupled (not scaled by lr), so L2 1e-4 at lr 0.4
  # becomes 0.4 * 1e-4. BatchNorm scales and biases are not decayed.
  c.optim = dict(name="sgd", lr=lr, wd=lr * 1e-4, momentum=0.9, nesterov=True)
  c.schedule = dict(warmup_steps=5 * 1251, decay_type="cosine")
  c.evals = common.imagenet_evals(
      common.imagenet_pp(train=False, crop=crop),
      common.imagenet_pp(train=False, crop=crop, label_key="real_label"),
      every_steps=1251, batch_size=1024, runlocal=arg.runlocal)
  c.log_every_steps = 50
  c.ckpt_every_steps = 1251
  if arg.runlocal:
    common.runlocal(c)
  return c
