"""Every tensor a spec's model has: canonical name, shape, role, layer (torch-free).

The builder, importers, the memory plan, quantization and every target agree on these names;
`omnic.model` asserts that the torch model's state dict has exactly this inventory.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnic.constants import Components, Roles, TensorNames as N
from omnic.spec.model import Model


_DELTANET_GATES = (".deltanet.b.weight", ".deltanet.a.weight")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    role: str
    layer: int | None = None
    component: str = Components.DECODER

    @property
    def is_matrix(self) -> bool:
        """A 2-D weight that quantization may compress (input width = shape[-1]). Not a
        gated_deltanet layer's beta and decay projections: one row per value head (about 0.1 %
        of the weights), whose errors the recurrence compounds over every token; they stay
        float as onnxruntime-genai's builder keeps them."""
        return (len(self.shape) == 2 and self.role != Roles.NORM
                and not self.name.endswith(_DELTANET_GATES))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _norm(name: str, width: int, model: Model, layer: int | None) -> list[TensorInfo]:
    out = [TensorInfo(name, (width,), Roles.NORM, layer)]
    if model.norm.kind == "layernorm":
        out.append(TensorInfo(name.replace(".weight", ".bias"), (width,), Roles.NORM, layer))
    return out


def _ffn(prefix: str, d: int, hidden: int, gated: bool, layer: int) -> list[TensorInfo]:
    out = []
    if gated:
        out.append(TensorInfo(f"{prefix}.gate.weight", (hidden, d), Roles.FFN, layer))
    out.append(TensorInfo(f"{prefix}.up.weight", (hidden, d), Roles.FFN, layer))
    out.append(TensorInfo(f"{prefix}.down.weight", (d, hidden), Roles.FFN, layer))
    return out


def _attention(model: Model, i: int, d: int, hd: int) -> list[TensorInfo]:
    f = lambda tmpl: tmpl.format(i=i)  # noqa: E731
    q_out, kv_out = model.n_heads * hd, model.kv_heads * hd
    out = [TensorInfo(f(N.Q), (q_out, d), Roles.ATTENTION, i),
           TensorInfo(f(N.K), (kv_out, d), Roles.ATTENTION, i),
           TensorInfo(f(N.V), (kv_out, d), Roles.ATTENTION, i)]
    if model.qkv_bias:
        out.append(TensorInfo(f(N.Q_BIAS), (q_out,), Roles.ATTENTION, i))
        out.append(TensorInfo(f(N.K_BIAS), (kv_out,), Roles.ATTENTION, i))
        out.append(TensorInfo(f(N.V_BIAS), (kv_out,), Roles.ATTENTION, i))
    if model.attn_output_gate:
        out.append(TensorInfo(f(N.ATTN_GATE), (q_out, d), Roles.ATTENTION, i))
    if model.qk_norm:
        full = model.qk_norm_width == "full"  # OLMo 2: over every head at once
        out.append(TensorInfo(f(N.Q_NORM), (q_out if full else hd,), Roles.NORM, i))
        out.append(TensorInfo(f(N.K_NORM), (kv_out if full else hd,), Roles.NORM, i))
    out.append(TensorInfo(f(N.O), (d, q_out), Roles.ATTENTION, i))
    return out


def _short_conv(i: int, d: int, kernel: int) -> list[TensorInfo]:
    return [TensorInfo(N.CONV_IN.format(i=i), (3 * d, d), Roles.CONV, i),
            TensorInfo(N.CONV_KERNEL.format(i=i), (d, 1, kernel), Roles.CONV, i),
            TensorInfo(N.CONV_OUT.format(i=i), (d, d), Roles.CONV, i)]


