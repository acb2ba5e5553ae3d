"""The TVM target's rules on the shared table of `omnic.targets.rules` (torch-free). Its other
limits need TVM itself and live in `target._problems`; importing this module registers them."""

from __future__ import annotations

from omnic.constants import Targets
from omnic.targets.mixers import register_attention_only

register_attention_only(Targets.TVM)  # LFM2's short_conv: GGUF only so far
