"""Knowledge distillation: a student (`config.model`) learns to match a frozen
teacher loaded through `model_io` from any format `model_io.IMPORTERS` reads.

  objective = dict(
      name="distill",
      teacher=dict(model_name="vit", model=dict(num_classes=10, ...),
                   init=dict(path="workdirs/teacher", format="orbax")),
      temperature=2.0, alpha=0.0,
      mixing=dict(mixup_alpha=1.0))

The loss of a batch (Hinton et al., 2015) is

  (1 - alpha) * T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))
  + alpha * mean_i softmax_xent(s_i, labels_i)

with t and s the teacher's and the student's logits; T^2 keeps the soft
targets' gradients the same size as T changes. Function matching ("Knowledge
distillation: A good teacher is patient and consistent", Beyer et al., 2022):
the teacher sees exactly the student's input, the same crop (the input
pipeline made it) and the same mixup/CutMix (drawn here, once, for both).

The teacher's variables are not in the train state: `setup.frozen_variables`
loads them once, places them with the model's sharding rules and passes
them to the step as an argument (`base.WithFrozen`). They get no gradient,
no optimizer state, and are not written with the checkpoints; the checkpoint
metadata records their path, format, step and digest, and a relaunch whose
teacher differs is refused (`resume.check_frozen`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import checks
from big_vision_like import losses
from big_vision_like import mixing as mixing_lib
from big_vision_like import model_io
from big_vision_like import models
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import surgery
from big_vision_like.objectives import base
from big_vision_like.objectives import supervised
from big_vision_like.trainers import resume

TEACHER_KEYS = ("model_name", "model", "init")
TEACHER_INIT_DEFAULTS = {"path": None, "format": "orbax", "step": None}
_WHERE = "config.objective.teacher"


def kl_loss(student_logits_BxC: jax.Array, teacher_logits_BxC: jax.Array,
            temperature: float) -> jax.Array:
  """Per example [B]: T^2 * KL(softmax(t / T) || softmax(s / T)).

  Its gradient in the student's logits is T * (softmax(s / T) -
  softmax(t / T)); for large T and zero-mean logits about (s - t) / C:
  matching logits, independent of T (Hinton et al., 2015, section 2.1).
  """
  t = temperature
  log_q = jax.nn.log_softmax(student_logits_BxC.astype(jnp.float32) / t, -1)
  log_p = jax.nn.log_softmax(teacher_logits_BxC.astype(jnp.float32) / t, -1)
  return t * t * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _model_name(model: nn.Module) -> str:
  """The key of `models.MODELS` whose class built `model`."""
  return next((k for k, v in models.MODELS.items() if type(model) is v), "")


class Distill:
  """A student classifier distilled from a frozen teacher classifier.

  Config (`config.objective`):
    teacher: dict(model_name=..., model=..., init=...):
      model_name  a key of `models.MODELS`; default: the student's.
      model       the teacher's model fields (as `config.model`).
      init        dict(path, format="orbax", step=None): the weights, read
                  by `model_io.IMPORTERS[format]`: "orbax" (a workdir of
                  ours; step None: its newest checkpoint), "big_vision_npz",
                  "safetensors", "timm_vit". Scanned/looped ViT blocks are
                  converted to the teacher model's layout.
    temperature: T > 0 of the soft targets.
    alpha: weight in [0, 1] of the hard-label loss (softmax_xent on
      batch["labels"]); 0: pure distillation, the labels are not used.
    mixing: {mixup_alpha, cutmix_alpha, switch_prob}, applied once, before
      both models see the batch.

  Predict functions: the student's, as `Supervised` ("logits", "probs",
  "features"); evaluators never see the teacher.
  """

  input_keys = ("image", "labels")
  splits_over_microbatches = True  # Means over examples (teacher per slice).

  def __init__(self, model: nn.Module, /, *, teacher: Mapping[str, Any],
               temperature: float = 1.0, alpha: float = 0.0,
               mixing: Mapping[str, float] | None = None):
    teacher = dict(teacher.to_dict() if hasattr(teacher, "to_dict")
                   else teacher or {})
    checks.check_keys(teacher, TEACHER_KEYS, _WHERE)
    init = dict(teacher.get("init") or {})
    checks.check_keys(init, TEACHER_INIT_DEFAULTS, f"{_WHERE}.init")
    self.init_cfg = {**TEACHER_INIT_DEFAULTS, **init}
    if not self.init_cfg["path"]:
      raise checks.ConfigError(
          f"{_WHERE}.init.path is not set: give the teacher's workdir "
          "(format='orbax') or weights file, e.g. teacher=dict(model=..., "
          "init=dict(path='workdirs/teacher')).")
    checks.lookup(model_io.IMPORTERS, self.init_cfg["format"],
                  f"{_WHERE}.init.format")
    name = teacher.get("model_name") or _model_name(model)
    cls = checks.lookup(models.MODELS, name, f"{_WHERE}.model_name")
    checks.check_kwargs(cls, teacher.get("model") or {}, f"{_WHERE}.model")
    self.teacher = cls(**(teacher.get("model") or {}))
    student_c = getattr(model, "num_classes", None)
    teacher_c = getattr(self.teacher, "num_classes", None)
    if not student_c or not teacher_c:
      raise checks.ConfigError(
          "objective 'distill' needs classifiers with num_classes set: "
          f"config.model.num_classes={student_c!r}, "
          f"{_WHERE}.model.num_classes={teacher_c!r}.")
    if student_c != teacher_c:
      raise checks.ConfigError(
          f"The teacher has {teacher_c} output classes "
          f"({_WHERE}.model.num_classes) but the student has {student_c} "
          "(config.model.num_classes): distillation matches the two "
          "distributions class by class; make them equal.")
    if isinstance(temperature, bool) or not isinstance(
        temperature, (int, float)) or temperature <= 0:
      raise checks.ConfigError(
          f"config.objective.temperature={temperature!r}: it must be a "
          "number > 0 (1-4 is usual; 1 is the plain softmax).")
    if isinstance(alpha, bool) or not isinstance(
        alpha, (int, float)) or not 0 <= alpha <= 1:
      raise checks.ConfigError(
          f"config.objective.alpha={alpha!r}: the weight of the hard-label "
          "loss is a number in [0, 1] (0: pure distillation).")
    self.temperature, self.alpha = float(temperature), float(alpha)
    mixing = dict(mixing or {})
    checks.check_keys(mixing, supervised.MIXING_DEFAULTS,
                      "config.objective.mixing")
    self.mixing = {**supervised.MIXING_DEFAULTS, **mixing}
    self.model = model
    # The student's predict functions are a supervised classifier's.
    self._student = supervised.Supervised(model)

  def init(self, rng: jax.Array,
           batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> base.PyTree:
    return self._student.init(rng, batch_spec)

  # ------------------------------------------------------------ the teacher

  def abstract_frozen(self, batch_spec: Mapping[str, jax.ShapeDtypeStruct]
                      ) -> base.PyTree:
    image = batch_spec["image"]
    dummy = jax.ShapeDtypeStruct((1, *image.shape[1:]), image.dtype)
    return jax.eval_shape(
        lambda x: self.teacher.init(jax.random.key(0), x, train=False), dummy)

  def load_frozen(self, abstract: base.PyTree
                  ) -> tuple[base.PyTree, dict[str, Any]]:
    """The teacher's variables on `abstract`'s shardings, and their source.

    Params come through `model_io.IMPORTERS` and `surgery.fit` (which names
    every leaf that does not fit the teacher's model config); non-parameter
    collections (BatchNorm statistics) only from our own runs.
    """
    cfg = self.init_cfg
    path, fmt, step = str(cfg["path"]), cfg["format"], cfg["step"]
    what = f"{_WHERE}.init.path"
    if fmt == "orbax":  # Resolves step None to the newest checkpoint's.
      step = _newest_step(path, step, what)
    elif not _file_exists(path):
      raise checks.ConfigError(
          f"{what}: '{path}' does not exist. Give the teacher's weights "
          f"file of format '{fmt}' (or a workdir with format='orbax').")
    abstract = dict(abstract)
    abstract_params = abstract.pop("params")
    fitted, _ = surgery.fit(model_io.load(fmt, path, step), abstract_params,
                            what=f"{_WHERE}.init")
    named, treedef = tree_paths.flatten(abstract_params)
    params = tree_paths.unflatten(treedef, list(named), {
        n: jax.device_put(fitted[n], x.sharding) for n, x in named.items()})
    model_state = {}
    if jax.tree.leaves(abstract):
      if fmt != "orbax":
        raise checks.ConfigError(
            f"The teacher has state besides its params ({', '.join(abstract)}"
            "), which only our own runs hold: use format='orbax' with the "
            "workdir that trained it, or a teacher model without it.")
      _, loaded = resume.load_variables(path, step, {"model_state": abstract},
                                        what=what)
      model_state = loaded["model_state"]
    source = {"path": path, "format": fmt, "step": step}
    return {"params": params, **model_state}, source

  def frozen_apply(self, frozen: base.PyTree, batch: base.Batch) -> jax.Array:
    """Teacher logits [B, C] of batch["image"], inference mode, no
    gradient."""
    variables = jax.lax.stop_gradient(frozen)
    logits, _ = self.teacher.apply(variables, batch["image"], train=False)
    return logits.astype(jnp.float32)

  # ------------------------------------------------------------------- loss

  def loss(self, params: base.PyTree, model_state: base.PyTree,
           batch: base.Batch, rng: jax.Array, frozen: base.PyTree
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], base.PyTree]]:
    images, labels = batch["image"], batch["labels"]
    mix_rng, dropout_rng = jax.random.split(rng)
    if self.mixing["mixup_alpha"] > 0 or self.mixing["cutmix_alpha"] > 0:
      images, labels = mixing_lib.mix(mix_rng, images, labels, **self.mixing)
    teacher_logits = self.frozen_apply(frozen, {"image": images})
    (logits, _), new_model_state = base.apply_model(
        self.model, params, model_state, images, train=True, rng=dropout_rng)
    logits = logits.astype(jnp.float32)
    kd = jnp.mean(kl_loss(logits, teacher_logits, self.temperature))
    hard = jnp.mean(losses.softmax_xent(logits, labels))
    loss = (1 - self.alpha) * kd + self.alpha * hard
    agree = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
    return loss, ({"train/loss": loss, "train/kd_loss": kd,
                   "train/hard_loss": hard, "train/teacher_agreement": agree},
                  new_model_state)

  @functools.cached_property
  def predict_fns(self) -> Mapping[str, base.PredictFn]:
    return self._student.predict_fns


def _newest_step(path: str, step: int | None, what: str) -> int:
  """`step`, or the newest of the run at `path` (ConfigError if none)."""
  steps = ckpt_lib.committed_steps(resume.find_checkpoints(path, what))
  return steps[-1] if step is None else int(step)


def _file_exists(path: str) -> bool:
  # big_vision_npz accepts `file.npz:sub/tree`.
  return resume.tf_exists(path) or (
      ":" in path and resume.tf_exists(path.rsplit(":", 1)[0]))