def _mamba2(i: int, d: int, m) -> list[TensorInfo]:
    f = lambda tmpl: tmpl.format(i=i)  # noqa: E731
    width = 2 * m.inner + 2 * m.groups * m.d_state + m.heads
    out = [TensorInfo(f(N.SSM_IN), (width, d), Roles.SSM, i),
           TensorInfo(f(N.SSM_CONV), (m.conv_channels, 1, m.kernel), Roles.SSM, i)]
    if m.conv_bias:
        out.append(TensorInfo(f(N.SSM_CONV_BIAS), (m.conv_channels,), Roles.SSM, i))
    out += [TensorInfo(f(name), (m.heads,), Roles.SSM, i)
            for name in (N.SSM_DT_BIAS, N.SSM_A_LOG, N.SSM_D)]
    return out + [TensorInfo(f(N.SSM_NORM), (m.inner,), Roles.NORM, i),
                  TensorInfo(f(N.SSM_OUT), (d, m.inner), Roles.SSM, i)]


def _gated_deltanet(i: int, d: int, g) -> list[TensorInfo]:
    f = lambda tmpl: tmpl.format(i=i)  # noqa: E731
    return [TensorInfo(f(N.DN_QKV), (g.conv_channels, d), Roles.SSM, i),
            TensorInfo(f(N.DN_Z), (g.value_width, d), Roles.SSM, i),
            TensorInfo(f(N.DN_B), (g.value_heads, d), Roles.SSM, i),
            TensorInfo(f(N.DN_A), (g.value_heads, d), Roles.SSM, i),
            TensorInfo(f(N.DN_CONV), (g.conv_channels, 1, g.kernel), Roles.SSM, i),
            TensorInfo(f(N.DN_DT_BIAS), (g.value_heads,), Roles.SSM, i),
            TensorInfo(f(N.DN_A_LOG), (g.value_heads,), Roles.SSM, i),
            TensorInfo(f(N.DN_NORM), (g.value_dim,), Roles.NORM, i),
            TensorInfo(f(N.DN_OUT), (d, g.value_width), Roles.SSM, i)]


def decoder_tensors(model: Model) -> list[TensorInfo]:
    """The decoder's tensors in a fixed order (embedding, layers, final norm, lm_head)."""
    d, hd = model.d_model, model.dim_per_head
    kinds = [row.attention for row in model.table]
    gated = model.ffn.kind in ("swiglu", "geglu")
    out = [TensorInfo(N.EMBED, (model.vocab_size, d), Roles.EMBEDDING)]
    for i in range(model.n_layers):
        f = lambda tmpl: tmpl.format(i=i)  # noqa: E731
        if model.pre_norms:
            out += _norm(f(N.ATTN_NORM), d, model, i)
        if kinds[i] == "short_conv":
            out += _short_conv(i, d, model.short_conv.kernel)
        elif kinds[i] == "mamba2":
            out += _mamba2(i, d, model.mamba2)
        elif kinds[i] == "gated_deltanet":
            out += _gated_deltanet(i, d, model.gated_deltanet)
        else:
            out += _attention(model, i, d, hd)
        if model.post_norms:
            out += _norm(f(N.POST_ATTN_NORM), d, model, i)
        if model.pre_norms:
            out += _norm(f(N.FFN_NORM), d, model, i)
        if model.moe is None:
            out += _ffn(f"layers.{i}.ffn", d, model.ffn.hidden, gated, i)
        else:
            moe = model.moe
            out.append(TensorInfo(f(N.ROUTER), (moe.experts, d), Roles.ROUTER, i))
            for e in range(moe.experts):
                out += _ffn(f"layers.{i}.ffn.experts.{e}", d, model.ffn.hidden, gated, i)
            if moe.shared_experts:
                hidden = (moe.shared_hidden or model.ffn.hidden) * moe.shared_experts
                out += _ffn(f"layers.{i}.ffn.shared", d, hidden, gated, i)
        if model.post_norms:
            out += _norm(f(N.POST_FFN_NORM), d, model, i)
    out += _norm(N.FINAL_NORM, d, model, None)
    if not model.tie_embeddings:
        out.append(TensorInfo(N.LM_HEAD, (model.vocab_size, d), Roles.LM_HEAD))
    return out


def parameter_count(model: Model) -> int:
    """Exact parameter count (tied embeddings counted once, as published model cards do)."""
    return sum(t.numel for t in decoder_tensors(model))
