"""llama.cpp: the GGUF format, its converter, vocabulary, header reader, quantizer and runner."""
