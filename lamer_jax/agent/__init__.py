"""The agent core every method shares.

* ``layout``  — the trial's shape (``TrialShape``), prompt pieces and the ONE
  definition of a row's slots (``ContextLayout.pieces()``);
* ``context`` — feeding a batch of growing contexts (KV cache) and the spans
  that enter them;
* ``memory``  — what a trial carries from attempt to attempt;
* ``acting``  — thinking and action decoding (constrained or free);
* ``trial``   — the one trial loop (attempts x turns, with the games' keys),
  the language-model policy on it, and the task seeds;
* ``scoring`` — teacher-forced log-probs and entropies of rows.
"""
