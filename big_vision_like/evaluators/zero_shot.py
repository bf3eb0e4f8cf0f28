"""Zero-shot classification of a two-tower model, CLIP-style.

Each class is embedded by its names in every prompt template ("a photo of a
{}."): the mean of the normalised text embeddings of its prompts,
renormalised. An image's prediction is the class whose embedding is closest
(largest cosine). Every image of the split counts once over all devices and
processes; padding is masked ("_mask").

  evals.zeroshot = dict(
      type="zero_shot", data=dict(name="sklearn_digits", split="test"),
      pp='decode|value_range(-1, 1)|keep("image", "label")', batch_size=360,
      classnames=["zero", "one", ...], templates=["a photo of a {}.", ...])

The prompts are tokenized exactly as training tokenizes its captions (the
text part of config.input.pp, see input_pipeline/text_pp.py), unless
`pp_txt` says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn
from input_pipeline import preprocess
from input_pipeline import text_pp


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """Fields besides the data ones (whose pp gives "image" and the integer
  label_key):

  classnames: one name per class, in label order; a list of names gives a
    class several (their prompts are averaged too).
  templates: prompts, each with one "{}" for the class name.
  pp_txt: preprocessing of one prompt {"text": str} into {"text": int32
    [L]}; None: the training pp's text part (`text_pp.prompt_pp`). Set it
    only to tokenize prompts unlike training on purpose.
  pred: the image embedding predict function; pred_text: the text one.
  label_key: the batch key of the integer label.
  """
  classnames: Sequence[str | Sequence[str]] = ()
  templates: Sequence[str] = ("{}",)
  pp_txt: str | None = None
  pred: str = "embed_image"
  pred_text: str = "embed_text"
  label_key: str = "label"

  def __post_init__(self):
    super().__post_init__()
    if not self.classnames:
      raise checks.ConfigError("classnames is empty: give one name per class "
                               "in label order.")
    bad = [t for t in self.templates if not isinstance(t, str)
           or t.count("{}") != 1]
    if not self.templates or bad:
      raise checks.ConfigError(
          f"templates {list(self.templates)!r}: give prompts with exactly "
          "one '{}' each (where the class name goes), e.g. 'a photo of a {}.'.")
    if self.pp_txt is not None:
      preprocess.validate(self.pp_txt)


def with_train_text(cfg: Config, train_pp: str | None, where: str) -> Config:
  """`cfg` with pp_txt, when unset, taken from the train pp's text part."""
  if cfg.pp_txt is not None:
    return cfg
  if not train_pp:
    raise checks.ConfigError(
        f"{where}.pp_txt is not set, and there is no train pp "
        "(config.input.pp) to take the prompt tokenization from: set pp_txt, "
        "e.g. 'tokenize(32, eos=\"sticky\", key_result=\"text\")'.")
  return dataclasses.replace(cfg, pp_txt=text_pp.prompt_pp(train_pp))


def _names(cfg: Config) -> list[list[str]]:
  return [[c] if isinstance(c, str) else list(c) for c in cfg.classnames]


def tokenize_prompts(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [P, L] of every class's prompts, class index [P])."""
  if cfg.pp_txt is None:
    raise checks.ConfigError(
        "pp_txt is None: build the evaluator through evaluators.build (which "
        "takes it from the train pp), or set it.")
  pp_fn = preprocess.build(cfg.pp_txt)
  tokens, classes = [], []
  for c, names in enumerate(_names(cfg)):
    for name in names:
      for template in cfg.templates:
        out = pp_fn({"text": tf.constant(template.format(name))},
                    tf.zeros([2], tf.int64))
        if out["text"].dtype == tf.string:
          raise checks.ConfigError(
              f"pp_txt={cfg.pp_txt!r} leaves 'text' a string: tokenize it "
              "into 'text', e.g. 'tokenize(32, key_result=\"text\")'.")
        tokens.append(np.asarray(out["text"]))
        classes.append(c)
  return np.stack(tokens), np.asarray(classes)


@functools.cache
def _embed_step(predict_fn: PredictFn, sharding: jax.sharding.Sharding):
  """A jitted predict whose output every process holds whole."""
  replicated = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec())
  return jax.jit(lambda p, s, batch: predict_fn(p, s, batch)[0],
                 out_shardings=replicated)


