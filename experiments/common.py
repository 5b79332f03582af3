"""From an ml_collections config to the library's objects.

    config = lamer.get_config("sokoban")   # experiments/configs/lamer.py
    exp = build(config)          # validates first, then loads the model
    state = init_state(exp)
    state, metrics = exp.train_step(state)
    eval_metrics = evaluate(exp, state.params, step=1)

``validate`` runs before anything is loaded or compiled: an unknown key or an
invalid value raises a ``ValueError`` that names the valid choices.

Methods (``config.method``):
  * ``lamer``: trains and evaluates trials of ``rollout.num_attempts`` attempts
    with ``rollout.memory``;
  * ``rl``: single-episode RL; trains one attempt per trial without memory
    (the config must say ``num_attempts=1``, ``memory="none"``) and evaluates
    ``eval.num_attempts`` independent attempts;
  * ``orbit``: ORBIT's in-context online learning: trains and evaluates one
    continuous trial of ``env.episodes`` episodes per row (one attempt, no
    memory but the transcript itself), trajectory-level GRPO;
  * ``sac``: SAC with hindsight relabeling (SAC-GLAM) on a goal-conditioned
    game (playground): off-policy, the LLM as a policy over the game's
    candidate actions with twin Q heads, replay and relabeling inside the
    compiled step (``config.sac``, ``lamer_jax.algos.sac``); evaluates one
    episode per held-out task, success per goal type;
  * ``zero_shot``: no training; evaluates independent attempts (memory none);
  * ``reflexion``: no training; evaluates with ``reflection_only`` memory,
    the frozen model writing the reflections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as py_logging
import os
import sys
from typing import Any, Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

import envs_jax
from envs_jax.continuous import Continuous
from envs_jax.core import Environment
from experiments.configs import base
from lamer_jax import checkpoint, losses, returns, sharding, storage, workdir_lock
from lamer_jax.agent import layout as layout_lib
from lamer_jax.agent.trial import RolloutConfig, eval_seeds
from lamer_jax.algos import lamer
from lamer_jax.algos.lamer import (AlgoConfig, TrainState, init_train_state,
                                   make_eval_fn)
from lamer_jax.models import loading

METHODS = base.METHODS
CHECKPOINT_DIR = "checkpoints"   # under a run's workdir
TRAINING_METHODS = ("lamer", "rl", "orbit")
DTYPES = ("float32", "bfloat16", "float16")
EVAL_TASKS_ACCELERATOR = 128   # LaMer's validation set size
EVAL_TASKS_CPU = 16
# Keys whose children are free-form (checked against the game instead).
_FREE_FORM = ("env.overrides", "env.params")
# Independent PRNG streams derived from train.seed.
_STREAM_TRAIN, _STREAM_MODEL, _STREAM_EVAL = 0, 1, 2


# ---- validation ---------------------------------------------------------------
class ConfigError(ValueError):
  """An invalid config key or value; the message names it and the choices."""


class TrainingDiverged(RuntimeError):
  """Updates were skipped for non-finite values too many steps in a row."""


def user_errors() -> tuple[type[BaseException], ...]:
  """Errors whose message says all a user needs (what failed and the fix):
  the entry points print them in one line instead of a traceback."""
  return (ConfigError, TrainingDiverged, storage.StorageError,
          checkpoint.CheckpointError, workdir_lock.WorkdirLocked,
          FileNotFoundError, NotADirectoryError)


def _check_keys(config: Any, schema: ml_collections.ConfigDict, path: str = "") -> None:
  """Raises ValueError for keys missing from, or unknown to, the schema."""
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"config entry {path or 'config'!r} must be a group of keys, "
                      f"got {type(config).__name__}")
  keys, valid = set(config.keys()), set(schema.keys())
  where = f"under {path!r}" if path else "at the top level"
  for k in sorted(keys - valid):
    raise ConfigError(f"unknown config key {path + '.' if path else ''}{k}: valid "
                      f"keys {where} are {sorted(valid)}")
  for k in sorted(valid - keys):
    raise ConfigError(f"config key {path + '.' if path else ''}{k} is missing "
                      f"(keys {where}: {sorted(valid)})")
  for k in sorted(valid):
    sub = f"{path}.{k}" if path else k
    if isinstance(schema[k], ml_collections.ConfigDict) and sub not in _FREE_FORM:
      _check_keys(config[k], schema[k], sub)


def _check_loaded(config: Any) -> None:
  """ml_collections hands on a config file that failed to load as a stand-in
  object that raises on use; name the file's error instead."""
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    try:
      error = object.__getattribute__(config, "_error")
    except AttributeError:
      return   # _check_keys says what it is
    text = " ".join(str(error).split())   # one line
    raise ConfigError(f"--config could not be loaded: {text} (give a file from "
                      "experiments/configs/, e.g. "
                      "--config=experiments/configs/lamer.py:sokoban)")


