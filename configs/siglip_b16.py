r"""SigLIP ViT-B/16 from scratch (sigmoid loss, t = 10, b = -10).

  python main.py --config=configs/siglip_b16.py --workdir=/tmp/siglip_b16

The loss is the chunked sigmoid: each device scores its images against one
block of texts at a time, passing the blocks around the batch axes, so memory
per device does not grow with the global batch (arXiv:2303.15343).
Expected: SigLIP B/16 reaches 76.7% zero-shot ImageNet top-1 on WebLI (40B
examples seen, batch 32k); on LAION-400M as here, expect a few points less.
Not reproduced on this project's hardware. Needs `laion400m/images` and
`cifar10` prepared with TFDS. Smoke mode: `configs/siglip_b16.py:runlocal`.
"""

import ml_collections

from configs import clip_b16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = clip_b16.get_config(arg)
  # SigLIP: a MAP-pooled image tower without head, a 768-d text head.
  c.model.image = dict(variant="B/16", pool_type="map", posemb="learn",
                       scan=True)
  c.model.text = dict(c.model.text.to_dict(), autoregressive=False)
  c.model.out_dim = (None, 768)
  # The parameter t starts at log 10 (temperature 10), b at -10, as in the
  # paper.
  c.objective = dict(name="contrastive", loss="sigmoid_chunked",
                     temperature_init=10.0, bias_init=-10.0)
  c.optim = dict(name="adamw", lr=1e-3, wd=1e-4, b2=0.95, grad_clip_norm=1.0,
                 mu_dtype="bfloat16")
  return c
