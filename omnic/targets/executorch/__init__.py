"""The executorch target: ExecuTorch .pte with the XNNPACK (or Core ML) delegate.

Importing this package registers the target (`get_target("executorch")`). The modules beside it are
listed in ARCHITECTURE.md; backend libraries are imported lazily inside them.
"""

from omnic.targets.executorch.target import ExecutorchTarget

__all__ = ["ExecutorchTarget"]