def validate_choice(name: str, value: Any, choices: tuple) -> None:
  """Raises ``ConfigError`` naming the choices unless ``value`` is one."""
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _positive(config: ml_collections.ConfigDict, *names: str, allow_zero=False,
              optional=False) -> None:
  for name in names:
    value = config
    for part in name.split("."):
      value = value[part]
    if value is None and optional:
      continue
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value >= 1)
    if not ok:
      bound = ">= 0" if allow_zero else ">= 1"
      raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")


def game_names(names: str, key: str = "env.name") -> tuple[str, ...]:
  """The games of a comma-separated list (``"rps,hangman"``), checked."""
  if not isinstance(names, str):
    raise ConfigError(f"{key} must be a game name or a comma-separated list of "
                      f"them, got {names!r}")
  parts = tuple(n.strip() for n in names.split(","))
  for name in parts:
    validate_choice(key, name, envs_jax.registered())
  if len(set(parts)) != len(parts):
    raise ConfigError(f"{key}={names!r} names a game twice")
  return parts


def train_games(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The games training plays: ``env.name``, one name or a mix."""
  return game_names(config.env.name)


def eval_games(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The games evaluation plays: ``eval.games``, by default the training ones."""
  return (game_names(config.eval.games, "eval.games") if config.eval.games
          else train_games(config))


def make_env(config: ml_collections.ConfigDict, name: str | None = None
             ) -> Environment:
  """The configured game ``name`` (default: the first of ``env.name``), with
  ``env.overrides`` and, when ``env.episodes`` is set, in continuous trials
  (registry errors name the valid choices)."""
  name = train_games(config)[0] if name is None else name
  validate_choice("env.name", name, envs_jax.registered())
  env = envs_jax.make(name, **dict(config.env.overrides))
  episodes = config.env.episodes
  if (not isinstance(episodes, (int, np.integer)) or isinstance(episodes, bool)
      or episodes < 0):
    raise ConfigError(f"env.episodes must be an integer >= 0 (0: the game as it "
                      f"is; K: K continuous episodes), got {episodes!r}")
  if episodes:
    env = Continuous(env, episodes=int(episodes))
  return env


def env_params(env: Environment, overrides: dict[str, Any]) -> Any:
  """``env.default_params`` with fields replaced, in their original dtypes."""
  params = env.default_params
  fields = [f.name for f in dataclasses.fields(params)]
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ConfigError(f"unknown env.params key(s) {unknown} for {env.name!r}; "
                      f"valid keys are {fields}")
  return params.replace(**{
      k: jax.numpy.asarray(v, dtype=jax.numpy.asarray(getattr(params, k)).dtype)
      for k, v in overrides.items()})


def num_turns(config: ml_collections.ConfigDict, env: Environment) -> int:
  """Turns per attempt: ``rollout.num_turns``, by default the game's limit
  (in a mix of games, a cap: no game plays more than its own limit)."""
  if not config.rollout.num_turns:
    return int(env.max_turns)
  return min(config.rollout.num_turns, int(env.max_turns))


def trial_shape(config: ml_collections.ConfigDict,
                env: Environment) -> layout_lib.TrialShape:
  """The training trials' shape: ``rollout.num_tasks`` x ``group_size`` x
  ``num_attempts`` x ``num_turns``, the one place the config says it."""
  return layout_lib.TrialShape(num_tasks=config.rollout.num_tasks,
                               group_size=config.rollout.group_size,
                               num_attempts=config.rollout.num_attempts,
                               num_turns=num_turns(config, env))


def eval_num_tasks(config: ml_collections.ConfigDict) -> int:
  """Held-out tasks: ``eval.num_tasks``, by default 128 (16 on a CPU)."""
  if config.eval.num_tasks is not None:
    return config.eval.num_tasks
  return EVAL_TASKS_CPU if jax.default_backend() == "cpu" else EVAL_TASKS_ACCELERATOR


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
  """Held-out tasks played at once (ValueError if it does not divide them)."""
  tasks, batch = eval_num_tasks(config), config.eval.batch_size
  if batch is None or batch >= tasks:
    return tasks
  if tasks % batch:
    raise ConfigError(f"eval.batch_size={batch} does not divide eval.num_tasks="
                      f"{tasks}; choose a divisor of {tasks}")
  return batch


def eval_memory(config: ml_collections.ConfigDict) -> str:
  """The memory mode evaluation runs with, by method."""
  return {"lamer": config.rollout.memory, "rl": "none", "orbit": "none",
          "zero_shot": "none",
          "reflexion": "reflection_only"}[config.method]


def mesh_config(config: ml_collections.ConfigDict) -> sharding.MeshConfig:
  """``config.mesh`` as a ``sharding.MeshConfig`` (ValueError if invalid)."""
  sizes = {}
  for axis in sharding.AXES:
    value = config.mesh[axis]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ConfigError(f"mesh.{axis} must be an integer (a size, or -1 for all "
                        f"remaining devices), got {value!r}")
    sizes[axis] = int(value)
  try:
    return sharding.MeshConfig(**sizes)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from e


def _validate_mesh(config: ml_collections.ConfigDict) -> None:
  """The mesh fits the devices, and every batch splits over its row axes."""
  cfg = mesh_config(config)
  try:
    data, fsdp, _ = cfg.shape(jax.device_count())
  except ValueError as e:
    raise ConfigError(f"mesh: {e} (set --config.mesh.data/fsdp/tensor)") from e
  shards = data * fsdp
  if shards == 1:
    return
  batches = {"eval.batch_size" if config.eval.batch_size else "eval.num_tasks":
             eval_batch_size(config)}
  if config.method in TRAINING_METHODS:
    rows = config.rollout.num_tasks * config.rollout.group_size
    batches["rollout.num_tasks x group_size"] = rows
    batches["the rows of a minibatch (num_tasks x group_size x num_attempts / "
            "algo.num_minibatches)"] = (
                rows * config.rollout.num_attempts // config.algo.num_minibatches)
  for what, n in batches.items():
    if n % shards:
      raise ConfigError(
          f"{what} = {n} does not split over mesh.data x mesh.fsdp = {shards} "
          f"devices; make it a multiple of {shards} or change the mesh")


def _check_turns(config: ml_collections.ConfigDict, env: Environment) -> None:
  limit = getattr(env, "max_turns", None)
  if config.rollout.num_turns is None and limit is None:
    raise ConfigError(f"{env.name} has no max_turns: set rollout.num_turns")
  if config.rollout.num_turns and limit and config.rollout.num_turns > limit:
    raise ConfigError(f"rollout.num_turns={config.rollout.num_turns} exceeds "
                      f"{env.name}'s max_turns={limit}; raise it with "
                      "env.overrides.max_turns or lower rollout.num_turns")


def validate(config: ml_collections.ConfigDict) -> Environment:
  """Checks every key and value of ``config``; returns the game it names.

  Loads nothing and compiles nothing (the mesh check asks JAX for the device
  count, so a multi-host run calls ``sharding.initialize_distributed`` first).

  Raises:
    ValueError: an unknown or missing key, or an invalid value; the message
      names the key and the valid choices.
  """
  _check_loaded(config)
  _check_keys(config, base.get_config())
  validate_choice("method", config.method, METHODS)
  names = train_games(config)
  evaluated = eval_games(config)
  classes = {type(envs_jax.make(n)) for n in names + evaluated
             if n in envs_jax.registered()}
  if len(classes) > 1 and (config.env.overrides or config.env.params):
    raise ConfigError("env.overrides and env.params set one game's fields; with "
                      f"several kinds of game ({', '.join(dict.fromkeys(names + evaluated))})"
                      " leave them empty (register a variant in envs_jax.registry)")
  env = make_env(config)
  env_params(env, dict(config.env.params))
  games = tuple(dict.fromkeys(names + evaluated))
  for name in games:
    game = make_env(config, name)
    if len(games) == 1:
      _check_turns(config, game)
    elif getattr(game, "max_turns", None) is None:
      raise ConfigError(f"{game.name} has no max_turns, which a mix of games needs")
  name = config.model.name
  if name not in loading.valid_names() and not os.path.exists(os.path.expanduser(name)):
    raise ConfigError(f"model.name={name!r} is not valid; choose one of "
                      f"{loading.valid_names()} or give a local checkpoint path")
  validate_choice("model.dtype", config.model.dtype, DTYPES)
  if config.method == "sac":
    sac_config(config)
    if config.sac.eval_env:
      validate_choice("sac.eval_env", config.sac.eval_env, envs_jax.registered())
    for name in (train_games(config)[0], sac_eval_env(config)):
      game = make_env(config, name)
      if not hasattr(game, "achieved_goals"):
        raise ConfigError(f"method 'sac' needs a goal-conditioned game (one with "
                          f"achieved_goals, e.g. playground); {name!r} is not one")
    if len(names) > 1 or config.eval.games:
      raise ConfigError("method 'sac' trains on one game: set env.name to one game "
                        "and choose the evaluated one with sac.eval_env")
    _positive(config, "train.log_every", "train.keep_checkpoints",
              "train.max_nonfinite_steps")
    _positive(config, "train.steps", "train.seed", "train.eval_every",
              "train.checkpoint_every", allow_zero=True)
    eval_batch_size(config)
    _validate_mesh(config)
    return env
  validate_choice("rollout.memory", config.rollout.memory,
                  layout_lib.MEMORY_MODES)
  validate_choice("rollout.action_mode", config.rollout.action_mode,
                  layout_lib.ACTION_MODES)
  validate_choice("algo.estimator", config.algo.estimator, returns.ESTIMATORS)
  validate_choice("algo.aggregation", config.algo.aggregation,
                  losses.AGGREGATIONS)
  _positive(config, "rollout.num_tasks", "rollout.group_size", "rollout.num_attempts",
            "rollout.reflection_tokens", "eval.num_attempts", "algo.ppo_epochs",
            "algo.num_minibatches", "train.log_every", "train.keep_checkpoints",
            "train.max_nonfinite_steps")
  _positive(config, "rollout.num_turns", "eval.num_tasks", "eval.batch_size",
            optional=True)
  _positive(config, "rollout.top_k", "eval.top_k", "train.steps", "train.seed",
            "train.eval_every", "train.checkpoint_every", "algo.warmup_steps",
            "rollout.think_tokens", allow_zero=True)
  every_s = config.train.checkpoint_every_s
  if (not isinstance(every_s, (int, float, np.integer, np.floating))
      or isinstance(every_s, bool) or not every_s >= 0):
    raise ConfigError(f"train.checkpoint_every_s must be a number of seconds >= 0 "
                      f"(0: off), got {every_s!r}")
  for group in ("rollout", "eval"):
    if not config[group].temperature > 0:
      raise ConfigError(f"{group}.temperature must be > 0, got "
                        f"{config[group].temperature}")
    if not 0 < config[group].top_p <= 1:
      raise ConfigError(f"{group}.top_p must be in (0, 1], got {config[group].top_p}")
  algo = config.algo
  for name in ("gamma_step", "gamma_traj"):
    if not 0 <= algo[name] <= 1:
      raise ConfigError(f"algo.{name} must be in [0, 1], got {algo[name]}")
  if algo.lr <= 0 or algo.clip_eps <= 0 or algo.grad_clip <= 0:
    raise ConfigError("algo.lr, algo.clip_eps and algo.grad_clip must be > 0, got "
                     f"{algo.lr}, {algo.clip_eps}, {algo.grad_clip}")
  if algo.dual_clip is not None and algo.dual_clip <= 1:
    raise ConfigError(f"algo.dual_clip must be > 1 (or None), got {algo.dual_clip}")
  for name in ("b1", "b2"):
    if not 0 <= algo[name] < 1:
      raise ConfigError(f"algo.{name} (an Adam decay rate) must be in [0, 1), got "
                        f"{algo[name]}")
  if not algo.adam_eps > 0:
    raise ConfigError(f"algo.adam_eps must be > 0, got {algo.adam_eps}")
  if config.method in TRAINING_METHODS:
    if config.rollout.group_size < 2:
      raise ConfigError("rollout.group_size must be >= 2 for training: advantages "
                        "compare the trials of a task's group")
    rows = (config.rollout.num_tasks * config.rollout.group_size
            * config.rollout.num_attempts)
    if rows % algo.num_minibatches:
      raise ConfigError(
          f"rollout.num_tasks x group_size x num_attempts = {rows} attempt rows do "
          f"not split into algo.num_minibatches={algo.num_minibatches}; choose a "
          f"divisor of {rows}")
  elif config.train.steps:
    raise ConfigError(f"method {config.method!r} does not train: set train.steps=0 "
                      f"(training methods are {list(TRAINING_METHODS)})")
  if config.method == "rl" and (config.rollout.num_attempts != 1
                                or config.rollout.memory != "none"):
    raise ConfigError("method 'rl' trains single episodes: set rollout.num_attempts=1"
                      " and rollout.memory='none' (and rollout.group_size to G x N "
                      "for LaMer's sample budget)")
  if config.algo.estimator == "gae" and (config.rollout.num_attempts != 1
                                         or config.rollout.memory != "none"):
    raise ConfigError(f"algo.estimator='gae': {returns.GAE_ONE_ATTEMPT}")
  if (config.method == "orbit") != bool(config.env.episodes):
    raise ConfigError(
        "method 'orbit' plays continuous trials and only it does: set "
        "env.episodes >= 1 with method 'orbit' (and env.episodes=0 otherwise)")
  if config.method == "orbit" and (
      config.rollout.num_attempts != 1 or config.eval.num_attempts != 1
      or config.rollout.memory != "none"):
    raise ConfigError("method 'orbit' plays one continuous trial per row: set "
                      "rollout.num_attempts=1, eval.num_attempts=1 and "
                      "rollout.memory='none' (the transcript is the memory)")
  eval_batch_size(config)
  _validate_mesh(config)
  return env


def sac_config(config: ml_collections.ConfigDict):
  """``config.sac`` as a ``sac.SACConfig`` (ConfigError naming the key)."""
  from lamer_jax.algos import sac as sac_lib
  fields = {f.name for f in dataclasses.fields(sac_lib.SACConfig)}
  values = {k: v for k, v in config.sac.to_dict().items() if k in fields}
  try:
    return sac_lib.SACConfig(**values)
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def sac_eval_env(config: ml_collections.ConfigDict) -> str:
  """The game SAC evaluates on: ``sac.eval_env``, by default ``env.name``."""
  return config.sac.eval_env or train_games(config)[0]


def check_override_flags(argv: list[str], flag: str = "config") -> None:
  """Rejects ``--config.<key>=...`` arguments whose key the schema lacks.

  ml_collections would fail on them inside flag parsing with a bare
  ``AttributeError``; call this before ``app.run`` to get a message naming
  the valid keys instead.

  Raises:
    ValueError: an override names an unknown key.
  """
  schema = base.get_config()
  prefix = f"--{flag}."
  for arg in argv[1:]:
    if arg == "--":
      break
    if not arg.startswith(prefix):
      continue
    parts = arg[len(prefix):].split("=", 1)[0].split(".")
    node, walked = schema, []
    for part in parts:
      if ".".join(walked) in _FREE_FORM:
        break   # checked against the game by validate()
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = f"under {'.'.join(walked)!r}" if walked else "at the top level"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"{arg}: unknown config key "
                          f"{'.'.join(walked + [part])!r}; valid keys {where} are "
                          f"{valid}")
      node = node[part]
      walked.append(part)


def run_main(main: Callable[..., None], argv: list[str]) -> None:
  """Runs an entry point's ``main(argv)`` under ``absl.app.run``.

  First :func:`check_override_flags` (a bad key prints the valid ones and
  exits with status 2, like a flag error); then, inside ``main``'s process,
  the steps every entry point shares: quiet library logs, no positional
  arguments, and ``sharding.initialize_distributed()`` (multi-host runs join
  the cluster before anything asks JAX for devices; docs/SCALING.md). An
  error of ``user_errors()`` (bad config value, storage, checkpoint, lock,
  divergence) prints as one ``FATAL <Type>: <message>`` line and exits with
  status 2 for a config error, 1 otherwise.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    check_override_flags(argv)
  except ValueError as e:
    print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
    sys.exit(2)

  def entry(args: list[str]) -> None:
    quiet_library_logs()
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {args[1:]}")
    sharding.initialize_distributed()
    try:
      main(args)
    except user_errors() as e:
      # One line, first and alone on stderr (library threads may add noise
      # while the interpreter exits; the cause is above it). --verbosity=1
      # logs the traceback too.
      logging.debug("traceback of the error below", exc_info=True)
      sys.stderr.flush()
      print(f"FATAL {type(e).__name__}: {e}", file=sys.stderr, flush=True)
      sys.exit(2 if isinstance(e, ConfigError) else 1)

  app.run(entry, argv=argv)


def config_from_dict(values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A locked config with the base schema and ``values`` (e.g. from JSON)."""
  _check_keys(values, base.get_config())
  config = base.get_config()

  def assign(target, src, path):
    for k, v in src.items():
      if f"{path}{k}" in _FREE_FORM:
        with target[k].unlocked():
          for kk, vv in v.items():
            target[k][kk] = vv
      elif isinstance(v, dict):
        assign(target[k], v, f"{path}{k}.")
      else:
        target[k] = v

  assign(config, values, "")
  return config


# ---- building -----------------------------------------------------------------
class EvalProgress:
  """Host-side sink of the evaluation's per-batch callbacks.

  The compiled evaluation reports every finished batch of tasks here; the
  count goes to a tqdm bar while ``show`` holds one open, and nowhere
  otherwise.
  """

  def __init__(self):
    self._bar: tqdm | None = None

  def __call__(self, num_tasks: int) -> None:
    if self._bar is not None:
      self._bar.update(int(num_tasks))

  @contextlib.contextmanager
  def show(self, total: int, desc: str) -> Iterator[None]:
    self._bar = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True)
    try:
      yield
    finally:
      self._bar.close()
      self._bar = None


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built from a validated config.

  Attributes:
    env, env_params, train_layout: those of the first training game (of
      the first evaluated game for methods that do not train).
    train_layout, train_rollout, train_step: None for methods that do not
      train; ``train_step(state) -> (state, metrics)`` is jitted, over every
      game of ``train_games``.
    eval_layout, eval_fn: those of the first evaluated game; ``eval_fn`` is
      jitted ``(params, key, seeds) -> metrics``.
    eval_seeds: int32[eval tasks], the fixed held-out task seeds.
    eval_progress: receives ``eval_fn``'s per-batch progress (see
      ``evaluate(progress=True)``).
    mesh: the device mesh when it spans several devices (the train step is
      then compiled for it and the model's parameters live on the mesh);
      None on one device.
  """

  config: ml_collections.ConfigDict
  env: Environment
  env_params: Any
  model: loading.LoadedModel
  algo: AlgoConfig
  train_layout: layout_lib.ContextLayout | None
  train_rollout: RolloutConfig | None
  train_step: Callable[[TrainState], tuple[TrainState, dict]] | None
  eval_layout: layout_lib.ContextLayout
  eval_rollout: RolloutConfig
  eval_fn: Callable[..., dict]
  eval_seeds: jax.Array
  mesh: jax.sharding.Mesh | None = None
  eval_progress: EvalProgress = dataclasses.field(default_factory=EvalProgress)
  train_games: tuple[Any, ...] = ()       # lamer.Game per training game
  eval_games: tuple[Any, ...] = ()        # EvalGame per evaluated game
  # The step-0 train state of a method whose state is more than the model
  # and its optimiser (SAC: Q heads, targets, replay, live envs); None: the
  # on-policy ``init_train_state``.
  init_fn: Callable[[], TrainState] | None = None
  # ``(state, mesh, mcfg) -> shardings`` of such a state on a mesh; None:
  # ``sharding.state_shardings``.
  shardings_fn: Callable[..., Any] | None = None

  def state_shardings(self, state: Any) -> Any:
    fn = self.shardings_fn or sharding.state_shardings
    return fn(state, self.mesh, self.model.cfg)

  @property
  def trains(self) -> bool:
    return self.train_step is not None

  @property
  def per_game(self) -> bool:
    """Metrics are reported per game: several games train or evaluate, or the
    evaluated game is not the trained one."""
    names = {g.name for g in self.train_games} | {g.name for g in self.eval_games}
    return len(names) > 1


def seed_key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.train.seed), stream)


def eval_key(config: ml_collections.ConfigDict, step: int) -> jax.Array:
  """The sampling key of the evaluation after ``step`` train steps: a pure
  function of the seed and the step, so resumed runs evaluate identically."""
  return jax.random.fold_in(seed_key(config, _STREAM_EVAL), step)


def build(config: ml_collections.ConfigDict, *, jit: bool = True) -> Experiment:
  """Validates ``config``, then builds its method's experiment
  (``METHOD_BUILDERS[config.method]``): the entry points run whatever it
  returns, so a new method plugs in by registering a builder.

  Nothing is compiled here: the jitted functions compile on first call.
  """
  env = validate(config)
  return METHOD_BUILDERS[config.method](config, env, jit=jit)


@dataclasses.dataclass
class EvalGame:
  """One evaluated game: its layout, compiled evaluation and held-out seeds.

  Attributes:
    name: the registry name (metric prefix when several games are evaluated).
    env, env_params: the game (in continuous trials with ``env.episodes``).
    layout: the evaluation trials' layout.
    eval_fn: jitted ``(params, key, seeds) -> metrics``.
  """

  name: str
  env: Environment
  env_params: Any
  layout: layout_lib.ContextLayout
  eval_fn: Callable[..., dict]


def _load_model(config: ml_collections.ConfigDict
                ) -> tuple[loading.LoadedModel, jax.sharding.Mesh | None]:
  """The configured model (on the mesh when it spans several devices) and
  the mesh (None on one device: the plain single-device program)."""
  mesh = sharding.make_mesh(mesh_config(config))
  if mesh.devices.size == 1:
    mesh = None
  model = loading.load(config.model.name, dtype=config.model.dtype,
                       key=seed_key(config, _STREAM_MODEL))
  model = dataclasses.replace(model, cfg=model.cfg.replace(remat=config.model.remat))
  if mesh is not None:
    logging.info("%s", sharding.describe(mesh))
    model.params = sharding.shard_params(model.params, mesh, model.cfg)
  return model, mesh


def build_sac(config: ml_collections.ConfigDict, env: Environment, *,
              jit: bool = True) -> Experiment:
  """SAC with hindsight relabeling: the compiled off-policy step on
  ``env.name`` and the greedy (``sac.eval_greedy``) evaluation on
  ``sac.eval_env``, one episode per held-out task."""
  from lamer_jax.agent import candidates as cand_lib
  from lamer_jax.algos import sac as sac_lib
  cfg = sac_config(config)
  model, mesh = _load_model(config)
  mcfg = model.cfg

  def prompt_of(game: Environment) -> cand_lib.CandidatePrompt:
    prompt = cand_lib.CandidatePrompt.build(model.tokenizer, game, short=cfg.short_prompt,
                                            score=cfg.candidate_score)
    if prompt.context_len > mcfg.max_position:
      raise ConfigError(f"the candidate prompt of {game.name} ({prompt.context_len} "
                        f"tokens) exceeds the model's {mcfg.max_position} positions; "
                        "set sac.short_prompt=True")
    return prompt

  overrides = dict(config.env.params)
  params = env_params(env, overrides)
  step = sac_lib.make_train_step(env, params, mcfg, prompt_of(env), cfg, jit=jit,
                                 mesh=mesh)
  eval_env = make_env(config, sac_eval_env(config))
  eval_params = env_params(eval_env, overrides)
  eval_fn = sac_lib.make_eval_fn(eval_env, eval_params, mcfg, prompt_of(eval_env),
                                 batch_size=eval_batch_size(config),
                                 greedy=config.sac.eval_greedy, jit=jit)
  init_fn = lambda: sac_lib.init_state(
      env, params, jax.tree.map(jax.numpy.copy, model.params), mcfg, cfg,
      seed_key(config, _STREAM_TRAIN))
  evals = (EvalGame(eval_env.name, eval_env, eval_params, None, eval_fn),)
  return Experiment(config=config, env=env, env_params=params, model=model,
                    algo=AlgoConfig(), train_layout=None, train_rollout=None,
                    train_step=step, eval_layout=None, eval_rollout=None,
                    eval_fn=eval_fn, eval_seeds=eval_seeds(eval_num_tasks(config)),
                    mesh=mesh, eval_games=evals, init_fn=init_fn,
                    shardings_fn=sac_lib.state_shardings)


def build_on_policy(config: ml_collections.ConfigDict, env: Environment, *,
                    jit: bool = True) -> Experiment:
  """LaMer, its single-episode RL baselines, ORBIT and the prompting
  baselines: loads the model and builds layouts, the train step (over every
  game of ``env.name``) and the evaluation (of every game of ``eval.games``)."""
  del env   # validated; each game is built below
  model, mesh = _load_model(config)
  mcfg = model.cfg

  def layout(env: Environment, shape: layout_lib.TrialShape,
             memory: str) -> layout_lib.ContextLayout:
    lay = layout_lib.build_layout(
        model.tokenizer, env, shape, memory=memory,
        reflection_tokens=config.rollout.reflection_tokens,
        action_mode=config.rollout.action_mode,
        think_tokens=config.rollout.think_tokens)
    if lay.context_len > mcfg.max_position:
      raise ConfigError(f"an attempt's context of {env.name} ({lay.describe()}) "
                        f"exceeds the model's {mcfg.max_position} positions; lower "
                        "rollout.num_turns or rollout.reflection_tokens")
    return lay

  algo = AlgoConfig(**config.algo.to_dict())
  games: dict[str, lamer.Game] = {}
  train_rollout = train_step = None
  if config.method in TRAINING_METHODS:
    for name in train_games(config):
      env = make_env(config, name)
      games[name] = lamer.Game(env, layout(env, trial_shape(config, env),
                                           config.rollout.memory),
                               env_params(env, dict(config.env.params)), name)
    train_rollout = RolloutConfig(
        temperature=config.rollout.temperature, top_k=config.rollout.top_k,
        top_p=config.rollout.top_p,
        invalid_penalty=config.rollout.invalid_penalty)
    train_step = lamer.make_mix_train_step(tuple(games.values()), mcfg,
                                           train_rollout, algo, jit=jit, mesh=mesh)
  memory = eval_memory(config)
  tasks = eval_num_tasks(config)
  eval_rollout = RolloutConfig(temperature=config.eval.temperature,
                               top_k=config.eval.top_k, top_p=config.eval.top_p,
                               invalid_penalty=config.rollout.invalid_penalty)
  progress = EvalProgress()
  evals = []
  for name in eval_games(config):
    env = make_env(config, name)
    params = env_params(env, dict(config.env.params))
    eval_shape = layout_lib.TrialShape(num_tasks=eval_batch_size(config), group_size=1,
                                       num_attempts=config.eval.num_attempts,
                                       num_turns=num_turns(config, env))
    trained = games.get(name)
    if (trained is not None and trained.layout.memory == memory
        and trained.layout.num_attempts == config.eval.num_attempts):
      eval_layout = trained.layout.with_tasks(eval_shape.num_tasks, group_size=1)
    else:
      eval_layout = layout(env, eval_shape, memory)
    evals.append(EvalGame(name, env, params, eval_layout, make_eval_fn(
        env, mcfg, eval_layout, eval_rollout, env_params=params, mesh=mesh,
        batch_size=eval_batch_size(config), on_batch=progress)))
  first = next(iter(games.values()), None)
  return Experiment(config=config, env=evals[0].env if first is None else first.env,
                    env_params=evals[0].env_params if first is None else first.params,
                    model=model, algo=algo,
                    train_layout=None if first is None else first.layout,
                    train_rollout=train_rollout, train_step=train_step,
                    eval_layout=evals[0].layout, eval_rollout=eval_rollout,
                    eval_fn=evals[0].eval_fn, eval_seeds=eval_seeds(tasks), mesh=mesh,
                    eval_progress=progress, train_games=tuple(games.values()),
                    eval_games=tuple(evals))


# config.method -> builder(config, validated env, jit=) -> Experiment.
METHOD_BUILDERS: dict[str, Callable[..., Experiment]] = {
    method: build_on_policy for method in METHODS}
METHOD_BUILDERS["sac"] = build_sac


def init_state(exp: Experiment) -> TrainState:
  """The train state at step 0: a copy of the model's parameters (the train
  step donates its state, which must not delete ``exp.model.params``) and a
  fresh optimiser state."""
  if exp.init_fn is not None:
    state = exp.init_fn()
  else:
    params = jax.tree.map(jax.numpy.copy, exp.model.params)
    state = init_train_state(params, exp.algo, seed_key(exp.config, _STREAM_TRAIN))
  if exp.mesh is not None:
    return sharding.shard_train_state(state, exp.mesh, exp.model.cfg,
                                      exp.state_shardings(state))
  # Committed to a device like a restored checkpoint's arrays, so that a
  # resumed run hits the same compiled train step instead of recompiling.
  return jax.device_put(state, jax.devices()[0])


def abstract_state(exp: Experiment) -> TrainState:
  """Shapes, dtypes and shardings of ``init_state(exp)``, computing nothing:
  the target a checkpoint is restored into (onto this run's mesh, whatever
  mesh wrote it)."""
  abstract = jax.eval_shape(exp.init_fn if exp.init_fn is not None else
                            lambda: init_train_state(exp.model.params, exp.algo,
                                                     seed_key(exp.config, _STREAM_TRAIN)))
  if exp.mesh is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  else:
    shardings = exp.state_shardings(abstract)
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)


def to_host(metrics: dict[str, Any]) -> dict[str, float]:
  """Device scalars -> Python floats (exact: float32 -> float64 is lossless)."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def evaluate(exp: Experiment, params: Any, step: int, *,
             progress: bool = False) -> dict[str, float]:
  """pass@k and friends on the held-out tasks, after ``step`` train steps.

  ``progress`` shows a bar of played tasks (on process 0), which advances
  per ``eval.batch_size`` tasks; the first batch also waits for compilation.
  """
  results = {}
  for game in exp.eval_games or (EvalGame(exp.env.name, exp.env, exp.env_params,
                                          exp.eval_layout, exp.eval_fn),):
    run = lambda: to_host(game.eval_fn(params, eval_key(exp.config, step),
                                       exp.eval_seeds))
    if not progress or jax.process_index() != 0:
      metrics = run()
    else:
      with exp.eval_progress.show(int(exp.eval_seeds.shape[0]),
                                  f"eval {game.env.name} ({exp.config.method})"):
        metrics = run()
    prefix = f"{game.name}/" if exp.per_game else ""
    results.update({prefix + k: v for k, v in metrics.items()})
  return results


