"""Image-text retrieval: image->text and text->image Recall@1/5/10.

Each record has one image and K captions ("texts", tokens [K, L]; a single
caption [L] is K = 1). Over the whole split (every record once, padding
masked, exact across devices and processes):

  image->text: an image is found at k when one of its own K captions is
    among the k texts of the split most similar to it;
  text->image: a caption is found at k when its image is among the k most
    similar images.

Ranks break ties in index order, as a stable sort does: a candidate ranks
ahead of another with the same score if it comes first in the split.

  evals.retrieval = dict(
      type="retrieval", data=dict(name="sklearn_digits_captions",
                                  split="test"),
      pp='decode|value_range(-1, 1)|tokenize(32, key="texts", '
         'key_result="texts", eos="sticky", sample_if_multi=False)'
         '|keep("image", "texts")', batch_size=360)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn

KS = (1, 5, 10)
_ROWS = 256  # Query rows ranked at a time, bounding host memory.


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """Fields besides the data ones (whose pp gives "image" and text_key):

  text_key: the batch key of the captions' tokens, [K, L] or [L] per record.
  pred: the image embedding predict function; pred_text: the text one.
  """
  text_key: str = "texts"
  pred: str = "embed_image"
  pred_text: str = "embed_text"


def ranks(sims_QxM: np.ndarray, own_QxK: np.ndarray) -> np.ndarray:
  """[Q]: the best 0-based rank among each query's own candidates.

  Args:
    sims_QxM: scores of Q queries against M candidates.
    own_QxK: the indices of each query's K own candidates.

  Candidate m ranks ahead of own candidate j if it scores higher, or the same
  with m < j (a stable sort's order).
  """
  best = np.empty(len(sims_QxM), np.int64)
  index_M = np.arange(sims_QxM.shape[1])
  for start in range(0, len(sims_QxM), _ROWS):
    sims = sims_QxM[start:start + _ROWS]
    own = own_QxK[start:start + _ROWS]
    own_sims = np.take_along_axis(sims, own, axis=1)[:, :, None]  # [R, K, 1]
    ahead = (sims[:, None, :] > own_sims) | (
        (sims[:, None, :] == own_sims) & (index_M < own[:, :, None]))
    best[start:start + _ROWS] = ahead.sum(-1).min(-1)
  return best


def recalls(zimg_NxD: np.ndarray, ztxt_NxKxD: np.ndarray
            ) -> dict[str, float]:
  """{"img2txt/R@k", "txt2img/R@k"} of matching embeddings (k in KS)."""
  n, k, d = ztxt_NxKxD.shape
  ztxt = ztxt_NxKxD.reshape(n * k, d)
  sims = zimg_NxD.astype(np.float64) @ ztxt.astype(np.float64).T  # [N, NK]
  img_ranks = ranks(sims, np.arange(n * k).reshape(n, k))
  txt_ranks = ranks(sims.T, (np.arange(n * k) // k)[:, None])
  out = {}
  for top in KS:
    out[f"img2txt/R@{top}"] = float(np.mean(img_ranks < top))
    out[f"txt2img/R@{top}"] = float(np.mean(txt_ranks < top))
  return out


@functools.cache
def _embed_step(predict_image: PredictFn, predict_text: PredictFn,
                text_key: str, sharding: jax.sharding.NamedSharding):
  """Jitted: (zimg [B, D], ztxt [B, K, D], mask [B]) of a batch, held whole
  by every process."""
  replicated = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec())

  def step(params, model_state, batch):
    zimg, _ = predict_image(params, model_state, {"image": batch["image"]})
    tokens = batch[text_key]
    if tokens.ndim == 2:  # One caption a record.
      tokens = tokens[:, None]
    b, k, l = tokens.shape
    ztxt, _ = predict_text(params, model_state,
                           {"text": jnp.reshape(tokens, (b * k, l))})
    return zimg, jnp.reshape(ztxt, (b, k, -1)), batch["_mask"]

  return jax.jit(step, out_shardings=(replicated,) * 3)


class Evaluator(base.DatasetEvaluator):
  """img2txt/R@{1,5,10} and txt2img/R@{1,5,10}; headline img2txt/R@1."""

  Config = Config
  PREDICT_FIELDS = ("pred", "pred_text")

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.NamedSharding, *,
               pred_text: PredictFn):
    super().__init__(cfg, data_sharding, keys=("image", cfg.text_key))
    self._step = _embed_step(predict_fn, pred_text, cfg.text_key,
                             data_sharding)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch's shapes, and one caption a record as "text" (what a
    two-tower model's init needs, e.g. for `--mode=eval`)."""
    spec = super().batch_spec()
    texts = spec[self.cfg.text_key]
    return {**spec, "text": jax.ShapeDtypeStruct(
        (texts.shape[0], texts.shape[-1]), texts.dtype)}

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    images, texts = [], []
    for batch in self.batches():
      zimg, ztxt, mask = map(np.asarray,
                             self._step(params, model_state, batch))
      images.append(np.asarray(zimg)[mask])
      texts.append(np.asarray(ztxt)[mask])
    if not images:
      raise ValueError("The evaluation split is empty.")
    zimg, ztxt = np.concatenate(images), np.concatenate(texts)
    scalars = recalls(zimg, ztxt)
    scalars["num_images"] = float(len(zimg))
    scalars["num_texts"] = float(ztxt.shape[0] * ztxt.shape[1])
    return base.Results(scalars=scalars, headline="img2txt/R@1")
