"""Config validation: unknown keys fail at start-up, naming the closest valid key.

Defaults live with the code that uses them (dataclass fields of models and
evaluators, signatures of optimizers and preprocessing ops, and `defaults()` in
`big_vision_like/trainers/train.py` for the top level). This module only
checks user-given keys against those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# The error type and key checks live in the ground module `checks`; they are
# re-exported here, where most callers look for them.
from big_vision_like.checks import ConfigError  # noqa: F401
from big_vision_like.checks import accepted_kwargs  # noqa: F401
from big_vision_like.checks import check_keys
from big_vision_like.checks import check_kwargs  # noqa: F401
from big_vision_like.checks import closest  # noqa: F401
from big_vision_like.checks import lookup  # noqa: F401
from big_vision_like.checks import unknown_key_error


# ---------------------------------------------------------------------------
# Top-level defaults, loading and overrides.
# ---------------------------------------------------------------------------

# Sections whose keys are checked here. The schemas of `model`, `optim`,
# `schedule` and each `evals.<name>` belong to the code that consumes them and
# are checked there, at start-up, before any step runs.
# `input.data` is checked by `input_pipeline.sources.from_config`: its keys
# depend on data.kind.
_NESTED_DEFAULTS = ("input", "sharding", "profile")

# Keys that moved: the old name -> where it lives now.
_MOVED = {"loss": "config.objective.loss", "mixing": "config.objective.mixing"}


def defaults() -> "ml_collections.ConfigDict":
  """Every top-level key a training config may set, with its default."""
  import ml_collections  # Local: keeps this module importable without it.
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = None       # Exactly one of total_steps / total_epochs.
  c.total_epochs = None
  c.input = dict(
      data={},               # The source: see input_pipeline.sources.
      pp=None,               # Preprocessing spec, e.g. "decode|resize(224)|...".
      batch_size=None,       # Global batch size, over all processes.
      num_threads=2,         # Threads preprocessing batches.
      prefetch=2,            # Batches preprocessed ahead.
      prefetch_to_device=2)  # Batches copied to the devices ahead (0: none).
  # Forward and backward over slices of this many examples, gradients summed
  # in one step: less activation memory, the same update (None: one pass).
  c.microbatch_size = None
  c.mock_examples = 0        # >0: smoke mode on mock data of the real spec.
  c.model_name = None        # A key of big_vision_like.models.MODELS.
  c.model = {}
  # name: a key of big_vision_like.objectives.OBJECTIVES; the other keys are
  # that objective's own fields (e.g. loss=, mixing= for "supervised").
  c.objective = dict(name="supervised")
  c.optim = dict(name="adamw", lr=1e-3)
  c.schedule = dict(decay_type="cosine", warmup_steps=0)
  c.mesh = [("data", -1)]
  c.dcn_mesh = None
  c.sharding = dict(preset="dp", overrides=[])
  c.evals = {}
  # At the end of training, write the evaluation report of the final
  # checkpoint (python -m big_vision_like.report) and its plots to TensorBoard.
  c.report_at_end = False
  # A profiler trace (TensorBoard's profile plugin, Perfetto) of num_steps
  # train steps from start_step (None: no trace), into <workdir>/profile.
  c.profile = dict(start_step=None, num_steps=3)
  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.keep_ckpts = 3
  c.keep_ckpt_every_steps = None
  c.max_consecutive_nonfinite = 10
  c.allow_config_change = False
  # Fine-tuning: dict(path=<workdir or checkpoints dir, or a file>, step=None,
  # partial=False, format="orbax" (or a key of model_io.IMPORTERS),
  # resample_posemb=False, reinit_head=False) loads params from another run
  # or a file when starting fresh (trainers/resume.py, model_io/surgery.py).
  c.init_from = None
  return c


def _merge_checked(given: Mapping[str, Any], default: Mapping[str, Any],
                   path: str = "") -> dict[str, Any]:
  """`default` updated with `given`, recursing into the `_NESTED_DEFAULTS`."""
  for key in given:
    if not path and key in _MOVED:
      raise ConfigError(f"config.{key} moved to {_MOVED[key]} (the objective "
                        "section holds its own fields): write config.objective"
                        f" = dict(name='supervised', {key}=...).")
  check_keys(given, default, f"config.{path}" if path else "config")
  out = dict(default)
  for key, value in given.items():
    sub = f"{path}.{key}" if path else key
    if sub in _NESTED_DEFAULTS and isinstance(value, Mapping):
      value = _merge_checked(value, default[key], sub)
    out[key] = value
  return out


def resolve(config: Mapping[str, Any]) -> "ml_collections.ConfigDict":
  """Merges `config` over `defaults()`, rejecting unknown top-level keys.

  Returns a new, unlocked ConfigDict. Keys of the nested sections owned by
  other modules (model, optim, schedule, evals.*) pass through unchanged.
  """
  import ml_collections
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  merged = _merge_checked(given, defaults().to_dict())
  if (merged["total_steps"] is None) == (merged["total_epochs"] is None):
    raise ConfigError("Set exactly one of config.total_steps and "
                      "config.total_epochs.")
  if not isinstance(merged["objective"], Mapping) or "name" not in merged[
      "objective"]:
    raise ConfigError(
        f"config.objective={merged['objective']!r}: it is a section with a "
        "name and that objective's fields, e.g. dict(name='supervised', "
        "loss='softmax_xent').")
  if merged["model_name"] is None:
    raise ConfigError("config.model_name is not set; choose one of the keys "
                      "of big_vision_like.models.MODELS (e.g. 'vit').")
  return ml_collections.ConfigDict(merged)


def parse_value(text: str) -> Any:
  """A Python literal if `text` is one, else the string itself."""
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def split_overrides(argv: list[str], flag: str = "config"
                    ) -> tuple[list[str], dict[str, Any]]:
  """Splits `--config.a.b=value` arguments off `argv`.

  Returns the remaining argv and {"a.b": parsed value}.
  """
  rest, overrides = [], {}
  prefix = f"--{flag}."
  it = iter(argv)
  for arg in it:
    if arg.startswith(prefix):
      key, eq, value = arg[len(prefix):].partition("=")
      if not eq:
        value = next(it, None)
        if value is None:
          raise ConfigError(f"Override {arg} has no value; write {arg}=VALUE.")
      overrides[key] = parse_value(value)
    else:
      rest.append(arg)
  return rest, overrides


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> None:
  """Sets each dotted key of `overrides` in `config` (a ConfigDict), in place.

  Apply to a `resolve`d config: every top-level and default nested key exists
  then; keys below `model`, `optim` and the like may be new and are validated
  later by their owners.
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    moved = dotted.split(".")[0]
    if moved in _MOVED:
      raise ConfigError(f"--config.{dotted}: config.{moved} moved to "
                        f"{_MOVED[moved]}; write --{_MOVED[moved]}"
                        f"{dotted[len(moved):]}=...")
    node, where = config, "config"
    for part in parents:
      if part not in node:
        raise unknown_key_error(part, node.keys(), where)
      node, where = node[part], f"{where}.{part}"
    if where == "config" and leaf not in node:
      raise unknown_key_error(leaf, node.keys(), where)
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"Override --config.{dotted}={value!r}: {e}") from e


