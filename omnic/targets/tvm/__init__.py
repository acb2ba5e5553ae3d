"""The tvm target: TVM: Relax VM executables for the host and the device triple.

Importing this package registers the target (`get_target("tvm")`). The modules beside it are
listed in ARCHITECTURE.md; backend libraries are imported lazily inside them.
"""

from omnic.targets.tvm.target import TvmTarget

__all__ = ["TvmTarget"]
