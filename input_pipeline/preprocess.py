"""big_vision's preprocessing mini-language, parsed against `ops.OPS`.

A spec chains ops with "|", each a name or a call with literal arguments:

  decode|resize(224)|value_range(-1, 1)|onehot(1000, key="label")

`validate(spec)` checks a spec when the config loads (unknown op, arguments
that do not fit the op, syntax), `build(spec)` returns `fn(example, seed)`.
Arguments are read with `ast.literal_eval`: nothing in a spec is executed.
Empty sections ("a||b", a leading or trailing "|") are skipped, so specs can
be glued from pieces as in big_vision configs.

Randomness: before op i, `build`'s function sets
`data["_rng"] = stateless_fold_in(seed, i)`; random ops read it with
stateless TF ops, and it is removed from the output. The same (example, seed)
thus always gives the same output, whatever ran before.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from big_vision_like import checks
from input_pipeline.ops import OPS
from input_pipeline.ops import Op
from input_pipeline.ops.general import RNG_KEY

ParsedOp = tuple[str, tuple[Any, ...], dict[str, Any]]
PreprocessFn = Callable[[dict[str, tf.Tensor], tf.Tensor],
                        dict[str, tf.Tensor]]


def _split(spec: str) -> list[str]:
  """Splits `spec` at the "|" outside brackets and string literals."""
  pieces, start, depth, quote = [], 0, 0, None
  i = 0
  while i < len(spec):
    ch = spec[i]
    if quote:
      if ch == "\\":
        i += 1  # Skip the escaped character.
      elif ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      pieces.append(spec[start:i])
      start = i + 1
    i += 1
  pieces.append(spec[start:])
  return [p.strip() for p in pieces if p.strip()]


def _literal(node: ast.AST, piece: str, spec: str) -> Any:
  try:
    return ast.literal_eval(node)
  except ValueError as e:
    raise checks.ConfigError(
        f"pp op '{piece}' in spec {spec!r}: argument "
        f"'{ast.unparse(node)}' is not a Python literal (numbers, strings, "
        "tuples, lists, dicts, True/False/None).") from e


def _parse_piece(piece: str, spec: str) -> ParsedOp:
  """Parses one `name` or `name(args)` section."""
  try:
    expr = ast.parse(piece, mode="eval").body
  except SyntaxError as e:
    raise checks.ConfigError(
        f"Syntax error in pp op '{piece}' of spec {spec!r}: {e.msg}.") from e
  if isinstance(expr, ast.Name):
    return expr.id, (), {}
  if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
    raise checks.ConfigError(
        f"pp op '{piece}' in spec {spec!r} is not an op name or a call like "
        "resize(224).")
  if any(isinstance(a, ast.Starred) for a in expr.args) or any(
      kw.arg is None for kw in expr.keywords):
    raise checks.ConfigError(
        f"pp op '{piece}' in spec {spec!r}: *args and **kwargs are not "
        "allowed; write the arguments out.")
  args = tuple(_literal(a, piece, spec) for a in expr.args)
  kwargs = {kw.arg: _literal(kw.value, piece, spec) for kw in expr.keywords}
  return expr.func.id, args, kwargs


def parse(spec: str) -> list[ParsedOp]:
  """Parses `spec` into [(op name, args, kwargs)], in order.

  Raises:
    ConfigError: on a syntax error or a non-literal argument.
  """
  return [_parse_piece(piece, spec) for piece in _split(spec or "")]


def _render_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
  return [*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())]


def _make_op(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             spec: str) -> Op:
  """Looks up, checks and calls the factory of one parsed op."""
  try:
    factory = checks.lookup(OPS, name, "preprocessing op")
  except checks.ConfigError as e:
    raise checks.ConfigError(f"{e} In pp spec {spec!r}.") from e
  signature = inspect.signature(factory)
  call = f"{name}({', '.join(_render_args(args, kwargs))})"
  try:
    signature.bind(*args, **kwargs)
  except TypeError as e:
    raise checks.ConfigError(
        f"Bad arguments in pp op {call} of spec {spec!r}: {e}. The op's "
        f"signature is {name}{signature}.") from e
  try:
    return factory(*args, **kwargs)
  except (ValueError, TypeError) as e:  # ConfigError is a ValueError.
    raise checks.ConfigError(
        f"Bad value in pp op {call} of spec {spec!r}: {e}") from e


def unparse(ops: list[ParsedOp]) -> str:
  """The spec of parsed `ops` (`parse(unparse(ops)) == ops`)."""
  return "|".join(
      name if not args and not kwargs else
      f"{name}({', '.join(_render_args(args, kwargs))})"
      for name, args, kwargs in ops)


def drop_ops(spec: str, names: tuple[str, ...]) -> str:
  """`spec` without the ops called `names` (e.g. the label ops of an eval
  spec, to preprocess unlabelled images the same way)."""
  return unparse([op for op in parse(spec) if op[0] not in names])


def validate(spec: str) -> None:
  """Raises ConfigError if `spec` does not parse or does not fit the ops.

  Checks op names (suggesting the closest), that the arguments bind to each
  op's signature, and the values the op factories check (resize methods,
  policy names, ...). Runs no TF computation.
  """
  for name, args, kwargs in parse(spec):
    _make_op(name, args, kwargs, spec)


def build(spec: str) -> PreprocessFn:
  """Returns `fn(example, seed)` that applies the ops of `spec` in order.

  Args:
    spec: the pp spec; empty or None gives the identity.

  Returns:
    fn(example, seed): `example` is a dict of tensors for one example (no
    batch dimension), `seed` an int32/int64 tensor of shape [2]. Plain TF
    code, to be wrapped in tf.function / tf.data by the caller. The input
    dict is not modified.
  """
  ops = [_make_op(name, args, kwargs, spec)
         for name, args, kwargs in parse(spec)]

  # Ops are plain graph code (Python control flow only on static values), so
  # autograph has nothing to convert; skipping it saves seconds of tracing.
  @tf.autograph.experimental.do_not_convert
  def _preprocess(example: dict[str, tf.Tensor],
                  seed: tf.Tensor) -> dict[str, tf.Tensor]:
    seed = tf.convert_to_tensor(seed)
    data = dict(example)
    for i, op in enumerate(ops):
      data[RNG_KEY] = tf.random.experimental.stateless_fold_in(seed, i)
      data = op(data)
    data.pop(RNG_KEY, None)
    return data

  return _preprocess
