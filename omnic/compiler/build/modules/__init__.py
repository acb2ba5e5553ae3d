"""Decoder building blocks. They take plain arguments and never import `omnic.spec`."""

from omnic.compiler.build.modules.attention import Attention
from omnic.compiler.build.modules.decoder import Block, Decoder
from omnic.compiler.build.modules.ffn import FeedForward, MoE
from omnic.compiler.build.modules.norm import make_norm
from omnic.compiler.build.modules.rope import Rope, rope_frequencies

__all__ = ["Attention", "Block", "Decoder", "FeedForward", "MoE", "Rope", "make_norm", "rope_frequencies"]
