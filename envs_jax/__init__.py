"""Pure-JAX text environments for LLM agents (contract: ``envs_jax.core``)."""

from envs_jax.core import API_VERSION, Environment, TimeStep, hash_arrays
from envs_jax.registry import make, register, registered

__all__ = [
    "API_VERSION", "Environment", "TimeStep", "hash_arrays", "make", "register",
    "registered",
]
