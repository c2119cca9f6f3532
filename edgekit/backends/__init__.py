"""The format and engine registries, their protocols, and one folder per backend (gguf/, mlx/)."""
