"""The coreml target: Core ML .mlpackage.

Importing this package registers the target (`get_target("coreml")`). The modules beside it are
listed in ARCHITECTURE.md; backend libraries are imported lazily inside them.
"""

from omnic.targets.coreml.target import CoremlTarget

__all__ = ["CoremlTarget"]
