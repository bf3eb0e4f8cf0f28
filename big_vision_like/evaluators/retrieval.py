"""Image-text retrieval: image->text and text->image Recall@1/5/10.

Each record has one image and up to K captions (tokens [K, L] and a mask
[K]; a single caption is K = 1). Over the whole split (every record once,
padding masked, exact across devices and processes):

  image->text: an image is found at k when one of its own captions is
    among the k captions of the split most similar to it (images without a
    caption are no query);
  text->image: every caption is a query, found at k when its image is among
    the k most similar images.

Masked captions take no part, as queries or as candidates. Ranks break ties
in index order, as a stable sort does: a candidate ranks ahead of another
with the same score if it comes first in the split.

The captions are tokenized exactly as in training (the text part of
config.input.pp with every caption kept, see input_pipeline/text_pp.py),
unless `pp_txt` says otherwise; `pp` preprocesses the image:

  evals.retrieval = dict(
      type="retrieval", data=dict(name="sklearn_digits_captions",
                                  split="test"),
      pp='decode|value_range(-1, 1)|keep("image")', batch_size=360)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn
from input_pipeline import preprocess
from input_pipeline import text_pp
from input_pipeline.ops import text as text_ops

KS = (1, 5, 10)
_ROWS = 256  # Query rows ranked at a time, bounding host memory.


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """Fields besides the data ones (whose pp gives "image"):

  pp_txt: the captions' preprocessing, from the raw record to tokens [K, L]
    (or [L]) under text_key, and optionally a mask "<text_key>_mask" [K];
    None: the train pp's text part with every caption kept
    (`text_pp.captions_pp`).
  caption_key: with pp_txt None, the records' caption key when it is not
    the one training reads (e.g. "captions" for a train key "caption").
  text_key: the batch key of the captions' tokens.
  pred: the image embedding predict function; pred_text: the text one.
  """
  pp_txt: str | None = None
  caption_key: str | None = None
  text_key: str = "texts"
  pred: str = "embed_image"
  pred_text: str = "embed_text"

  def __post_init__(self):
    super().__post_init__()
    if text_pp.tokenize_ops(self.pp):
      raise checks.ConfigError(
          f"pp={self.pp!r} tokenizes text; pp is the image's preprocessing. "
          "Drop the text ops to tokenize as in training, or move them to "
          "pp_txt to tokenize differently on purpose.")
    if self.pp_txt is not None:
      preprocess.validate(self.pp_txt)


def with_train_text(cfg: Config, train_pp: str | None, where: str) -> Config:
  """`cfg` with pp_txt, when unset, taken from the train pp's text part."""
  if cfg.pp_txt is not None:
    if cfg.caption_key is not None:
      raise checks.ConfigError(
          f"{where}.caption_key only renames the train pp's caption key; "
          "with pp_txt set, name the key in pp_txt and drop caption_key.")
    return cfg
  if not train_pp:
    raise checks.ConfigError(
        f"{where}.pp_txt is not set, and there is no train pp "
        "(config.input.pp) to take the caption tokenization from: set "
        "pp_txt, e.g. 'tokenize(32, key=\"texts\", key_result=\"texts\", "
        "sample_if_multi=False)'.")
  return dataclasses.replace(cfg, pp_txt=text_pp.captions_pp(
      train_pp, cfg.text_key, cfg.caption_key))


def merged_pp(image_fn: preprocess.PreprocessFn,
              text_fn: preprocess.PreprocessFn,
              text_key: str) -> preprocess.PreprocessFn:
  """The image pp's output with the text pp's tokens [K, L] and mask [K]
  (all True when the text pp gives none), both run on the raw record."""
  mask_key = text_key + text_ops.MASK_SUFFIX

  def fn(example, seed):
    texts = text_fn(example, seed)
    if text_key not in texts or texts[text_key].dtype != tf.int32:
      raise checks.ConfigError(
          f"The retrieval text pp gives no int32 tokens under '{text_key}' "
          f"(it gives {sorted(texts)}): tokenize into key_result="
          f"'{text_key}'.")
    tokens = texts[text_key]
    if tokens.shape.rank == 1:  # One caption a record.
      tokens = tokens[None]
    mask = texts.get(mask_key, tf.ones(tf.shape(tokens)[:1], tf.bool))
    return {**image_fn(example, seed), text_key: tokens, mask_key: mask}

  return fn


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


