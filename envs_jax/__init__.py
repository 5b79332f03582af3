"""Pure-JAX text environments for LLM agents."""

from envs_jax.core import (API_VERSION, AutoReset, Environment, TimeStep, Trial,
                           TrialState, TrialStep, VmapEnv, hash_arrays)
from envs_jax.registry import make, register, registered

__all__ = [
    "API_VERSION", "AutoReset", "Environment", "TimeStep", "Trial", "TrialState",
    "TrialStep", "VmapEnv", "hash_arrays", "make", "register", "registered",
]
