"""The onnx target: ONNX for onnxruntime and onnxruntime-genai.

Importing this package registers the target (`get_target("onnx")`). The modules beside it are
listed in ARCHITECTURE.md; backend libraries are imported lazily inside them.
"""

from omnic.targets.onnx.target import OnnxTarget

__all__ = ["OnnxTarget"]
