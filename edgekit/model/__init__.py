"""The source model: Gemma 4 config, the checkpoint (a folder or a hub id), safetensors io, dtypes."""
