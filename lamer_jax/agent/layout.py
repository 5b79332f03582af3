"""The trial's shape, the prompt pieces and the static token layout of a row.

This module is the ONE definition of a training row's slots: ``ContextLayout.
pieces()`` lists every piece of an attempt's row in order, with its slot
range and whether the policy generated it. The rollout assembles rows piece by
piece in that order (``agent.trial``), and the loss reads the generated slots
from it (``loss_slot_kinds``): neither re-derives the layout.

Everything here runs once, on the host: the chat template of the model is
rendered around sentinels to find its role headers, every constant piece of
text is tokenized, and the slot layout of a training row is fixed. Inside
``jit`` the rollout only fills the variable parts (observations, actions,
reflections) and masks the parts a row does not use; padding slots are never
attended to, and RoPE positions skip them, so holes are free.

One attempt's row (``C`` slots), in order:

    prefix   [system open + instructions] [memory 1] ... [memory N-1] [system close]
    turn t   [end of turn t-1] [user open + obs header] [observation] [user close +
             assistant open + "<action>"] [action tokens, incl. "</action>"]   (t < T)
             with thinking, the turn prompt ends in "<think>" instead and the
             action is preceded by [thinking tokens] ["</think>" (unless the
             model wrote it) + "\n<action>"]
    reflect  [end of last turn] [user open + reflection prompt] [initial observation]
             [reflection instructions + user close + assistant open + "<remark>"]
             [reflection tokens]

A memory entry k holds, by memory mode, the reflection written after attempt k
("On attempt #k, the task is NOT successfully completed. Your reflection is: ...")
and/or the actions taken in attempt k.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from envs_jax.text import TextCodec, pad_id_of


@dataclasses.dataclass(frozen=True)
class TrialShape:
  """The static shape of a batch of trials: B tasks x G trials per task, N
  attempts per trial, T turns per attempt. Rows are task-major: row r plays
  task r // G."""

  num_tasks: int = 2        # B
  group_size: int = 2       # G
  num_attempts: int = 3     # N
  num_turns: int = 1        # T

  def __post_init__(self):
    for name in ("num_tasks", "group_size", "num_attempts", "num_turns"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"TrialShape.{name} must be an integer >= 1, got {value!r}")

  @property
  def num_rows(self) -> int:
    """R = B x G trials, one row each in the rollout."""
    return self.num_tasks * self.group_size

  @property
  def num_attempt_rows(self) -> int:
    """R x N: one training row per attempt."""
    return self.num_rows * self.num_attempts


# The pieces of a row, in order (``ContextLayout.pieces``). Generated pieces
# carry a loss; the others are prompt text the rollout feeds.
PREFIX = "prefix"                  # system + memory entries
TURN_PROMPT = "turn_prompt"        # end of last turn, user open, observation, close
THINK = "think"                    # free thinking tokens (generated)
THINK_TAIL = "think_tail"          # "</think>" unless written, then "\n<action>"
ACTION = "action"                  # the action span (generated)
REFLECT_PROMPT = "reflect_prompt"  # end of last turn, reflection request
REFLECTION = "reflection"          # the reflection (generated)
GENERATED = (THINK, ACTION, REFLECTION)


@dataclasses.dataclass(frozen=True)
class Piece:
  """One piece of an attempt's row: slots [start, start + length)."""

  name: str        # one of the piece names above
  turn: int        # turn index; -1 for the prefix, T for reflection pieces
  start: int
  length: int

  @property
  def generated(self) -> bool:
    return self.name in GENERATED

MEMORY_MODES = ("reflection_only", "history_only", "history_and_reflection", "none")
# constrained: actions are decoded under a prefix mask over the candidate
# table (always valid); free: the model writes the action span freely and a
# span that is not exactly one allowed candidate is an invalid action.
ACTION_MODES = ("constrained", "free")

ACTION_OPEN = "<action>"
ACTION_CLOSE = "</action>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
REMARK_OPEN = "<remark>"
REMARK_CLOSE = "</remark>"

