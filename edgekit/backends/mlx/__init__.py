"""mlx-lm: the MLX format, its converter, the on-disk PLE table and the runner."""
