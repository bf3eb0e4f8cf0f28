r"""LiT ViT-B/16: a locked, pretrained image tower and a text tower trained
to match it (Zhai et al., 2022, arXiv:2111.07991).

  python main.py --config=configs/lit_b16.py:img_init=/tmp/vit_b16 \
      --workdir=/tmp/lit_b16

`img_init` is the workdir of a classifier run with the same ViT, e.g.
configs/vit_b16.py; its weights (without the head) become the image tower
("img/", frozen: no gradient, no optimizer state), whose pre-logits are the
image embedding. Expected: LiT with an ImageNet-21k B/16 reaches about 70%
zero-shot ImageNet top-1 on CC12M+YFCC; from an ImageNet-1k classifier on
LAION-400M expect less. Not reproduced on this project's hardware. Smoke mode
(random image weights): `configs/lit_b16.py:runlocal`.
"""

import ml_collections

from configs import clip_b16
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, img_init="/tmp/vit_b16")
  c = clip_b16.get_config("runlocal" if arg.runlocal else None)
  # configs/vit_b16.py's ViT (not scanned: the same parameter names);
  # rep_size=True makes the pre-logits 768-d.
  c.model.image = dict(variant="B/16", pool_type="tok", posemb="learn",
                       rep_size=True)
  c.model.out_dim = (None, 768)
  c.objective = dict(name="contrastive", loss="softmax", temperature_init=10.0,
                     lock_image=True)
  c.optim.frozen = ["img/.*"]
  c.optim.lr = 1e-3
  c.total_steps = 100_000 if not arg.runlocal else c.total_steps
  c.init_from = (None if arg.runlocal else
                 dict(path=arg.img_init, into="img", partial=True))
  return c
