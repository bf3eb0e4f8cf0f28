r"""CLIP ViT-B/16 from scratch on LAION-400M (softmax contrastive loss).

  python main.py --config=configs/clip_b16.py --workdir=/tmp/clip_b16

Expected: about 67% zero-shot ImageNet top-1 after 32 epochs (13B examples
seen) at batch 32k, as OpenCLIP's ViT-B/16 on LAION-400M; here zero-shot
CIFAR-10 and LAION retrieval are evaluated. Not reproduced on this project's
hardware. Needs `laion400m/images` and `cifar10` prepared with TFDS. Text is
byte-level tokenized (no vocabulary file). Smoke mode:
`configs/clip_b16.py:runlocal`.
"""

import ml_collections

from configs import common
from input_pipeline.ops import text

MAX_LEN = 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  crop = common.RUNLOCAL_CROP if arg.runlocal else 224
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 400_000
  c.input = dict(data=dict(name="laion400m/images", split="train[:-5000]"),
                 pp=common.image_text_pp(crop, MAX_LEN), batch_size=32_768)
  c.model_name = "two_towers"
  c.model = dict(
      image=dict(variant="B/16", pool_type="tok", posemb="learn", scan=True),
      text=dict(variant="B", vocab_size=text.VOCAB_SIZE, autoregressive=True,
                scan=True,
                pool_type="last"),
      out_dim=(512, 512))
  c.objective = dict(name="contrastive", loss="softmax",
                     temperature_init=1 / 0.07)  # CLIP's initial 14.3.
  c.optim = dict(name="adamw", lr=5e-4, wd=0.2, b2=0.98, grad_clip_norm=1.0,
                 mu_dtype="bfloat16")
  c.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  c.evals = common.image_text_evals(crop=crop, batch_size=1024,
                                    every_steps=10_000,
                                    runlocal=arg.runlocal)
  c.sharding = dict(preset="fsdp")
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.log_every_steps = 100
  c.ckpt_every_steps = 2000
  if arg.runlocal:
    common.runlocal(c)
  return c
