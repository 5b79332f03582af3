"""absl entry points: training, evaluation and benchmarks."""
