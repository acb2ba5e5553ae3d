"""Decoder building blocks. They take plain arguments and never import `omnic.spec`."""

from omnic.model.modules.attention import Attention
from omnic.model.modules.decoder import Block, Decoder
from omnic.model.modules.ffn import FeedForward, MoE
from omnic.model.modules.norm import make_norm
from omnic.model.modules.rope import Rope, rope_frequencies

__all__ = ["Attention", "Block", "Decoder", "FeedForward", "MoE", "Rope", "make_norm",
           "rope_frequencies"]
