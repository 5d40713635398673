"""machado-lm serving: ONNX Runtime models over HTTP (no torch, no training code)."""
