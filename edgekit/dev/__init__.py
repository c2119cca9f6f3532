"""Development tools (torch/transformers only, never on devices): synth, the synthetic tokenizer, train,
the HF reference."""