_SENTINELS = ("\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01")


@dataclasses.dataclass(frozen=True)
class ChatPieces:
  """The text a chat template puts around messages."""

  system_open: str
  system_close: str   # also whatever opens nothing: text between system and user
  user_open: str
  user_close: str     # from the end of a user message to the assistant's content
  assistant_close: str


def chat_pieces(tokenizer) -> ChatPieces:
  """Finds a chat template's role headers by rendering it around sentinels.

  Only concatenations matter (system close + user open, assistant close + user
  open), so where the split falls between two adjacent pieces is immaterial.
  """
  sys_s, user_s, asst_s = _SENTINELS
  msgs = [{"role": "system", "content": sys_s}, {"role": "user", "content": user_s}]
  with_gen = tokenizer.apply_chat_template(msgs, tokenize=False,
                                           add_generation_prompt=True)
  full = tokenizer.apply_chat_template(
      msgs + [{"role": "assistant", "content": asst_s},
              {"role": "user", "content": user_s}], tokenize=False)
  if not all(s in with_gen for s in (sys_s, user_s)) or asst_s not in full:
    raise ValueError("the tokenizer's chat template drops message contents; "
                     "lamer-jax needs a system/user/assistant chat template")
  system_open, rest = with_gen.split(sys_s)
  sys_to_user, user_close = rest.split(user_s)
  asst_to_user = full.split(asst_s)[1].split(user_s)[0]
  # The user header is the longest common suffix of the two role transitions.
  k = 0
  while (k < min(len(sys_to_user), len(asst_to_user))
         and sys_to_user[-1 - k] == asst_to_user[-1 - k]):
    k += 1
  return ChatPieces(system_open=system_open,
                    system_close=sys_to_user[:len(sys_to_user) - k],
                    user_open=sys_to_user[len(sys_to_user) - k:],
                    user_close=user_close,
                    assistant_close=asst_to_user[:len(asst_to_user) - k])


def _tok(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)


