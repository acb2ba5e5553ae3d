"""Hugging Face checkpoint tensors -> omnic canonical tensors, per family.

Reads `model.safetensors` or the shards listed in `model.safetensors.index.json` through
memory maps, one tensor at a time (`omnic.importers.checkpoint.read_safetensors`), and
renames (and, for Phi-3's fused projections and transformers 5's fused experts, splits) each
into omnic's names. Tensors stay unpermuted: omnic's RoPE uses the same rotate_half convention as
transformers. Which file holds which tensor, and under which omnic name, is decided torch-free
(`read_plan`), so that `omnic validate` checks a checkpoint exactly as the build reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from omnic.importers.checkpoint import (WeightError, check_weights, read_safetensors,
                                        safetensors_keys)
from omnic.importers.hf import family_of, read_config

if TYPE_CHECKING:
    import torch

    from omnic.spec.inventory import TensorInfo

# (hf regex on the part after "model.layers.{i}.", omnic name after "layers.{i}.")
_LAYER = [
    (r"input_layernorm\.weight", "attn_norm.weight"),
    (r"self_attn\.([qkvo])_proj\.(weight|bias)", r"attn.\1.\2"),
    (r"self_attn\.([qk])_norm\.weight", r"attn.\1_norm.weight"),
    (r"mlp\.(gate|up|down)_proj\.weight", r"ffn.\1.weight"),
    # Mixtral, as saved on the Hub and by transformers' save_pretrained
    (r"block_sparse_moe\.gate\.weight", "ffn.router.weight"),
    (r"block_sparse_moe\.experts\.(\d+)\.w1\.weight", r"ffn.experts.\1.gate.weight"),
    (r"block_sparse_moe\.experts\.(\d+)\.w3\.weight", r"ffn.experts.\1.up.weight"),
    (r"block_sparse_moe\.experts\.(\d+)\.w2\.weight", r"ffn.experts.\1.down.weight"),
    # Qwen3-MoE on the Hub and from save_pretrained (router: mlp.gate, as in memory)
    (r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", r"ffn.experts.\1.\2.weight"),
    (r"mlp\.gate\.weight", "ffn.router.weight"),  # transformers 5 in-memory MoE layout
    # LFM2: its own names for the norms, the MLP and attention's output and q/k norms, and the
    # short-convolution layers' tensors
    (r"operator_norm\.weight", "attn_norm.weight"),
    (r"ffn_norm\.weight", "ffn_norm.weight"),
    (r"feed_forward\.w1\.weight", "ffn.gate.weight"),
    (r"feed_forward\.w3\.weight", "ffn.up.weight"),
    (r"feed_forward\.w2\.weight", "ffn.down.weight"),
    (r"self_attn\.out_proj\.weight", "attn.o.weight"),
    (r"self_attn\.([qk])_layernorm\.weight", r"attn.\1_norm.weight"),
    (r"conv\.(in_proj|out_proj)\.weight", r"conv.\1.weight"),
    (r"conv\.conv\.weight", "conv.kernel.weight"),
    # Granite 4's Mamba-2 layers (GraniteMoeHybridMambaLayer) and its dense MLP
    (r"mamba\.(in_proj|out_proj|norm)\.weight", r"ssm.\1.weight"),
    (r"mamba\.conv1d\.(weight|bias)", r"ssm.conv.\1"),
    (r"mamba\.(dt_bias|A_log|D)", r"ssm.\1"),
    (r"shared_mlp\.output_linear\.weight", "ffn.down.weight"),
    # Qwen3.5's Gated DeltaNet layers
    (r"linear_attn\.in_proj_(qkv|z|b|a)\.weight", r"deltanet.\1.weight"),
    (r"linear_attn\.conv1d\.weight", "deltanet.conv.weight"),
    (r"linear_attn\.(dt_bias|A_log)", r"deltanet.\1"),
    (r"linear_attn\.(norm|out_proj)\.weight", r"deltanet.\1.weight"),
]
# post_attention_layernorm is the FFN's pre-norm in Llama-style blocks, but the norm *after*
# attention in Gemma 2/3's sandwich, where pre_feedforward_layernorm is the FFN's pre-norm, and in
# OLMo 2's post-norm block, which has no pre-norms at all.
_LLAMA_NORMS = [(r"post_attention_layernorm\.weight", "ffn_norm.weight")]
_SANDWICH_NORMS = [
    (r"post_attention_layernorm\.weight", "post_attn_norm.weight"),
    (r"pre_feedforward_layernorm\.weight", "ffn_norm.weight"),
    (r"post_feedforward_layernorm\.weight", "post_ffn_norm.weight"),
]
_TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
        "model.embedding_norm.weight": "norm.weight",  # LFM2's final norm
        "lm_head.weight": "lm_head.weight"}
# a buffer some old checkpoints carry; the vision tower and the multi-token-prediction head of
# Qwen3.5's released checkpoints (omnic imports their text decoder)
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$|model\.visual\..*|mtp\..*")

# Splitters only index and chunk their argument: they take torch tensors at build time and
# shape stand-ins when `omnic validate` checks a header (omnic.importers.checkpoint_checks).
Split = Callable[["torch.Tensor"], Iterator[tuple[str, "torch.Tensor"]]]


def _fused_splitter(rest: str, layer: str, dims: dict[str, int]) -> Split | None:
    """Splitters for fused tensors (Phi-3 qkv/gate_up, transformers 5 experts, Qwen3.5's query
    and output gate)."""
    if rest == "self_attn.q_proj.weight" and dims.get("gate"):  # per head: query | gate rows
        def split_gate(t: torch.Tensor):
            halves = t.reshape(t.shape[0] // dims["gate"], dims["gate"], *t.shape[1:])
            yield f"{layer}.attn.q.weight", halves[0::2].reshape(-1, *t.shape[1:])
            yield f"{layer}.attn.gate.weight", halves[1::2].reshape(-1, *t.shape[1:])
        return split_gate
    if rest == "self_attn.qkv_proj.weight":  # [q | k | v] rows
        def split_qkv(t: torch.Tensor):
            q, kv = dims["q"], dims["kv"]
            yield f"{layer}.attn.q.weight", t[:q]
            yield f"{layer}.attn.k.weight", t[q : q + kv]
            yield f"{layer}.attn.v.weight", t[q + kv :]
        return split_qkv
    # Phi3MLP and Granite 4's GraniteMoeHybridMLP: gate, up = chunk(2)
    if rest in ("mlp.gate_up_proj.weight", "shared_mlp.input_linear.weight"):
        def split_gate_up(t: torch.Tensor):
            gate, up = t.chunk(2, dim=0)
            yield f"{layer}.ffn.gate.weight", gate
            yield f"{layer}.ffn.up.weight", up
        return split_gate_up
    if rest == "mlp.experts.gate_up_proj":  # [E, 2*I, D]: gate rows then up rows per expert
        def split_experts(t: torch.Tensor):
            for e in range(t.shape[0]):
                gate, up = t[e].chunk(2, dim=0)
                yield f"{layer}.ffn.experts.{e}.gate.weight", gate
                yield f"{layer}.ffn.experts.{e}.up.weight", up
        return split_experts
    if rest == "mlp.experts.down_proj":  # [E, D, I]
        def split_down(t: torch.Tensor):
            for e in range(t.shape[0]):
                yield f"{layer}.ffn.experts.{e}.down.weight", t[e]
        return split_down
    return None


def renamer(sandwich: bool, dims: dict[str, int]) -> Callable[[str], Split | str | None]:
    """hf name -> an omnic name, a splitter, or None when the tensor has no omnic meaning."""
    rules = [(re.compile(p), r)
             for p, r in _LAYER + (_SANDWICH_NORMS if sandwich else _LLAMA_NORMS)]

    def rename(name: str):
        name = re.sub(r"^model\.language_model\.", "model.", name)  # Qwen3.5's released files
        if name in _TOP:
            return _TOP[name]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if not m:
            return None
        layer, rest = f"layers.{m.group(1)}", m.group(2)
        fused = _fused_splitter(rest, layer, dims) if rest.startswith("self_attn.q_") else None
        if fused is not None:
            return fused
        for pattern, repl in rules:
            if pattern.fullmatch(rest):
                return f"{layer}.{pattern.sub(repl, rest)}"
        return _fused_splitter(rest, layer, dims)

    return rename


def checkpoint_files(hf_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint (a single file or the shards of an index)."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [hf_dir / f for f in dict.fromkeys(weight_map.values())]
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    if any(hf_dir.glob("*.bin")):
        raise WeightError(f"{hf_dir}: only safetensors checkpoints are read (found *.bin); "
                          "convert with transformers' save_pretrained(safe_serialization=True)")
    raise WeightError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")


@dataclass
class ReadPlan:
    """What the build reads from a Hugging Face checkpoint, decided from the headers alone."""

    arch: str  # the architecture of config.json
    files: list[tuple[Path, dict[str, str | Split]]]  # per file: {hf name: omnic name | split}


def read_plan(hf_dir: Path, inventory: list["TensorInfo"]) -> ReadPlan:
    """Which tensors of which file the build reads, under which omnic names (torch-free).

    Raises:
        WeightError: a shard listed in the index is missing, or a checkpoint tensor has no place
            in the spec's model.
    """
    hf_dir = Path(hf_dir)
    arch, _ = family_of(read_config(hf_dir))
    by_name = {t.name: t for t in inventory}
    q = by_name["layers.0.attn.q.weight"].shape[0] if "layers.0.attn.q.weight" in by_name else 0
    kv = by_name["layers.0.attn.k.weight"].shape[0] if "layers.0.attn.k.weight" in by_name else 0
    # Qwen3.5's output gate: q_proj interleaves query and gate per head (of its q_norm's width)
    gates = [t.name for t in inventory if t.name.endswith(".attn.gate.weight")]
    gate = by_name[gates[0].replace(".gate.", ".q_norm.")].shape[0] if gates else 0
    rename = renamer("layers.0.post_attn_norm.weight" in by_name, {"q": q, "kv": kv, "gate": gate})
    tied = "lm_head.weight" not in by_name
    files: list[tuple[Path, dict[str, str | Split]]] = []
    unknown: list[str] = []
    for path in checkpoint_files(hf_dir):
        if not path.is_file():
            raise WeightError(f"{path}: shard listed in the index is missing")
        wanted: dict[str, str | Split] = {}
        for hf_name in safetensors_keys(path):
            target = rename(hf_name)
            if target is None:
                if not _IGNORED.fullmatch(hf_name):
                    unknown.append(hf_name)
            elif target == "lm_head.weight" and tied:
                continue  # a tied checkpoint may still store a copy of the embedding
            elif isinstance(target, str) and target not in by_name:
                unknown.append(f"{hf_name} (as {target})")  # e.g. an o_proj bias
            else:
                wanted[hf_name] = target
        files.append((path, wanted))
    if unknown:
        raise WeightError(
            f"{hf_dir} ({arch}): {len(unknown)} checkpoint tensors have no place in the spec's "
            f"model: "
            f"{', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}"
        )
    return ReadPlan(arch, files)


def hf_weights(hf_dir: Path, inventory: list["TensorInfo"]) -> dict[str, "torch.Tensor"]:
    """The checkpoint's tensors under omnic's names, float32, checked against `inventory`."""
    plan = read_plan(Path(hf_dir), inventory)
    state: dict[str, torch.Tensor] = {}
    for path, wanted in plan.files:
        for hf_name, tensor in read_safetensors(path, list(wanted)):
            target = wanted[hf_name]
            pieces = [(target, tensor)] if isinstance(target, str) else target(tensor)
            for name, piece in pieces:
                state[name] = piece.contiguous()
            del tensor
    check_weights(state, inventory, f"{hf_dir} ({plan.arch})")
    return state
