"""Device meshes and logical-axis sharding rules for parameters, state and data.

Models name the axes of every parameter with logical names
(`nn.with_logical_partitioning(init, ("embed", "mlp"))`) and constrain
activations with `nn.with_logical_constraint(x, ("batch", "length", "embed"))`.
A rules preset maps those names to mesh axes; the mesh has named axes, usually
`("data", "fsdp", "tensor")`:

  dp       parameters replicated, the batch split over every mesh axis.
  fsdp     ZeRO-3: parameters and optimizer state split over "fsdp" along their
           "embed" axis (ResNets: "conv_out"), the batch over ("data", "fsdp").
  fsdp_tp  fsdp plus Megatron-style tensor parallelism over "tensor": the MLP
           hidden axis and the attention heads are split.

Rules are applied in order and a mesh axis is used at most once per array, so
the activation ("batch", "length", "embed") under fsdp gets P(("data", "fsdp"),
None, None): "batch" claims "fsdp" before "embed" can. Mesh axes a preset names
but the mesh lacks act as axes of size 1.

Typical use in a trainer:

  mesh = sharding.make_mesh([("data", -1), ("fsdp", 8), ("tensor", 1)])
  rules = sharding.rules_preset("fsdp")
  params, params_sh = sharding.init_sharded(init_fn, mesh, rules, rng)
  opt_sh = sharding.opt_state_shardings(tx, jax.eval_shape(tx.init, params),
                                        params_sh, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  with sharding.use_mesh(mesh, rules):
    step = jax.jit(train_step, in_shardings=..., out_shardings=...)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from big_vision_like import config as config_lib

MeshAxes = str | tuple[str, ...] | None
LogicalRules = tuple[tuple[str, MeshAxes], ...]
PyTree = Any

# Logical names the models use and that every preset keeps unsharded.
_UNSHARDED = (("length", None), ("kv", None), ("classes", None),
              ("layers", None), ("conv_in", None))

RULES_PRESETS: dict[str, LogicalRules] = {
    "dp": (("batch", ("data", "fsdp", "tensor")), ("embed", None),
           ("mlp", None), ("heads", None), ("conv_out", None)) + _UNSHARDED,
    "fsdp": (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", None),
             ("heads", None), ("conv_out", "fsdp")) + _UNSHARDED,
    "fsdp_tp": (("batch", ("data", "fsdp")), ("embed", "fsdp"),
                ("mlp", "tensor"), ("heads", "tensor"),
                ("conv_out", "fsdp")) + _UNSHARDED,
}


def rules_preset(name: str) -> LogicalRules:
  """The rules of preset `name`; ConfigError naming the closest if unknown."""
  return config_lib.lookup(RULES_PRESETS, name, "sharding rules preset")


# ------------------------------------------------------------------ mesh


def _resolve_shape(cfg: Sequence[tuple[str, int]], total: int, what: str,
                   unit: str = "devices") -> list[int]:
  """Sizes of `cfg`, its (at most one) -1 filled so they multiply to total."""
  sizes = []
  for entry in cfg:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[0], str) or not isinstance(entry[1], int)):
      raise config_lib.ConfigError(
          f"{what} entries must be (axis_name, size) pairs with an int size, "
          f"got {entry!r} in {list(cfg)}.")
    if entry[1] == 0 or entry[1] < -1:
      raise config_lib.ConfigError(
          f"{what} axis '{entry[0]}' has size {entry[1]}: use a positive size, "
          "or -1 for 'all remaining devices'.")
    sizes.append(entry[1])
  if sizes.count(-1) > 1:
    raise config_lib.ConfigError(
        f"{what} {list(cfg)} has more than one -1 axis: give every axis but "
        "one an explicit size.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise config_lib.ConfigError(
          f"{what} {list(cfg)}: the fixed axes multiply to {known}, which does "
          f"not divide the {total} {unit}. Change the sizes so their product "
          f"divides {total}.")
    sizes[sizes.index(-1)] = total // known
  elif known != total:
    raise config_lib.ConfigError(
        f"{what} {list(cfg)} multiplies to {known} but there are {total} "
        f"{unit}. Change the sizes so they multiply to {total}, or set one "
        "axis to -1.")
  return sizes


def _axis_names(cfg: Sequence[tuple[str, int]]) -> list[Any]:
  return [e[0] if isinstance(e, (tuple, list)) and e else e for e in cfg]


def make_mesh(mesh_cfg: Sequence[tuple[str, int]],
              dcn_mesh_cfg: Sequence[tuple[str, int]] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with named Auto axes, e.g. [("data", -1), ("fsdp", 1)].

  Args:
    mesh_cfg: (axis_name, size) pairs; one size may be -1 for "the rest". With
      `dcn_mesh_cfg`, these are the sizes within one slice (ICI).
    dcn_mesh_cfg: (axis_name, size) pairs across TPU slices (elsewhere, e.g.
      multi-node GPU: across hosts), i.e. over the slower data-center
      network; the mesh_cfg names in the same order. Each mesh axis then has
      size ici * dcn. One size may be -1 ("all slices").
    devices: the devices to use; defaults to `jax.devices()`.

  Returns:
    A `Mesh` whose axes all have `AxisType.Auto`, as sharding constraints need.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = _axis_names(mesh_cfg)
  if len(set(names)) != len(names):
    raise config_lib.ConfigError(
        f"mesh {list(mesh_cfg)} repeats an axis name; name each axis once.")
  if dcn_mesh_cfg is None:
    shape = _resolve_shape(mesh_cfg, len(devices), "mesh")
    device_array = mesh_utils.create_device_mesh(shape, devices)
  else:
    if _axis_names(dcn_mesh_cfg) != names:
      raise config_lib.ConfigError(
          f"dcn_mesh {list(dcn_mesh_cfg)} must have the mesh axes {names} in "
          "the same order (use size 1 for axes that do not cross slices).")
    # Only TPU slices are linked by DCN; elsewhere, hosts are.
    by_process = (devices[0].platform != "tpu"
                  or getattr(devices[0], "slice_index", None) is None)
    granules = {d.process_index if by_process else d.slice_index
                for d in devices}
    dcn_shape = _resolve_shape(dcn_mesh_cfg, len(granules), "dcn_mesh",
                               "hosts" if by_process else "slices")
    shape = _resolve_shape(mesh_cfg, len(devices) // len(granules), "mesh",
                           "devices per host" if by_process
                           else "devices per slice")
    device_array = mesh_utils.create_hybrid_device_mesh(
        shape, dcn_shape, devices, process_is_granule=by_process)
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  return Mesh(device_array, tuple(names), axis_types=auto)


def rules_for_mesh(rules: LogicalRules, mesh: Mesh) -> LogicalRules:
  """`rules` without the mesh axes `mesh` lacks (they act as size-1 axes)."""
  def keep(axes: MeshAxes) -> MeshAxes:
    if axes is None:
      return None
    if isinstance(axes, str):
      return axes if axes in mesh.shape else None
    kept = tuple(a for a in axes if a in mesh.shape)
    return kept or None
  return tuple((logical, keep(axes)) for logical, axes in rules)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `mesh` current and `rules` the rules of `with_logical_constraint`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
    yield


# ------------------------------------------------------------ shardings


def _axes_size(mesh: Mesh, axes: MeshAxes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> tuple[P, bool]:
  """(`spec` shrunk to fit `shape`, whether anything had to change).

  A dim whose mesh axes do not divide it is replicated; a tuple of mesh axes
  keeps its longest prefix that divides, so ("data", "fsdp") on a dim
  divisible by |data| only becomes "data".
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    while axes and dim % _axes_size(mesh, axes):
      axes = None if isinstance(axes, str) else axes[:-1] or None
    fitted.append(axes)
  while fitted and fitted[-1] is None:
    fitted.pop()
  changed = tuple(fitted) != tuple(spec)[:len(fitted)] or any(
      axes is not None for axes in tuple(spec)[len(fitted):])
  return P(*fitted), changed


