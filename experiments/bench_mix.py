"""Multi-task layouts: one sub-batch per game against one union layout.

A multi-task step can batch its games in two ways:

* **union**: every row gets one layout wide enough for every game (the
  longest instructions, the most turns, the widest observation and action
  span) and the game is picked per row with ``lax.switch`` on a game id;
* **sub-batches** (``lamer.make_mix_train_step``): every game keeps its own
  layout and its own vmapped rollout, all compiled into one program.

The policy's work (prefill, decoding, the teacher-forced update) is
proportional to a row's slots, and the attention part to their square; holes
in a row are masked, not skipped, so a union row costs its full width
whatever game it plays. Under ``vmap`` a ``lax.switch`` on a batched index
also becomes a select over every branch, so each union row would step all
games. This module counts, from the real layouts (same tokenizer, same
K = 3 continuous trials as ``experiments/configs/orbit.py``), the slots and
squared slots each way; the counts are exact, not timed.
"""

from __future__ import annotations

from typing import Sequence

import envs_jax
from envs_jax.continuous import Continuous
from lamer_jax.agent.layout import TrialShape, build_layout


def layout_rows(tokenizer, games: Sequence[str], episodes: int = 3
                ) -> list[dict[str, int | str]]:
  """Per game: context slots and their parts, for one continuous trial."""
  rows = []
  for name in games:
    env = Continuous(envs_jax.make(name), episodes=episodes)
    shape = TrialShape(num_tasks=1, group_size=1, num_attempts=1,
                       num_turns=env.max_turns)
    lay = build_layout(tokenizer, env, shape, memory="none")
    turn = sum(width for _, width in lay.turn_piece_lengths())
    rows.append({"game": name, "turns": env.max_turns, "context": lay.context_len,
                 "prefix": lay.context_len - env.max_turns * turn, "turn": turn,
                 "obs": lay.codec.max_tokens, "actions": env.num_actions})
  return rows


def union_context(rows: Sequence[dict[str, int | str]]) -> int:
  """A row wide enough for every game: the widest prefix and turn, the most
  turns (an upper bound is all a static union layout can use)."""
  return (max(int(r["prefix"]) for r in rows)
          + max(int(r["turns"]) for r in rows) * max(int(r["turn"]) for r in rows))


def run(tokenizer, tokenizer_name: str, games: Sequence[str],
        episodes: int = 3) -> str:
  """The markdown body: per-game layouts and the two batchings' totals."""
  rows = layout_rows(tokenizer, games, episodes)
  union = union_context(rows)
  lines = [
      f"Tokenizer: {tokenizer_name}; every game in continuous trials of "
      f"{episodes} episodes (`experiments/configs/orbit.py`), memory none. "
      "*context* is a row's slots (prefix = system prompt and instructions; "
      "turn = prompt, observation and action span); one row per game.", "",
      "| game | turns | prefix | turn | obs tokens | candidates | context |",
      "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['game']} | {r['turns']} | {r['prefix']} | {r['turn']} | "
                 f"{r['obs']} | {r['actions']} | {r['context']} |")
  sub = sum(int(r["context"]) for r in rows)
  sub2 = sum(int(r["context"]) ** 2 for r in rows)
  n = len(rows)
  lines += [
      f"| **union** | {max(int(r['turns']) for r in rows)} | "
      f"{max(int(r['prefix']) for r in rows)} | {max(int(r['turn']) for r in rows)} | "
      f"{max(int(r['obs']) for r in rows)} | {max(int(r['actions']) for r in rows)} | "
      f"{union} |", "",
      "| batching | slots, one row per game | squared slots (attention) |",
      "|---|---:|---:|",
      f"| sub-batches (`make_mix_train_step`) | {sub:,} | {sub2:,} |",
      f"| union layout | {n * union:,} ({n * union / sub:.1f}x) | "
      f"{n * union ** 2:,} ({n * union ** 2 / sub2:.1f}x) |"]
  return "\n".join(lines) + "\n"
