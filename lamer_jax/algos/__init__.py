"""Training algorithms, each one compiled step built on ``lamer_jax.agent``.

* ``lamer`` — LaMer and its on-policy baselines (single-episode GRPO / GiGPO).
"""
