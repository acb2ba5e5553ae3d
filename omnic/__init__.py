"""omnic: a declarative model compiler. One YAML spec in; verified ONNX, GGUF, ExecuTorch, Core ML
and TVM artifacts and a diffable manifest out."""

__version__ = "0.1.0"