def embed_texts(predict_fn: PredictFn, params: base.PyTree,
                model_state: base.PyTree, tokens: np.ndarray,
                sharding: jax.sharding.NamedSharding) -> np.ndarray:
  """Text embeddings [P, D] of tokens [P, L] (every process gives all P).

  The rows are padded to a multiple of the device count and split over the
  data sharding; the padding's embeddings are dropped.
  """
  n = len(tokens)
  padded = -(-n // jax.device_count()) * jax.device_count()
  tokens = np.concatenate([tokens, np.zeros((padded - n, *tokens.shape[1:]),
                                            tokens.dtype)])
  array = jax.make_array_from_callback(tokens.shape, sharding,
                                       lambda index: tokens[index])
  step = _embed_step(predict_fn, sharding)
  return np.asarray(step(params, model_state, {"text": array}))[:n]


def class_embeddings(text_emb_PxD: np.ndarray, classes_P: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[C, D]: per class, the mean of its prompts' normalised embeddings,
  renormalised."""
  z = text_emb_PxD / np.linalg.norm(text_emb_PxD, axis=-1, keepdims=True)
  means = np.stack([z[classes_P == c].mean(0) for c in range(num_classes)])
  return means / np.linalg.norm(means, axis=-1, keepdims=True)


@functools.cache
def _count_step(predict_fn: PredictFn, label_key: str):
  def step(params, model_state, batch, classes_CxD):
    zimg, _ = predict_fn(params, model_state, batch)
    logits = zimg.astype(jnp.float32) @ classes_CxD.T
    labels, mask = batch[label_key], batch["_mask"].astype(jnp.float32)
    k = min(5, classes_CxD.shape[0])
    _, topk = jax.lax.top_k(logits, k)
    hit1 = (topk[:, 0] == labels).astype(jnp.float32)
    hitk = jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)
    true = jax.nn.one_hot(labels, classes_CxD.shape[0]) * mask[:, None]
    return {"correct@1": jnp.sum(hit1 * mask),
            "correct@5": jnp.sum(hitk * mask), "count": jnp.sum(mask),
            "class_count": jnp.sum(true, 0),
            "class_correct@1": jnp.sum(true * hit1[:, None], 0)}
  return jax.jit(step)


class Evaluator(base.DatasetEvaluator):
  """prec@1 (the headline) and prec@5 of zero-shot classification; per-class
  counts as arrays."""

  Config = Config
  PREDICT_FIELDS = ("pred", "pred_text")
  with_train_text = staticmethod(with_train_text)

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.NamedSharding, *,
               pred_text: PredictFn):
    super().__init__(cfg, data_sharding, keys=("image", cfg.label_key))
    self._embed_text = pred_text
    self._step = _count_step(predict_fn, cfg.label_key)
    self._tokens, self._classes = tokenize_prompts(cfg)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The images' shapes, and the prompts' as "text" (what a two-tower
    model's init needs, e.g. for `--mode=eval`)."""
    return {**super().batch_spec(), "text": jax.ShapeDtypeStruct(
        self._tokens.shape, self._tokens.dtype)}

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    text_emb = embed_texts(self._embed_text, params, model_state,
                           self._tokens, self._sharding)
    # A host array: every process passes the same one to the step.
    classes = class_embeddings(text_emb, self._classes,
                               len(self.cfg.classnames)).astype(np.float32)
    totals = self.sum_over_batches(
        lambda p, s, b: self._step(p, s, b, classes), params, model_state)
    n = max(float(totals["count"]), 1.0)
    return base.Results(
        scalars={"prec@1": float(totals["correct@1"]) / n,
                 "prec@5": float(totals["correct@5"]) / n,
                 "num_examples": float(totals["count"])},
        headline="prec@1",
        arrays={"class_count": totals["class_count"].astype(np.int64),
                "class_correct@1": totals["class_correct@1"].astype(np.int64)})
