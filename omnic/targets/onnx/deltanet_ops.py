"""The Gated DeltaNet layer as onnxruntime's com.microsoft ops: CausalConvWithState and
LinearAttention, written into the graph by the exporter.

omnic's torch layer (omnic.model.modules.deltanet) runs a call's tokens in the parallel WY form,
whose triangular inverse is a fixed count of [T, T] matrix products per head (ceil(log2(context)),
18 at a 262144-token context, whatever T): it exports as plain ONNX (the target does so with
targets.onnx.fusions off), but a prompt pays those products and a decode step their count.
onnxruntime 1.31 has CPU kernels for the layer's two stateful parts, the ones onnxruntime-genai's
builder emits for Qwen3.5 (`Qwen35TextModel.make_qwen_gated_delta_net`):
  CausalConvWithState(input [B, C, T], weight [C, 1, K], bias, past_state [B, C, K - 1])
      -> (silu(causal depthwise conv) [B, C, T], present_state [B, C, K - 1])
  LinearAttention(query, key [B, T, key_heads * dk], value [B, T, value_heads * dv],
                  past_state [B, value_heads, dk, dv], decay [B, T, value_heads] (log space),
                  beta [B, T, value_heads]; q_num_heads = key_heads, kv_num_heads =
                  value_heads, update_rule "gated_delta", scale)
      -> (output [B, T, value_heads * dv], present_state)
Both states are omnic's own layouts (the conv state's channels q | k | v, S key-major), so the
graph's state I/O is the layer's k and v cache slots as they are. Value head h reads key head
h // (value_heads / key_heads) in the CPU kernel, transformers' repeat_interleave (checked by hand
against a float64 recurrence: 6e-8 at T = 12 and T = 150, one chunk and several; 1e-7 for the
state; tests/targets/test_onnx_qwen35.py checks the whole graph against transformers). The
kernels' docs ask q_num_heads to be a multiple of kv_num_heads; the CPU kernel also runs this
inverse grouping, as the builder's graphs rely on.
  ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/qwen.py

How: two torch custom ops (`omnic_onnx::causal_conv_silu`, `omnic_onnx::gated_delta_rule`) with
a reference body each, which a copy of the layer (`OnnxGatedDeltaNet`) calls in place of the
convolution and the WY form; the exporter's custom_translation_table (`TRANSLATIONS`) writes each
as its com.microsoft node. The rest stays plain ONNX, as the torch layer computes it: the
projections (MatMul, quantized like any other), the L2 norm with transformers' eps (onnxruntime's
LpNormalization has none: the builder's graphs differ from transformers by 1e-4 for it), the gates
and the gated norm. `with_onnx_ops(decoder)` is a view of the decoder with its gated_deltanet
layers swapped for that copy; the decoder itself is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx.defs import OpSchema
from onnxscript.values import Op, Opset

from omnic.model.modules.deltanet import GatedDeltaNet, l2norm

NAMESPACE = "omnic_onnx"


@torch.library.custom_op(f"{NAMESPACE}::causal_conv_silu", mutates_args=())
def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """silu of the causal depthwise convolution of [state | x] (x [B, C, T], weight [C, 1, K],
    state [B, C, K - 1]): ([B, C, T], the last K - 1 inputs, the next state)."""
    seq = torch.cat((state, x), dim=2)
    y = F.silu(F.conv1d(seq, weight, None, groups=weight.shape[0]))
    return y, seq[:, :, seq.shape[2] - state.shape[2]:].contiguous()


@causal_conv_silu.register_fake
def _(x, weight, state):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape), state.new_empty(state.shape)


@torch.library.custom_op(f"{NAMESPACE}::gated_delta_rule", mutates_args=())
def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                     g: torch.Tensor, beta: torch.Tensor, key_heads: int, scale: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule token by token: q, k [B, T, key_heads * dk], v [B, T, H * dv], the
    state S [B, H, dk, dv], the log decay g and beta [B, T, H] -> (o = scale S^T q
    [B, T, H * dv], the last S). Value head h reads key head h // (H / key_heads)."""
    b, t, _ = q.shape
    heads, dk, dv = state.shape[1:]
    per = heads // key_heads
    qh, kh = (x.reshape(b, t, key_heads, dk).repeat_interleave(per, dim=2) for x in (q, k))
    vh = v.reshape(b, t, heads, dv)
    s, outs = state, []
    for i in range(t):
        s = s * torch.exp(g[:, i])[..., None, None]
        delta = (vh[:, i] - torch.einsum("bhkv,bhk->bhv", s, kh[:, i])) * beta[:, i, :, None]
        s = s + kh[:, i, :, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, qh[:, i]) * scale)
    return torch.stack(outs, dim=1).reshape(b, t, heads * dv), s.contiguous()