def describe(exp: Experiment) -> str:
  """One paragraph about the run, for logs."""
  c = exp.config
  trained = [g.env.name for g in exp.train_games] or [exp.env.name]
  lines = [f"{c.name}: method {c.method}, env {', '.join(trained)}, model "
           f"{exp.model.name} ({exp.model.cfg.dtype})"]
  if exp.trains:
    for game in exp.train_games:
      label = f"{game.name} " if len(exp.train_games) > 1 else ""
      lines.append(f"train: {label}{c.rollout.num_tasks} tasks x "
                   f"{c.rollout.group_size} trials x {c.rollout.num_attempts} "
                   f"attempts, memory {c.rollout.memory}; {game.layout.describe()}")
  names = ", ".join(g.env.name for g in exp.eval_games) or exp.env.name
  if c.method == "sac":
    s = c.sac
    her_text = (f"HER {s.her_strategy} ratio {s.her_ratio}" if s.her_strategy != "none"
                else "no relabeling")
    lines.append(f"train: {s.num_envs} envs x {s.env_steps} steps, {s.updates} "
                 f"update(s) of {s.batch_size} {s.n_step}-step windows per train step; "
                 f"replay {s.num_envs} x {s.capacity}; {her_text}")
    lines.append(f"eval: {names}: {int(exp.eval_seeds.shape[0])} held-out tasks, one "
                 f"episode each ({'greedy' if s.eval_greedy else 'sampled'})")
    return "\n".join(lines)
  lines.append(f"eval: {names}: {int(exp.eval_seeds.shape[0])} held-out tasks x "
               f"{exp.eval_layout.num_attempts} attempts, memory "
               f"{exp.eval_layout.memory}")
  return "\n".join(lines)


class _LibraryInfoFilter(py_logging.Filter):
  """Drops records below WARNING that come from the named packages."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def filter(self, record: py_logging.LogRecord) -> bool:
    return (record.levelno >= py_logging.WARNING
            or not any(p in record.pathname for p in self._parts))


def quiet_library_logs(packages: tuple[str, ...] = ("orbax",)) -> None:
  """Keeps absl's log to our own INFO lines: orbax logs every save step."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter(packages))
