"""Config loading, defaults, overrides and key validation."""

import pytest

from big_vision_like import config as config_lib
from configs import common


def _minimal(**kw):
  return {"total_steps": 5, "model_name": "vit", **kw}


def test_resolve_fills_defaults_for_missing_keys():
  c = config_lib.resolve(_minimal(input={"batch_size": 8}))
  assert c.input.batch_size == 8
  assert c.input.num_threads == 2
  assert c.objective.name == "supervised"
  assert c.log_every_steps == config_lib.defaults().log_every_steps


def test_moved_loss_and_mixing_keys_point_to_the_objective_section():
  for key in ("loss", "mixing"):
    with pytest.raises(config_lib.ConfigError,
                       match=rf"config.{key} moved to config.objective.{key}"):
      config_lib.resolve(_minimal(**{key: {}}))


def test_an_objective_given_as_a_string_asks_for_a_section():
  with pytest.raises(config_lib.ConfigError, match="it is a section"):
    config_lib.resolve(_minimal(objective="supervised"))


def test_misspelled_top_level_key_names_closest_valid_key():
  with pytest.raises(config_lib.ConfigError,
                     match=r"'config.totl_steps'.*Did you mean 'total_steps'"):
    config_lib.resolve(_minimal(totl_steps=3))


def test_misspelled_nested_key_names_closest_valid_key():
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.input.bach_size.*Did you mean 'batch_size'"):
    config_lib.resolve(_minimal(input={"bach_size": 8}))


def test_total_steps_and_epochs_are_exclusive():
  with pytest.raises(config_lib.ConfigError, match="exactly one"):
    config_lib.resolve(_minimal(total_epochs=3))


def test_split_overrides_parses_literals_and_strings():
  argv = ["main.py", "--workdir=/w", "--config.optim.lr=3e-4",
          "--config.input.data.name=cifar10", "--config.mesh",
          "[('data', 2)]"]
  rest, overrides = config_lib.split_overrides(argv)
  assert rest == ["main.py", "--workdir=/w"]
  assert overrides == {"optim.lr": 3e-4, "input.data.name": "cifar10",
                       "mesh": [("data", 2)]}


def test_overrides_set_nested_values_and_reject_unknown_top_level_keys():
  c = config_lib.resolve(_minimal())
  config_lib.apply_overrides(c, {"optim.lr": 0.5, "input.batch_size": 16})
  assert c.optim.lr == 0.5 and c.input.batch_size == 16
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'seed'"):
    config_lib.apply_overrides(c, {"sed": 1})
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'input'"):
    config_lib.apply_overrides(c, {"inpt.batch_size": 1})


def test_load_reports_missing_config_file(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load(str(tmp_path / "nope.py"))


def test_load_passes_argument_after_colon(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text("def get_config(arg):\n  return {'arg': arg}\n")
  assert config_lib.load(f"{path}:runlocal") == {"arg": "runlocal"}


def test_parse_arg_types_follow_defaults_and_unknown_keys_fail():
  arg = common.parse_arg("runlocal,variant=L/16,depth=101", runlocal=False,
                         variant="B/16", depth=50)
  assert arg.runlocal is True and arg.variant == "L/16" and arg.depth == 101
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'variant'"):
    common.parse_arg("varient=L/16", variant="B/16")


def test_lookup_suggests_closest_choice():
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'adamw'"):
    config_lib.lookup({"adamw": 1, "sgd": 2}, "adamv", "optimizer")


def _config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text("def get_config(arg=None):\n"
                  "  return {'total_steps': 5, 'model_name': 'vit'}\n")
  return str(path)


def test_run_command_runs_on_the_resolved_config_with_overrides(tmp_path):
  seen = []

  def run(config):
    seen.append(config)
    return 7

  code = config_lib.run_command(run, _config_file(tmp_path), {"seed": 3},
                                exit_config=2)
  assert code == 7
  assert seen[0].seed == 3 and seen[0].total_steps == 5
  assert "input" in seen[0]  # Merged over defaults().


def test_run_command_turns_a_config_error_into_one_line_and_its_code(
    tmp_path, capsys):
  def run(config):
    raise config_lib.ConfigError("no checkpoint in /x. Train first.")

  assert config_lib.run_command(run, _config_file(tmp_path), {},
                                exit_config=5) == 5
  assert capsys.readouterr().err == "Error: no checkpoint in /x. Train first.\n"
  # A bad override fails the same way, before `run` is called.
  assert config_lib.run_command(run, _config_file(tmp_path), {"sed": 1},
                                exit_config=2) == 2
  assert "Did you mean 'seed'" in capsys.readouterr().err


def test_run_command_maps_the_failures_table_and_lets_other_errors_through(
    tmp_path, capsys):
  def run(config):
    raise OSError("disk gone")

  failures = {OSError: ("Checkpoint failure", 4)}
  assert config_lib.run_command(run, _config_file(tmp_path), {},
                                exit_config=2, failures=failures) == 4
  assert capsys.readouterr().err == "Checkpoint failure: disk gone\n"
  with pytest.raises(OSError, match="disk gone"):
    config_lib.run_command(run, _config_file(tmp_path), {}, exit_config=2)