def _path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _override_spec(spec_like: Any, mesh: Mesh, where: str) -> P:
  """A PartitionSpec from an override value: P, tuple/list of axes or None."""
  if spec_like is None:
    return P()
  spec = spec_like
  if not isinstance(spec, P):  # Configs may hold lists where tuples go.
    spec = P(*(tuple(a) if isinstance(a, list) else a for a in spec))
  for axes in spec:
    for axis in ((axes,) if isinstance(axes, str) else axes or ()):
      if axis not in mesh.shape:
        raise config_lib.ConfigError(
            f"Sharding override for '{where}' names mesh axis '{axis}', but "
            f"the mesh axes are {tuple(mesh.shape)}.")
  return spec


def param_shardings(
    abstract_params_boxed: PyTree, mesh: Mesh, rules: LogicalRules,
    overrides: Sequence[tuple[str, Any]] = ()) -> PyTree:
  """NamedShardings for params, from their logical axis names.

  Args:
    abstract_params_boxed: params (usually from `jax.eval_shape(init)`) whose
      leaves are `nn.LogicallyPartitioned`; plain leaves are replicated.
    mesh: the device mesh.
    rules: logical-to-mesh rules, e.g. `RULES_PRESETS["fsdp"]`.
    overrides: (regex, spec) pairs matched with `re.fullmatch` against
      "/"-joined param paths such as "Transformer/encoderblock_0/MlpBlock_0/
      Dense_0/kernel"; the first match wins. A spec is a PartitionSpec, a
      tuple of mesh axes per dim, or None for replicated. Every regex must
      match some param.

  Returns:
    The unboxed params' tree structure with a NamedSharding per leaf. Mesh axes
    that do not divide a rule-derived dimension are dropped for that dim.
  """
  rules = rules_for_mesh(rules, mesh)
  logical = nn.get_partition_spec(abstract_params_boxed)
  shapes = nn.unbox(abstract_params_boxed)
  compiled = []
  for regex, spec in overrides:
    try:
      compiled.append((re.compile(regex), spec))
    except re.error as e:
      raise config_lib.ConfigError(
          f"Sharding override regex {regex!r} is invalid: {e}.") from None
  used = set()

  def leaf_sharding(path, shape_leaf, logical_spec):
    where = _path_str(path)
    for i, (regex, spec_like) in enumerate(compiled):
      if regex.fullmatch(where):
        used.add(i)
        spec = _override_spec(spec_like, mesh, where)
        if (len(spec) > len(shape_leaf.shape)
            or _fit_spec(spec, shape_leaf.shape, mesh)[1]):
          raise config_lib.ConfigError(
              f"Sharding override {spec} for '{where}' does not fit its shape "
              f"{shape_leaf.shape}: every sharded dim must be divisible by "
              "the size of its mesh axes.")
        return NamedSharding(mesh, spec)
    spec = nn.logical_to_mesh_axes(tuple(logical_spec), rules)
    fitted, changed = _fit_spec(spec, shape_leaf.shape, mesh)
    if changed:
      shrunk.append(f"{where} {shape_leaf.shape}: {spec} -> {fitted}")
    return NamedSharding(mesh, fitted)

  shrunk = []
  shardings = jax.tree_util.tree_map_with_path(leaf_sharding, shapes, logical)
  if shrunk:
    logging.warning(
        "sharding: %d params have dims their mesh axes do not divide; those "
        "dims are replicated instead, e.g. %s", len(shrunk),
        "; ".join(shrunk[:3]))
  if unused := [regex for i, (regex, _) in enumerate(overrides)
                if i not in used]:
    paths = [_path_str(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(shapes)[0]]
    raise config_lib.ConfigError(
        f"Sharding overrides {unused} match no parameter. Paths look like: "
        f"{', '.join(paths[:5])}.")
  return shardings


def opt_state_shardings(tx: optax.GradientTransformation,
                        abstract_opt_state: PyTree, param_shardings_: PyTree,
                        mesh: Mesh) -> PyTree:
  """Shardings for optimizer state: param-shaped leaves follow their param.

  Leaves inside copies of the param tree (Adam's mu and nu, momentum, ...) get
  the param's sharding when they have the param's rank (dims the mesh axes do
  not divide fall back to replication, e.g. factored second moments); all
  other leaves (step counts, schedule state) are replicated.
  """
  def follow(state_leaf, sharding):
    if isinstance(state_leaf, optax.MaskedNode):
      return state_leaf
    if len(sharding.spec) > state_leaf.ndim:
      return replicated(mesh)
    return NamedSharding(mesh,
                         _fit_spec(sharding.spec, state_leaf.shape, mesh)[0])

  return optax.tree_map_params(
      tx, follow, abstract_opt_state, param_shardings_,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of values every device holds whole (scalars, metrics)."""
  return NamedSharding(mesh, P())


def state_shardings(abstract_vars_boxed: PyTree, abstract_state: PyTree,
                    tx: optax.GradientTransformation, mesh: Mesh,
                    rules: LogicalRules,
                    overrides: Sequence[tuple[str, Any]] = ()) -> PyTree:
  """Shardings of a train state with `params`, `opt_state`, `model_state`.

  Args:
    abstract_vars_boxed: the model's boxed variables, {"params": ...,
      "batch_stats": ...}, e.g. `jax.eval_shape(model.init, ...)`.
    abstract_state: a flax struct dataclass with fields `params`, `opt_state`
      and `model_state` (the variables other than params); its other leaves
      (step counters, ...) are replicated.
    tx: the optimizer that made `opt_state`.
    mesh: the device mesh.
    rules: logical-to-mesh rules.
    overrides: see `param_shardings`; paths start with the collection name,
      e.g. "params/head/kernel".

  Returns:
    `abstract_state`'s structure with a NamedSharding per leaf.
  """
  var_sh = dict(param_shardings(abstract_vars_boxed, mesh, rules, overrides))
  params_sh = var_sh.pop("params")
  return jax.tree.map(lambda _: replicated(mesh), abstract_state).replace(
      params=params_sh, model_state=var_sh,
      opt_state=opt_state_shardings(tx, abstract_state.opt_state, params_sh,
                                    mesh))


def data_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """Sharding of [batch, ...] arrays: the batch over the "batch" mesh axes."""
  rules = rules_for_mesh(rules, mesh)
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  if spec == P(None):
    logging.warning("sharding: rules map 'batch' to no mesh axis; every "
                    "device gets the whole batch.")
  return NamedSharding(mesh, spec)


def init_sharded(init_fn: Callable[..., PyTree], mesh: Mesh,
                 rules: LogicalRules, *init_args: Any,
                 overrides: Sequence[tuple[str, Any]] = ()
                 ) -> tuple[PyTree, PyTree]:
  """Runs `init_fn(*init_args)` under jit so params are born sharded.

  Args:
    init_fn: returns boxed params, e.g.
      `lambda rng: model.init(rng, x, train=False)["params"]`.
    mesh: the device mesh.
    rules: logical-to-mesh rules.
    *init_args: arguments of `init_fn` (rng keys, ...).
    overrides: see `param_shardings`.

  Returns:
    (params, shardings): unboxed params, each leaf a global jax.Array with its
    sharding (no device ever holds the full params unless they are
    replicated), and the NamedSharding tree for use as jit in/out shardings.
  """
  # No `use_mesh` needed: out_shardings places the params, and the forward
  # pass that init traces is dead code once only params are returned.
  abstract = jax.eval_shape(init_fn, *init_args)
  shardings = param_shardings(abstract, mesh, rules, overrides)
  init = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)
  return init(*init_args), shardings



def check_overrides(overrides: Sequence[tuple[str, Any]], mesh: Mesh) -> None:
  """Raises ConfigError for a malformed `config.sharding.overrides` entry:
  not a (regex, spec) pair, a bad regex, or a spec naming no mesh axis."""
  for entry in overrides:
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise config_lib.ConfigError(
          f"config.sharding.overrides entries are (regex, spec) pairs, got "
          f"{entry!r}.")
    pattern, spec = entry
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise config_lib.ConfigError(
          f"config.sharding.overrides: bad regex {pattern!r}: {e}.") from None
    _override_spec(spec, mesh, pattern)
