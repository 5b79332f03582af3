"""lamer-jax: JAX-native meta-RL for LLM agents."""

from setuptools import find_packages, setup

# Everything the library and its entry points (train, evaluate, plot,
# random_baseline, benchmark's JAX side) import at run time: .ci/run runs the
# main job in a venv built from `pip install -e .` alone, so a missing one
# fails CI. Ranges tested together: jax 0.10.2 (CPU, Python 3.11) and jax
# 0.11.x (CUDA, Python 3.12). jax/flax move fast: widen only after running
# the suite.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "chex>=0.1.90,<0.2",
    "numpy>=1.26,<3",
    "einops>=0.8,<0.9",
    "absl-py>=2.1,<3",
    "ml-collections>=1.0,<2",
    "transformers>=5.0,<6",
    "jinja2>=3.1,<4",             # transformers' chat templates (agent.layout.chat_pieces)
    "tokenizers>=0.21,<0.24",
    "safetensors>=0.5,<0.9",
    "gguf>=0.17,<0.20",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",          # experiments.plot
    "tensorboardX>=2.6,<3",        # TensorBoard event files in every run's workdir
]

EXTRAS = {
    # torch is the parity oracle for the model tests and the generation benchmark.
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7", "torch>=2.4,<2.14", "accelerate>=1.0,<2",
             "nbclient>=0.10,<0.12", "nbformat>=5.10,<6", "ipykernel>=6.29,<8"],
    "dev": ["ruff>=0.6"],
}

setup(
    name="lamer-jax",
    version="0.1.0",
    description="JAX-native functional meta-RL (LaMer, SAC-GLAM, ORBIT) for LLM agents",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["envs_jax*", "lamer_jax*", "experiments*"]),
    # The word lists of Hangman and Wordle (made by scripts/make_wordlists.py).
    package_data={"envs_jax": ["data/*.txt", "data/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