def recalls(zimg_NxD: np.ndarray, ztxt_NxKxD: np.ndarray,
            mask_NxK: np.ndarray | None = None) -> dict[str, float]:
  """{"img2txt/R@k", "txt2img/R@k"} of matching embeddings (k in KS); only
  the captions `mask_NxK` marks (all when None) take part."""
  n, k, d = ztxt_NxKxD.shape
  mask = (np.ones((n, k), bool) if mask_NxK is None
          else np.asarray(mask_NxK, bool))
  counts = mask.sum(1)
  # The valid captions in record order: image i's are [start_i, +count_i).
  ztxt = ztxt_NxKxD.reshape(n * k, d)[mask.reshape(-1)]
  owner = np.repeat(np.arange(n), counts)
  sims = zimg_NxD.astype(np.float64) @ ztxt.astype(np.float64).T  # [N, T]
  starts = np.cumsum(counts) - counts
  # Each image's own captions, the last repeated up to K columns.
  own = starts[:, None] + np.minimum(np.arange(k)[None],
                                     np.maximum(counts - 1, 0)[:, None])
  queries = counts > 0
  img_ranks = ranks(sims[queries], own[queries])
  txt_ranks = ranks(sims.T, owner[:, None])
  out = {}
  for top in KS:
    out[f"img2txt/R@{top}"] = float(np.mean(img_ranks < top))
    out[f"txt2img/R@{top}"] = float(np.mean(txt_ranks < top))
  return out


@functools.cache
def _embed_step(predict_image: PredictFn, predict_text: PredictFn,
                text_key: str, sharding: jax.sharding.NamedSharding):
  """Jitted: (zimg [B, D], ztxt [B, K, D], caption mask [B, K], mask [B])
  of a batch, held whole by every process."""
  replicated = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec())

  def step(params, model_state, batch):
    zimg, _ = predict_image(params, model_state, {"image": batch["image"]})
    tokens = batch[text_key]
    b, k, l = tokens.shape
    ztxt, _ = predict_text(params, model_state,
                           {"text": jnp.reshape(tokens, (b * k, l))})
    return (zimg, jnp.reshape(ztxt, (b, k, -1)),
            batch[text_key + text_ops.MASK_SUFFIX], batch["_mask"])

  return jax.jit(step, out_shardings=(replicated,) * 4)


class Evaluator(base.DatasetEvaluator):
  """img2txt/R@{1,5,10} and txt2img/R@{1,5,10}; headline img2txt/R@1."""

  Config = Config
  PREDICT_FIELDS = ("pred", "pred_text")
  with_train_text = staticmethod(with_train_text)

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.NamedSharding, *,
               pred_text: PredictFn):
    if cfg.pp_txt is None:
      raise checks.ConfigError(
          "pp_txt is None: build the evaluator through evaluators.build "
          "(which takes it from the train pp), or set it.")
    mask_key = cfg.text_key + text_ops.MASK_SUFFIX
    pp_fn = merged_pp(preprocess.build(cfg.pp), preprocess.build(cfg.pp_txt),
                      cfg.text_key)
    super().__init__(cfg, data_sharding,
                     keys=("image", cfg.text_key, mask_key), pp_fn=pp_fn)
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
    images, texts, masks = [], [], []
    for batch in self.batches():
      zimg, ztxt, caption_mask, mask = map(
          np.asarray, self._step(params, model_state, batch))
      images.append(zimg[mask])
      texts.append(ztxt[mask])
      masks.append(caption_mask[mask])
    if not images:
      raise ValueError("The evaluation split is empty.")
    zimg, ztxt = np.concatenate(images), np.concatenate(texts)
    caption_mask = np.concatenate(masks)
    scalars = recalls(zimg, ztxt, caption_mask)
    scalars["num_images"] = float(len(zimg))
    scalars["num_texts"] = float(caption_mask.sum())
    return base.Results(scalars=scalars, headline="img2txt/R@1")