@gated_delta_rule.register_fake
def _(q, k, v, state, g, beta, key_heads, scale):  # type: ignore[no-untyped-def]
    return v.new_empty(v.shape), state.new_empty(state.shape)


def _schema(name: str, inputs: list[str], optional: set[str], outputs: list[str],
            attributes: dict[str, OpSchema.AttrType]) -> OpSchema:
    """An OpSchema for a com.microsoft op (onnx's registry has none; the exporter's tracer
    builds nodes from one), float tensors only."""
    param = OpSchema.FormalParameter
    option = OpSchema.FormalParameterOption
    return OpSchema(
        name, "com.microsoft", 1,
        inputs=[param(n, "T", param_option=option.Optional if n in optional else option.Single)
                for n in inputs],
        outputs=[param(n, "T") for n in outputs],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
        attributes=[OpSchema.Attribute(a, kind, "") for a, kind in attributes.items()])


_MS = Opset("com.microsoft", 1)
_ATTR = OpSchema.AttrType
_CONV = Op(_MS, "CausalConvWithState", _schema(
    "CausalConvWithState", ["input", "weight", "bias", "past_state"], {"bias", "past_state"},
    ["output", "present_state"], {"activation": _ATTR.STRING}))
_LINEAR_ATTENTION = Op(_MS, "LinearAttention", _schema(
    "LinearAttention", ["query", "key", "value", "past_state", "decay", "beta"],
    {"past_state", "decay", "beta"}, ["output", "present_state"],
    {"q_num_heads": _ATTR.INT, "kv_num_heads": _ATTR.INT, "update_rule": _ATTR.STRING,
     "scale": _ATTR.FLOAT}))


def _conv_node(x, weight, state):  # type: ignore[no-untyped-def]
    return _CONV(x, weight, None, state, activation="silu")


def _linear_attention_node(q, k, v, state, g, beta, key_heads: int, scale: float):  # type: ignore[no-untyped-def]
    heads = state.shape[1]  # the value heads: fixed, only the batch of a state is dynamic
    return _LINEAR_ATTENTION(q, k, v, state, g, beta, q_num_heads=key_heads,
                             kv_num_heads=int(heads), update_rule="gated_delta",
                             scale=float(scale))


# custom op -> the ONNX function writing its node (torch.onnx.export custom_translation_table)
TRANSLATIONS = {
    torch.ops.omnic_onnx.causal_conv_silu.default: _conv_node,
    torch.ops.omnic_onnx.gated_delta_rule.default: _linear_attention_node,
}


class OnnxGatedDeltaNet(GatedDeltaNet):
    """GatedDeltaNet with its convolution and its recurrence as the custom ops above (the same
    parameters, the same states in and out)."""

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, t, _ = x.shape
        qkv, conv_next = causal_conv_silu(self.qkv(x).transpose(1, 2), self.conv.weight,
                                          conv_state)
        q, k, v = qkv.transpose(1, 2).split([self.key_width, self.key_width, self.value_width],
                                            dim=-1)
        q, k = (l2norm(m.reshape(bsz, t, self.key_heads, self.key_dim))
                .reshape(bsz, t, self.key_width) for m in (q, k))
        beta = torch.sigmoid(self.b(x))
        g = -torch.exp(self.A_log) * F.softplus(self.a(x) + self.dt_bias)
        o, s = gated_delta_rule(q, k, v.contiguous(), state, g, beta, self.key_heads,
                                self.key_dim ** -0.5)
        o = self.norm(o.reshape(bsz, t, self.value_heads, self.value_dim),
                      self.z(x).reshape(bsz, t, self.value_heads, self.value_dim))
        return self.out_proj(o.reshape(bsz, t, self.value_width)), conv_next, s


def _shallow(module: torch.nn.Module, cls: type | None = None) -> torch.nn.Module:
    """A copy of `module` (as `cls`) sharing its parameters, buffers and submodules, whose
    submodule table can be changed without touching the original (Decoder.concat_entry's way)."""
    view = (cls or type(module)).__new__(cls or type(module))
    view.__dict__ = dict(module.__dict__)
    for slot in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        view.__dict__[slot] = type(module.__dict__[slot])(module.__dict__[slot])
    return view


def with_onnx_ops(decoder: torch.nn.Module) -> torch.nn.Module:
    """A view of `decoder` whose gated_deltanet layers are `OnnxGatedDeltaNet` (same parameters
    under the same names); the decoder itself is left as it is."""
    view = _shallow(decoder)
    layers = _shallow(decoder.layers)
    for name, block in decoder.layers.named_children():
        if block.deltanet is not None:
            block = _shallow(block)
            block._modules["deltanet"] = _shallow(block.deltanet, OnnxGatedDeltaNet)
            layers._modules[name] = block
    view._modules["layers"] = layers
    return view
