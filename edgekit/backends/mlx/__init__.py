"""mlx-lm: the MLX format, its converter and the on-disk PLE table; the runner, the generator and eval's
logits source; backend.py registers them."""