def load(spec: str) -> Any:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
  import importlib.util
  import os
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"Config file '{path}' does not exist. Pass "
                      "--config=configs/<name>.py, e.g. configs/demo.py.")
  module_spec = importlib.util.spec_from_file_location("_bvl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"Config file '{path}' has no get_config(arg) function.")
  return module.get_config(arg or None)


def load_resolved(spec: str, overrides: Mapping[str, Any]
                  ) -> "ml_collections.ConfigDict":
  """`load(spec)` merged over `defaults()`, then `overrides` applied."""
  config = resolve(load(spec))
  apply_overrides(config, overrides)
  return config


def define_run_flags(flags: Any) -> None:
  """Defines --config, --workdir and --step on `flags` (absl.flags): the
  flags of every command that reads a run's checkpoint."""
  flags.DEFINE_string("config", None, "Config file of the run, e.g. "
                      "configs/demo.py[:arg]; --config.a.b=value overrides.")
  flags.DEFINE_string("workdir", None, "The run's workdir (its checkpoints).")
  flags.DEFINE_integer("step", None, "The checkpoint step (default: newest).")


def run_command(run: Callable[["ml_collections.ConfigDict"], int],
                spec: str, overrides: Mapping[str, Any], *, exit_config: int,
                failures: Mapping[type[Exception], tuple[str, int]] | None
                = None) -> int:
  """The body of a command's `main`: `run(load_resolved(spec, overrides))`.

  An error the user can fix ends the command with one line on stderr and its
  exit code, not a traceback: a ConfigError prints "Error: <message>" and
  returns `exit_config`; `failures` adds error types, each with its prefix
  and exit code (e.g. {CheckpointError: ("Checkpoint failure", 4)}).

  Returns:
    The exit code: `run`'s own, or the failure's.
  """
  import sys

  table = {ConfigError: ("Error", exit_config), **(failures or {})}
  try:
    return run(load_resolved(spec, overrides))
  except tuple(table) as e:
    prefix, code = next(v for t, v in table.items() if isinstance(e, t))
    print(f"{prefix}: {e}", file=sys.stderr)
    return code


def absl_flags_parser(flag_values: Any, overrides: dict[str, Any]
                      ) -> Callable[[list[str]], list[str]]:
  """An `absl.app.run(flags_parser=...)` that takes the `--config.a.b=value`
  overrides off argv into `overrides`, then parses the rest with absl.

  Not ml_collections.config_flags: it applies overrides to the config file's
  own dict, before our defaults are merged, so `--config.log_every_steps=5`
  or a new model field (`--config.model.dropout=0.1`) would be refused when
  the file does not set them.
  """
  import sys

  def parse(argv: list[str]) -> list[str]:
    try:
      rest, parsed = split_overrides(argv)
    except ConfigError as e:
      sys.exit(f"Error: {e}")
    overrides.update(parsed)
    return flag_values(rest)

  return parse