def _pad_rows(rows: Sequence[np.ndarray], pad: int) -> np.ndarray:
  width = max(1, max(len(r) for r in rows))
  out = np.full((len(rows), width), pad, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class ContextLayout:
  """Token pieces and slot offsets of one attempt's row (host-side constants).

  Variable-length constant pieces are stored left-aligned in a padded array
  with a length, and written with a mask, so every row has the same slots.
  """

  codec: TextCodec
  shape: TrialShape
  memory: str
  reflection_tokens: int
  pad_id: int
  eos_id: int
  # constant pieces (1-D int32 arrays)
  prefix_open: np.ndarray
  prefix_close: np.ndarray
  memory_headers: np.ndarray      # [N-1, Lh] "On attempt #k ... reflection is: "
  memory_header_lengths: np.ndarray
  history_headers: np.ndarray     # [N-1, Lhh] "On attempt #k you took these actions: "
  history_header_lengths: np.ndarray
  memory_sep: np.ndarray          # "\n" after a memory entry
  display_tokens: np.ndarray      # [A, Ld] "{action}; " per candidate (history)
  display_lengths: np.ndarray
  turn_end: np.ndarray
  turn_open: np.ndarray           # user open + observation header
  turn_close: np.ndarray          # instructions + user close + assistant open + <action>
  reflect_open: np.ndarray
  reflect_close: np.ndarray
  # action mode and thinking
  action_mode: str = "constrained"
  think_tokens: int = 0           # 0: no thinking span
  think_close: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0,), np.int32))   # "</think>"
  action_open: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0,), np.int32))   # "\n<action>"
  think_stop: tuple[int, ...] = ()    # tokens of "</think>": ends thinking
  action_stop: tuple[int, ...] = ()   # tokens of "</action>": ends a free action

  # ---- the trial's shape ------------------------------------------------------
  @property
  def num_attempts(self) -> int:
    return self.shape.num_attempts

  @property
  def num_turns(self) -> int:
    return self.shape.num_turns

  def with_tasks(self, num_tasks: int, group_size: int | None = None
                 ) -> "ContextLayout":
    """The same rows for another batch (the slots do not depend on B or G)."""
    shape = dataclasses.replace(
        self.shape, num_tasks=num_tasks,
        group_size=self.shape.group_size if group_size is None else group_size)
    return dataclasses.replace(self, shape=shape)

  # ---- sizes -------------------------------------------------------------------
  @property
  def uses_reflection(self) -> bool:
    return self.memory in ("reflection_only", "history_and_reflection")

  @property
  def uses_history(self) -> bool:
    return self.memory in ("history_only", "history_and_reflection")

  @property
  def obs_len(self) -> int:
    return self.codec.max_tokens

  @property
  def action_len(self) -> int:
    return self.codec.action_tokens.shape[1]

  @property
  def memory_entry_len(self) -> int:
    n = 0
    if self.uses_reflection:
      n += self.memory_headers.shape[1] + self.reflection_tokens
    if self.uses_history:
      n += self.history_headers.shape[1] + self.num_turns * self.display_tokens.shape[1]
    return n + len(self.memory_sep) if n else 0

  @property
  def prefix_len(self) -> int:
    return (len(self.prefix_open) + (self.num_attempts - 1) * self.memory_entry_len
            + len(self.prefix_close))

  @property
  def turn_prompt_len(self) -> int:
    return len(self.turn_end) + len(self.turn_open) + self.obs_len + len(self.turn_close)

  @property
  def thinks(self) -> bool:
    return self.think_tokens > 0

  @property
  def think_len(self) -> int:
    """Slots between the turn prompt and the action span: the thinking
    tokens, then "</think>" and "\n<action>"; 0 without thinking."""
    if not self.thinks:
      return 0
    return self.think_tokens + len(self.think_close) + len(self.action_open)

  @property
  def turn_len(self) -> int:
    return self.turn_prompt_len + self.think_len + self.action_len

  @property
  def reflect_prompt_len(self) -> int:
    return len(self.turn_end) + len(self.reflect_open) + self.obs_len + len(self.reflect_close)

  @property
  def reflect_len(self) -> int:
    return self.reflect_prompt_len + self.reflection_tokens if self.uses_reflection else 0

  def turn_piece_lengths(self) -> tuple[tuple[str, int], ...]:
    """(name, slots) of one turn's pieces, in row order."""
    pieces = [(TURN_PROMPT, self.turn_prompt_len)]
    if self.thinks:
      pieces += [(THINK, self.think_tokens),
                 (THINK_TAIL, len(self.think_close) + len(self.action_open))]
    return tuple(pieces + [(ACTION, self.action_len)])

  def reflection_piece_lengths(self) -> tuple[tuple[str, int], ...]:
    """(name, slots) of the reflection's pieces (none without reflections)."""
    if not self.uses_reflection:
      return ()
    return ((REFLECT_PROMPT, self.reflect_prompt_len),
            (REFLECTION, self.reflection_tokens))

  @functools.cached_property
  def _pieces(self) -> tuple[Piece, ...]:
    named = [(PREFIX, -1, self.prefix_len)]
    for t in range(self.num_turns):
      named += [(name, t, n) for name, n in self.turn_piece_lengths()]
    named += [(name, self.num_turns, n) for name, n in self.reflection_piece_lengths()]
    out, start = [], 0
    for name, turn, n in named:
      out.append(Piece(name=name, turn=turn, start=start, length=n))
      start += n
    return tuple(out)

  def pieces(self) -> tuple[Piece, ...]:
    """Every piece of an attempt's row, in slot order (prefix, T turns,
    reflection): the one definition of the row's layout."""
    return self._pieces

  def piece(self, name: str, turn: int) -> Piece:
    for p in self._pieces:
      if p.name == name and p.turn == turn:
        return p
    raise KeyError(f"no piece {name!r} at turn {turn} in this layout")

  def slot_turns(self) -> np.ndarray:
    """int32[C]: the turn of every slot's piece (-1 prefix, T reflection)."""
    out = np.empty(self.context_len, np.int32)
    for p in self._pieces:
      out[p.start:p.start + p.length] = p.turn
    return out

  @property
  def context_len(self) -> int:
    """C: slots of one attempt's row."""
    last = self._pieces[-1]
    return last.start + last.length

  def turn_start(self, t: int) -> int:
    return self.piece(TURN_PROMPT, t).start

  def action_start(self, t: int) -> int:
    """Slot of turn t's first action token."""
    return self.piece(ACTION, t).start

  def state_slots(self) -> np.ndarray:
    """int32[T]: per turn, the slot whose hidden state stands for the turn's
    state ``s_t`` (a value head's input): the last slot of its prompt, after
    the observation and before anything the policy generates in the turn (its
    thinking or action). That slot is prompt text fed on every played turn,
    so it is real wherever the turn is valid."""
    return np.asarray([p.start + p.length - 1 for p in self._pieces
                       if p.name == TURN_PROMPT], np.int32)

  @property
  def reflect_start(self) -> int:
    """First slot after the turns (where the reflection pieces start)."""
    end = self.piece(ACTION, self.num_turns - 1)
    return end.start + end.length

  def loss_slot_kinds(self, train_reflection: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Static slot indices of every generated token, and which of them are
    constrained action tokens.

    Read from ``pieces()``: per turn its thinking tokens (if any), then its
    action tokens; then the reflection tokens (if ``train_reflection``). Each
    generated piece directly follows a prompt piece that is always real, so the
    logits predicting slot s are the model's outputs at slot s - 1.
    Constrained action tokens are scored under the candidate table's prefix
    mask; all others (thinking, free-form actions, reflections) over the
    whole vocabulary.
    """
    idx, kind = [], []
    constrained = self.action_mode == "constrained"
    for p in self._pieces:
      if not p.generated or (p.name == REFLECTION and not train_reflection):
        continue
      idx.append(p.start + np.arange(p.length))
      kind.append(np.full(p.length, constrained and p.name == ACTION))
    return np.concatenate(idx).astype(np.int32), np.concatenate(kind)

  def describe(self) -> str:
    think = f", thinking {self.think_len}" if self.thinks else ""
    return (f"context {self.context_len} slots = prefix {self.prefix_len} + "
            f"{self.num_turns} turns x {self.turn_len} (obs {self.obs_len}{think}, "
            f"{self.action_mode} action {self.action_len}) + reflection "
            f"{self.reflect_len}")


def short_prompt(layout: ContextLayout, tokenizer) -> ContextLayout:
  """``layout`` with the instructions and the per-turn prose removed.

  For from-scratch models, which get nothing from English rules text: the
  system message holds only the memory, a turn only the observation and
  ``<action>``. Memory headers and every other piece are unchanged.
  """
  chat = chat_pieces(tokenizer)
  tok = lambda text: _tok(tokenizer, text)
  return dataclasses.replace(
      layout, prefix_open=tok(chat.system_open), turn_open=tok(chat.user_open),
      turn_close=tok(chat.user_close + ACTION_OPEN))


def build_layout(tokenizer, env, shape: TrialShape, *,
                 memory: str = "reflection_only", reflection_tokens: int = 64,
                 system_extra: str = "", action_mode: str = "constrained",
                 think_tokens: int = 0) -> ContextLayout:
  """Tokenizes every constant piece of the prompts for ``env`` (host side).

  Args:
    tokenizer: the model's tokenizer (its chat template frames the prompts).
    env: the game.
    shape: the trial's shape (N attempts and T turns size the row; B and G
      the batch, which ``ContextLayout.with_tasks`` changes freely).
    memory: one of ``MEMORY_MODES``.
    reflection_tokens: the reflection budget.
    system_extra: text appended to the system prompt.
    action_mode: one of ``ACTION_MODES``.
    think_tokens: budget of a free "<think>" span before every action (0:
      none); the model ends it early by writing "</think>".
  """
  if memory not in MEMORY_MODES:
    raise ValueError(f"unknown memory mode {memory!r}; choose one of {MEMORY_MODES}")
  if action_mode not in ACTION_MODES:
    raise ValueError(f"unknown action mode {action_mode!r}; choose one of "
                     f"{ACTION_MODES}")
  if think_tokens < 0:
    raise ValueError(f"think_tokens must be >= 0, got {think_tokens}")
  num_attempts = shape.num_attempts
  chat = chat_pieces(tokenizer)
  codec = TextCodec.for_env(tokenizer, env, action_terminator=ACTION_CLOSE)
  pad = pad_id_of(tokenizer)
  eos = int(tokenizer.eos_token_id)
  # One attempt (single-episode RL, ORBIT's continuous trials) gets no
  # sentence about attempts.
  attempts = (f" You have up to {num_attempts} attempts at the same task; each "
              f"attempt restarts from the same initial state." if num_attempts > 1
              else "")
  system = (f"{env.instructions}\nAnswer every turn with exactly one action inside "
            f"{ACTION_OPEN}{ACTION_CLOSE}, for example {ACTION_OPEN}"
            f"{env.action_strings[0]}{ACTION_CLOSE}.{attempts}{system_extra}")
  headers = [f"On attempt #{k + 1}, the task is NOT successfully completed. "
             f"Your reflection is: " for k in range(max(1, num_attempts - 1))]
  hist = [f"On attempt #{k + 1}, you took these actions: "
          for k in range(max(1, num_attempts - 1))]
  t = lambda s: _tok(tokenizer, s)
  if think_tokens:
    turn_close = t(f"Think briefly inside {THINK_OPEN}{THINK_CLOSE}, then give "
                   f"your next action inside {ACTION_OPEN}{ACTION_CLOSE}."
                   + chat.user_close + THINK_OPEN)
  else:
    turn_close = t("Choose your next action." + chat.user_close + ACTION_OPEN)
  mem_h = [t(h) for h in headers]
  hist_h = [t(h) for h in hist]
  disp = [t(f"{a}; ") for a in env.action_strings]
  return ContextLayout(
      codec=codec, shape=shape, memory=memory,
      reflection_tokens=reflection_tokens, pad_id=pad, eos_id=eos,
      prefix_open=t(chat.system_open + system + "\n"),
      prefix_close=t(chat.system_close),
      memory_headers=_pad_rows(mem_h, pad),
      memory_header_lengths=np.asarray([len(h) for h in mem_h], np.int32),
      history_headers=_pad_rows(hist_h, pad),
      history_header_lengths=np.asarray([len(h) for h in hist_h], np.int32),
      memory_sep=t("\n"),
      display_tokens=_pad_rows(disp, pad),
      display_lengths=np.asarray([len(d) for d in disp], np.int32),
      turn_end=t(chat.assistant_close),
      turn_open=t(chat.user_open + "Current state:\n"),
      turn_close=turn_close,
      reflect_open=t(chat.user_open + "The attempt is over and the task is NOT "
                     "successfully completed. The initial state was:\n"),
      reflect_close=t(
          "Reflect on what went wrong and write a short plan for the next "
          f"attempt, inside {REMARK_OPEN}{REMARK_CLOSE}." + chat.user_close
          + REMARK_OPEN),
      action_mode=action_mode, think_tokens=think_tokens,
      think_close=t(THINK_CLOSE) if think_tokens else np.zeros((0,), np.int32),
      action_open=t("\n" + ACTION_OPEN) if think_tokens else np.zeros((0,), np.int32),
      think_stop=tuple(int(x) for x in t(THINK_CLOSE)),
      action_stop=tuple(int(x) for x in t(ACTION_CLOSE)),
  )
