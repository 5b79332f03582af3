"""Prompt pieces and the static token layout of one attempt's context.

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
("On trial #k, the task is NOT successfully completed. Your reflection is: ...")
and/or the actions taken in attempt k.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from envs_jax.text import TextCodec, pad_id_of

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
  num_attempts: int
  num_turns: int
  memory: str
  reflection_tokens: int
  pad_id: int
  eos_id: int
  # constant pieces (1-D int32 arrays)
  prefix_open: np.ndarray
  prefix_close: np.ndarray
  memory_headers: np.ndarray      # [N-1, Lh] "On trial #k ... reflection is: "
  memory_header_lengths: np.ndarray
  history_headers: np.ndarray     # [N-1, Lhh] "On trial #k you took these actions: "
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

  def action_start(self, t: int) -> int:
    """Slot of turn t's first action token."""
    return self.turn_start(t) + self.turn_prompt_len + self.think_len

  @property
  def reflect_prompt_len(self) -> int:
    return len(self.turn_end) + len(self.reflect_open) + self.obs_len + len(self.reflect_close)

  @property
  def reflect_len(self) -> int:
    return self.reflect_prompt_len + self.reflection_tokens if self.uses_reflection else 0

  @property
  def context_len(self) -> int:
    """C: slots of one attempt's row."""
    return self.prefix_len + self.num_turns * self.turn_len + self.reflect_len

  def turn_start(self, t: int) -> int:
    return self.prefix_len + t * self.turn_len

  @property
  def reflect_start(self) -> int:
    return self.prefix_len + self.num_turns * self.turn_len

  def describe(self) -> str:
    think = f", thinking {self.think_len}" if self.thinks else ""
    return (f"context {self.context_len} slots = prefix {self.prefix_len} + "
            f"{self.num_turns} turns x {self.turn_len} (obs {self.obs_len}{think}, "
            f"{self.action_mode} action {self.action_len}) + reflection "
            f"{self.reflect_len}")


def build_layout(tokenizer, env, *, num_attempts: int, num_turns: int,
                 memory: str = "reflection_only", reflection_tokens: int = 64,
                 system_extra: str = "", action_mode: str = "constrained",
                 think_tokens: int = 0) -> ContextLayout:
  """Tokenizes every constant piece of the prompts for ``env`` (host side).

  Args:
    tokenizer: the model's tokenizer (its chat template frames the prompts).
    env: the game.
    num_attempts, num_turns: N and T.
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
  chat = chat_pieces(tokenizer)
  codec = TextCodec.for_env(tokenizer, env, action_terminator=ACTION_CLOSE)
  pad = pad_id_of(tokenizer)
  eos = int(tokenizer.eos_token_id)
  system = (f"{env.instructions}\nAnswer every turn with exactly one action inside "
            f"{ACTION_OPEN}{ACTION_CLOSE}, for example {ACTION_OPEN}"
            f"{env.action_strings[0]}{ACTION_CLOSE}. You have up to {num_attempts} "
            f"attempts at the same task; each attempt restarts from the same "
            f"initial state.{system_extra}")
  headers = [f"On trial #{k + 1}, the task is NOT successfully completed. "
             f"Your reflection is: " for k in range(max(1, num_attempts - 1))]
  hist = [f"On trial #{k + 1}, you took these actions: "
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
      codec=codec, num_attempts=num_attempts, num_turns=num_turns, memory=memory,
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
