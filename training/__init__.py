"""machado-lm training: corpus -> tokenizer -> models -> training -> evaluation -> ONNX."""
