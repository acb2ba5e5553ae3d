"""The gguf target: GGUF for llama.cpp.

Importing this package registers the target (`get_target("gguf")`). The modules beside it are
listed in ARCHITECTURE.md; backend libraries are imported lazily inside them.
"""

from omnic.targets.gguf.target import GgufTarget

__all__ = ["GgufTarget"]
