"""llama.cpp: the GGUF format, its converter, vocabulary, header reader and quantizer; the runner, the
generator (with its prefix cache) and eval's logits source on llama-cpp-python; backend.py registers them."""
