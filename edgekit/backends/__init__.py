"""Backends: one registration per engine (backend.py, registry.BACKENDS), the protocols they implement
(format, runner, generator, logits), and one folder per backend (gguf/, mlx/)."""
