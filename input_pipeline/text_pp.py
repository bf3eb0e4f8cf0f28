"""The text part of a pp spec: what evaluators reuse, checkpoints record and
the setup checks against the text tower.

The text part of a train pp is its one `tokenize` op with the text ops that
feed its input key (`captions`, `lower`), e.g. in

  decode|resize(224)|lower(key="caption")|tokenize(64, key="caption",
      key_result="text", eos="sticky", pad_value="eos")|keep("image", "text")

it is `lower(key="caption")|tokenize(64, key="caption", ...)`. From it:

  prompt_pp     one prompt {"text": str} -> {"text": int32 [L]} (zero-shot);
  captions_pp   every caption of a record -> [K, L] tokens and a mask
                (retrieval), reading the record's own caption key;
  spec          the tokenizer spec saved in checkpoint metadata (kind,
                model file hash, max_len, lower-casing, EOS mode, pad id);
  check_tower   refuses a text tower that pools "last" over a tokenization
                whose last position can be padding, and a vocabulary smaller
                than the tokenizer's.

Rendered specs spell out every argument, so they read the same whatever the
defaults become.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from big_vision_like import checks
from input_pipeline import preprocess
from input_pipeline import tokenizers
from input_pipeline.ops import OPS
from input_pipeline.ops import text as text_ops

Chain = list[tuple[str, dict[str, Any]]]


def _bound(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
           ) -> dict[str, Any]:
  bound = inspect.signature(OPS[name]).bind(*args, **kwargs)
  bound.apply_defaults()
  return dict(bound.arguments)


def tokenize_ops(spec: str) -> list[dict[str, Any]]:
  """The arguments (defaults filled in) of every `tokenize` op of `spec`."""
  return [_bound(name, args, kwargs)
          for name, args, kwargs in preprocess.parse(spec)
          if name == "tokenize"]


def chain(spec: str, where: str = "config.input.pp") -> Chain:
  """[(op name, its arguments)] of the text part of `spec`, in order.

  Raises:
    ConfigError: `spec` has no `tokenize` op, or several.
  """
  ops = preprocess.parse(spec)
  found = [i for i, (name, _, _) in enumerate(ops) if name == "tokenize"]
  if len(found) != 1:
    raise checks.ConfigError(
        f"{where}={spec!r} has {len(found)} tokenize ops, so it has no single "
        "text preprocessing to reuse: give the evaluator's text pp "
        "explicitly (its pp_txt field).")
  out = [("tokenize", _bound(*ops[found[0]]))]
  key = out[0][1]["key"]
  for name, args, kwargs in reversed(ops[:found[0]]):
    if name == "lower" and _bound(name, args, kwargs)["key"] == key:
      out.insert(0, (name, _bound(name, args, kwargs)))
    elif name == "captions" and _bound(name, args, kwargs)["key_result"] == key:
      out.insert(0, (name, _bound(name, args, kwargs)))
      key = out[0][1]["key"]
  return out


def render(ops: Chain) -> str:
  return "|".join(
      f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
      for name, kwargs in ops)


def prompt_pp(train_pp: str) -> str:
  """The text part of `train_pp` for one prompt: {"text": str} ->
  {"text": int32 [L]} (lower-casing and tokenization as in training)."""
  out = []
  for name, kwargs in chain(train_pp):
    if name == "lower":
      out.append((name, {**kwargs, "key": "text"}))
    elif name == "tokenize":
      out.append((name, {**kwargs, "key": "text", "key_result": "text",
                         "sample_if_multi": False}))
  return render(out)


def captions_pp(train_pp: str, key_result: str,
                caption_key: str | None = None) -> str:
  """The text part of `train_pp` tokenizing every caption of a record into
  `key_result` ([K, L]; with a mask "<key_result>_mask" when the record or a
  `captions` op has one).

  Args:
    train_pp: the train pp spec.
    key_result: where the tokens go.
    caption_key: the record's caption key, if not the one training reads.
  """
  ops = chain(train_pp)
  raw = ops[0][1]["key"]
  out = []
  for name, kwargs in ops:
    if caption_key is not None and kwargs["key"] == raw:
      kwargs = {**kwargs, "key": caption_key}
    if name == "tokenize":
      kwargs = {**kwargs, "key_result": key_result, "sample_if_multi": False}
    out.append((name, kwargs))
  return render(out)


def spec(train_pp: str) -> dict[str, Any] | None:
  """The tokenizer spec of `train_pp` for checkpoint metadata (None when it
  tokenizes nothing): the tokenizer's fingerprint (kind, vocab_size, model
  path and SHA-256), max_len, lower, eos, pad_value and the resolved pad and
  EOS ids, and the prompt pp evaluators derive from it."""
  if not tokenize_ops(train_pp):
    return None
  ops = chain(train_pp)
  tok_args = ops[-1][1]
  tok = tokenizers.get(tok_args["tokenizer"], tok_args["model"])
  return {
      **tok.fingerprint(),
      "max_len": tok_args["max_len"],
      "lower": tok_args["lower"] or any(n == "lower" for n, _ in ops),
      "eos": tok_args["eos"], "pad_value": tok_args["pad_value"],
      "pad_id": text_ops.pad_id_of(tok, tok_args["pad_value"]),
      "eos_id": tok.eos_id, "prompt_pp": prompt_pp(train_pp),
  }


def check_tower(pool_type: str, vocab_size: int,
                specs: Mapping[str, str]) -> None:
  """Checks every tokenize op of `specs` ({where: pp spec}) against a text
  tower pooling `pool_type` over `vocab_size` embeddings.

  Raises:
    ConfigError: pool_type "last" with a tokenization that can leave
      padding (not EOS) in the last position, or token ids beyond the
      tower's vocabulary.
  """
  for where, pp in specs.items():
    for args in tokenize_ops(pp):
      tok = tokenizers.get(args["tokenizer"], args["model"])
      pad_id = text_ops.pad_id_of(tok, args["pad_value"])
      if pool_type == "last" and not (args["eos"] == "sticky"
                                      and pad_id == tok.eos_id):
        raise checks.ConfigError(
            f"model.text.pool_type='last' reads each text's last token, but "
            f"{where} tokenizes with eos={args['eos']!r} and pads with id "
            f"{pad_id} (EOS is {tok.eos_id}): the last token of a short text "
            "is padding. Tokenize with eos='sticky', pad_value='eos' "
            "(big_vision's sticky EOS, as SigLIP), or pool differently "
            "(pool_type='map' or 'gap').")
      if tok.vocab_size > vocab_size:
        raise checks.ConfigError(
            f"{where} tokenizes into {tok.vocab_size} ids "
            f"({args['tokenizer']}), but model.text.vocab_size={vocab_size}: "
            f"set model.text.vocab_size={tok.vocab_size}.")


def check_same_tokenizer(saved: Mapping[str, Any] | None,
                         current: Mapping[str, Any] | None,
                         directory: str) -> None:
  """Refuses to go on from checkpoints whose tokenizer spec (metadata) gives
  other ids than the config's: another kind, vocabulary, model file content,
  length, case or EOS/pad handling. Checkpoints without a spec pass.

  Raises:
    ConfigError: naming the fields that differ.
  """
  if saved is None:
    return
  if current is None:
    raise checks.ConfigError(
        f"The checkpoints in '{directory}' were trained on text tokenized as "
        f"{dict(saved)}, but config.input.pp tokenizes nothing. Restore the "
        "train pp's tokenize op.")
  ignored = ("model", "prompt_pp")  # A moved file with the same bytes is ok.
  diff = {k: (saved.get(k), current.get(k))
          for k in sorted(set(saved) | set(current))
          if k not in ignored and saved.get(k) != current.get(k)}
  if diff:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    raise checks.ConfigError(
        f"The checkpoints in '{directory}' were trained with another "
        f"tokenization than config.input.pp gives ({shown}). Use the "
        "tokenizer (and model file) the run was trained with.")
