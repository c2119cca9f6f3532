"""edgekit: Gemma 4 E2B from a Hugging Face checkpoint to a measured, memory-budgeted edge deployment."""

__version__ = "0.1.0"
