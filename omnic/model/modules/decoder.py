"""The decoder: embedding, blocks, final norm, head; two export-ready entry points.

`forward` keeps a static KV cache per layer, updated out of place with `index_copy`: a full
layer's holds `context_length` positions, written at `input_pos`; a sliding layer whose window is
shorter than the context keeps a ring of `window` positions (position p in slot p % window), as
ExecuTorch's ring-buffer cache and llama.cpp's SWA cache do. `forward_concat` takes and returns
the growing cache of the Hugging Face / onnxruntime-genai layout. Both read the same weights and
share every block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnic.model.config import DecoderConfig
from omnic.model.modules.attention import Attention
from omnic.model.modules.deltanet import GatedDeltaNet
from omnic.model.modules.ffn import MoE, FeedForward
from omnic.model.modules.norm import make_norm
from omnic.model.modules.rope import Rope
from omnic.model.modules.mamba2 import Mamba2
from omnic.model.modules.short_conv import ShortConv


class Block(nn.Module):
    """Pre-norm transformer block, with Gemma 2's optional post-attention/post-FFN norms (or
    OLMo 2's post-norms alone) and Granite's residual multiplier."""

    def __init__(self, c: DecoderConfig, layer: int, device=None) -> None:
        super().__init__()
        norm = lambda: make_norm(c.norm_kind, c.d_model, c.norm_eps, c.norm_unit_offset, device)  # noqa: E731
        self.window = c.window_of(layer)
        self.context = c.context_length
        self.residual_multiplier = c.residual_multiplier
        self.attn_norm = norm() if c.pre_norms else None
        # the token mixer: attention with a KV cache, or a layer with a fixed-size state: LFM2's
        # short convolution, a Mamba-2 layer or Qwen3.5's Gated DeltaNet
        self.attn = self.conv = self.ssm = self.deltanet = None
        if c.mixer_of(layer) == "short_conv":
            self.conv = ShortConv(c.d_model, c.conv_kernel, device)
        elif c.mixer_of(layer) == "mamba2":
            heads, head_dim, d_state, groups, kernel, conv_bias = c.mamba2
            self.ssm = Mamba2(c.d_model, heads, head_dim, d_state, groups, kernel, conv_bias,
                              c.norm_eps, device)
        elif c.mixer_of(layer) == "gated_deltanet":
            key_heads, value_heads, key_dim, value_dim, kernel = c.deltanet
            self.deltanet = GatedDeltaNet(c.d_model, key_heads, value_heads, key_dim, value_dim,
                                          kernel, c.norm_eps, c.context_length, device)
        else:
            self.attn = Attention(
                c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                qk_norm=c.qk_norm, norm_eps=c.norm_eps, unit_offset=c.norm_unit_offset,
                scale=c.scale, softcap=c.attn_softcap, qk_norm_full=c.qk_norm_full,
                output_gate=c.attn_output_gate, device=device)
        self.post_attn_norm = norm() if c.post_norms else None
        self.ffn_norm = norm() if c.pre_norms else None
        if c.moe_experts:
            shared = (c.moe_shared_hidden or c.ffn_hidden) * c.moe_shared_experts
            self.ffn = MoE(
                c.d_model, c.ffn_hidden, c.ffn_kind, c.moe_experts, c.moe_top_k,
                c.moe_normalize_top_k, shared or None, device,
            )
        else:
            self.ffn = FeedForward(c.d_model, c.ffn_hidden, c.ffn_kind, device)
        self.post_ffn_norm = norm() if c.post_norms else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
        k_prev: torch.Tensor, v_prev: torch.Tensor, input_pos: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block. With `input_pos` the cache is static (written at input_pos), else it grows.
        A short_conv block takes its state as `k_prev` and returns the next one in its place
        (`v_prev`, an empty placeholder, passes through); a mamba2 or gated_deltanet block takes
        its convolution state as `k_prev` and its recurrent state as `v_prev`."""
        if self.attn is None:
            if input_pos is not None:  # a run from position 0 starts from an empty state, as
                # a static KV cache starts over (a device runner may keep the buffers)
                k_prev = k_prev * (input_pos[:1] > 0).to(k_prev.dtype)
                v_prev = v_prev * (input_pos[:1] > 0).to(v_prev.dtype)
            mixer = self.ssm if self.ssm is not None else self.deltanet
            if mixer is not None:
                h, k_next, v_next = mixer(_maybe(self.attn_norm, x), k_prev, v_prev)
                return self._finish(x, h), k_next, v_next
            h, state = self.conv(_maybe(self.attn_norm, x), k_prev)
            return self._finish(x, h), state, v_prev
        h_in = _maybe(self.attn_norm, x)
        q, k, v = self.attn.project(h_in, cos, sin)
        if input_pos is not None and _is_ring(self.window, k_prev.shape[2], self.context):
            # attend over the ring (earlier positions) and the new keys, then keep in each slot
            # its latest position: gathered from [ring | new], so that no slice depends on the
            # token count (torch.export keeps the prefill length dynamic down to 1)
            k, v = k.to(k_prev.dtype), v.to(v_prev.dtype)  # rounded as the cache keeps them
            k_cat, v_cat = torch.cat((k_prev, k), dim=2), torch.cat((v_prev, v), dim=2)
            h = self.attn.attend(q, k_cat.to(q.dtype), v_cat.to(q.dtype), mask, h_in)
            keep = _ring_sources(input_pos, k_prev.shape[2])
            return self._finish(x, h), k_cat.index_select(2, keep), v_cat.index_select(2, keep)
        if input_pos is not None:
            k_all = k_prev.index_copy(2, input_pos, k.to(k_prev.dtype))
            v_all = v_prev.index_copy(2, input_pos, v.to(v_prev.dtype))
        else:
            k_all = torch.cat((k_prev, k.to(k_prev.dtype)), dim=2)
            v_all = torch.cat((v_prev, v.to(v_prev.dtype)), dim=2)
        h = self.attn.attend(q, k_all.to(q.dtype), v_all.to(q.dtype), mask, h_in)
        return self._finish(x, h), k_all, v_all

    def _finish(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The rest of the block after attention's output `h`."""
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + self._residual(h)
        h = self.ffn(_maybe(self.ffn_norm, x))
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm(h)
        return x + self._residual(h)

    def _residual(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier


def _maybe(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _rope_key(rope: tuple | None) -> str | None:
    """A hashable key of a layer's (theta, scaling, dims), None for NoPE."""
    return None if rope is None else repr(rope)


def _is_ring(window: int | None, cache_length: int, context: int) -> bool:
    """A sliding layer (window shorter than the context) whose static cache is shorter than the
    context keeps it as a ring: `window` slots (`Decoder.cache_lengths`), or fewer for a run
    that never goes past them. A context-long cache is written at the positions themselves."""
    return window is not None and window < context and cache_length < context


def _ring_sources(input_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Per ring slot j, where its new content is in [ring (length) | new keys (T)]: the latest
    position <= the last new one that is j modulo `length`, among the new keys when it is one
    of them, else the slot itself (an earlier position, or none yet)."""
    slot = torch.arange(length, device=input_pos.device)
    first, last = input_pos[:1], input_pos[-1:]
    latest = last - torch.remainder(last - slot, length)
    return torch.where(latest >= first, length + latest - first, slot)


def _static_masks(windows, lengths: dict, input_pos: torch.Tensor, context: int) -> dict:
    """window -> bool [T, S] mask of the static entries. A full cache's slot j holds position j;
    a ring's keys are its slots (slot j: the latest position < input_pos[0] that is j modulo the
    ring's length; none yet when negative) followed by the T new keys."""
    masks = {}
    for w in windows:
        length = lengths[w]
        slot = torch.arange(length, device=input_pos.device)
        if not _is_ring(w, length, context):
            masks[w] = _allowed(input_pos, slot, w)
            continue
        last = input_pos[:1] - 1
        held = last - torch.remainder(last - slot, length)
        k_pos = torch.cat((held, input_pos))
        ok = torch.cat((held >= 0, torch.ones_like(input_pos, dtype=torch.bool)))
        masks[w] = _allowed(input_pos, k_pos, w) & ok
    return masks


def _allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool [..., T, S]: key position k_pos visible from query position q_pos (causal, window)."""
    diff = q_pos[..., :, None] - k_pos[..., None, :]
    ok = diff >= 0
    if window is not None:
        ok = ok & (diff < window)  # the window counts the query itself: size tokens in all
    return ok


class Decoder(nn.Module):
    """A decoder-only transformer. State dict keys are omnic's canonical tensor names."""

    def __init__(self, config: DecoderConfig, device: torch.device | str | None = None) -> None:
        """Args: config: the decoder's numbers; device: where parameters are allocated ("meta"
        to allocate nothing; the rope tables and the embedding scale are always built on CPU)."""
        super().__init__()
        c = self.config = config
        # _weight skips reset_parameters(): normal_() on meta tensors lazily imports torch._dynamo
        self.embed = nn.Embedding(
            c.vocab_size, c.d_model, _weight=torch.empty(c.vocab_size, c.d_model, device=device)
        )
        self.layers = nn.ModuleList(Block(c, i, device) for i in range(c.n_layers))
        self.norm = make_norm(c.norm_kind, c.d_model, c.norm_eps, c.norm_unit_offset, device)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False,
                                                               device=device)
        # One cos/sin table per distinct (theta, scaling, dims) of the per-layer table, in layer
        # order: `rope` is the first (the only one of a uniform model), `extra_ropes` the rest.
        ropes = {}
        for i in range(c.n_layers):
            r = c.rope_of(i)
            if r is not None and _rope_key(r) not in ropes:
                ropes[_rope_key(r)] = Rope(r[2], r[0], r[1], c.context_length)
        self._rope_keys = [_rope_key(c.rope_of(i)) for i in range(c.n_layers)]
        tables = list(ropes.values())
        self.rope = tables[0] if tables else None
        self.extra_ropes = nn.ModuleList(tables[1:])
        self._ropes = dict(zip(ropes, tables))
        # Gemma multiplies embeddings by sqrt(d_model) cast to the activation dtype: a buffer that
        # follows `.to(dtype)` reproduces that rounding.
        # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/gemma2/modeling_gemma2.py
        self.register_buffer(
            "embed_scale", torch.tensor(c.d_model**0.5, dtype=torch.float32, device="cpu"),
            persistent=False
        )
        # distinct windows of the attention layers, in order (one mask each)
        self._windows = list(dict.fromkeys(b.window for b in self.layers if b.attn is not None))

    # -- shared pieces -------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.config.scale_embeddings:
            x = x * self.embed_scale.to(x.dtype)
        if self.config.embedding_multiplier != 1.0:
            x = x * self.config.embedding_multiplier
        return x

    def _tables(self, positions: torch.Tensor, heads_axis: bool) -> dict:
        """rope key -> (cos, sin) at `positions`; with `heads_axis` a heads axis is inserted after
        the batch ([B, 1, T, d], the concat entries' layout)."""
        out: dict = {None: (None, None)}
        for key, rope in self._ropes.items():
            cos, sin = rope.tables(positions)
            out[key] = (cos[:, None], sin[:, None]) if heads_axis else (cos, sin)
        return out

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.norm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed hidden states."""
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        if self.config.logits_scaling != 1.0:
            logits = logits / self.config.logits_scaling
        cap = self.config.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    def _run(self, x, tables, masks, past_k, past_v, input_pos, return_hidden=False):
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            cos, sin = tables[self._rope_keys[i]]
            mask = masks[layer.window] if layer.attn is not None else None
            x, k, v = layer(x, cos, sin, mask, past_k[i], past_v[i], input_pos)
            new_k.append(k)
            new_v.append(v)
        if return_hidden:  # the embeds entries may also return the normed last hidden state
            h = self.norm(x)
            return self._logits(h), new_k, new_v, h.float()
        return self._head(x), new_k, new_v

    # -- entry points --------------------------------------------------------------------------
    def forward(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, k_cache: list[torch.Tensor],
        v_cache: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Static-cache step (prefill or decode).

        Args:
            tokens: int64 [B, T].
            input_pos: int64 [T], the positions of `tokens` (also where the cache is written).
            k_cache, v_cache: per layer [B, n_kv_heads, context_length, head_dim].

        Returns:
            float32 logits [B, T, vocab], and the updated caches (new tensors; inputs untouched).
        """
        x = self._embed(tokens)
        tables = self._tables(input_pos, False)  # [T, d], broadcasts over B and heads
        masks = _static_masks(self._windows, self._lengths(k_cache), input_pos,
                              self.config.context_length)
        return self._run(x, tables, masks, k_cache, v_cache, input_pos)

    def forward_concat(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past_k: list[torch.Tensor], past_v: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Growing-cache step in the Hugging Face / onnxruntime-genai layout.

        Args:
            input_ids: int64 [B, T].
            attention_mask: int64 [B, P + T], 1 for real tokens (past and new), 0 for padding.
            position_ids: int64 [B, T].
            past_k, past_v: per layer [B, n_kv_heads, P, head_dim] (P may be 0).

        Returns:
            float32 logits [B, T, vocab] and the present caches [B, n_kv_heads, P + T, head_dim].
        """
        x = self._embed(input_ids)
        tables = self._tables(position_ids, True)  # [B, 1, T, d]
        t, s = input_ids.shape[1], attention_mask.shape[1]
        k_idx = torch.arange(s, device=input_ids.device)
        q_idx = k_idx[s - t :]  # the new tokens are the last T slots of the concatenated cache
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        masks = {w: _allowed(q_idx, k_idx, w)[None, None] & keep for w in self._windows}
        return self._run(x, tables, masks, past_k, past_v, None)

    # -- embedding entries (multimodal) --------------------------------------------------------
    # Encoders yield rows of decoder input embeddings; these entries take such rows in place of
    # token ids. `embed_tokens` is the token half of the same input (scaled for Gemma like the
    # token entries), so embed_tokens(ids) through an embeds entry equals the token entry.
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: int64 [B, T] -> float [B, T, d_model]."""
        return self._embed(tokens)

    def forward_embeds(
        self, inputs_embeds: torch.Tensor, input_pos: torch.Tensor, k_cache: list[torch.Tensor],
        v_cache: list[torch.Tensor], return_hidden: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """`forward` on input embeddings [B, T, d_model] instead of token ids.

        Returns:
            logits [B, T, vocab], the updated caches, and with `return_hidden` also the last
            hidden state [B, T, d_model] (after the final norm: what the head reads).
        """
        tables = self._tables(input_pos, False)
        masks = _static_masks(self._windows, self._lengths(k_cache), input_pos,
                              self.config.context_length)
        return self._run(inputs_embeds, tables, masks, k_cache, v_cache, input_pos,
                         return_hidden)

    def forward_concat_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
        position_ids: torch.Tensor, past_k: list[torch.Tensor], past_v: list[torch.Tensor],
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """`forward_concat` on input embeddings [B, T, d_model] instead of token ids.

        Returns:
            logits, the present caches, and with `return_hidden` the last hidden state (after
            the final norm) [B, T, d_model].
        """
        tables = self._tables(position_ids, True)
        t, s = inputs_embeds.shape[1], attention_mask.shape[1]
        k_idx = torch.arange(s, device=inputs_embeds.device)
        q_idx = k_idx[s - t :]
        keep = attention_mask.bool()[:, None, None, :]
        masks = {w: _allowed(q_idx, k_idx, w)[None, None] & keep for w in self._windows}
        return self._run(inputs_embeds, tables, masks, past_k, past_v, None,
                         return_hidden)

    def concat_embeds_entry(self, return_hidden: bool = False) -> nn.Module:
        """This decoder with `forward_concat_embeds` as its `forward`, for `torch.export`."""
        view = self.concat_entry()
        view.__class__ = _ConcatEmbedsView
        view._return_hidden = bool(return_hidden)
        return view

    # -- helpers -------------------------------------------------------------------------------
    def cache_lengths(self, length: int | None = None) -> list[int]:
        """Positions each layer's static cache holds: `length` (default context_length; a
        shorter cache serves runs that never go past it), or a sliding layer's window when that
        is shorter (its ring); 0 for a layer that holds a state instead (short_conv, mamba2,
        gated_deltanet)."""
        n = self.config.context_length if length is None else length
        return [0 if b.attn is None else n if b.window is None or b.window >= n else b.window
                for b in self.layers]

    def empty_cache(self, batch: int = 1, dtype: torch.dtype = torch.float32,
                    length: int | None = None) -> tuple[list, list]:
        """Zero static caches: per layer [batch, n_kv_heads, L, head_dim] with L from
        `cache_lengths(length)`; a short_conv layer's zero state [batch, d_model, kernel - 1]
        and an empty [batch, d_model, 0] in v's place; a mamba2 layer's zero convolution state
        [batch, channels, kernel - 1] and recurrent state [batch, heads, head_dim, d_state]; a
        gated_deltanet layer's [batch, channels, kernel - 1] and
        [batch, value_heads, key_dim, value_dim]."""
        c = self.config
        k, v = [], []
        for block, n in zip(self.layers, self.cache_lengths(length)):
            if block.conv is not None:  # the state, and an empty placeholder for v
                k.append(block.conv.empty_state(batch, dtype))
                v.append(torch.zeros(batch, c.d_model, 0, dtype=dtype))
                continue
            mixer = block.ssm if block.ssm is not None else block.deltanet
            if mixer is not None:  # the convolution state and the recurrent state
                conv, ssm = mixer.empty_state(batch, dtype)
                k.append(conv)
                v.append(ssm)
                continue
            k.append(torch.zeros(batch, c.n_kv_heads, n, c.head_dim, dtype=dtype))
            v.append(torch.zeros(batch, c.n_kv_heads, n, c.head_dim, dtype=dtype))
        return k, v

    def _lengths(self, k_cache: list[torch.Tensor]) -> dict:
        """window -> the cache length of the layers with that window (static entries)."""
        return {b.window: k_cache[i].shape[2] for i, b in enumerate(self.layers)
                if b.attn is not None}

    def concat_entry(self) -> nn.Module:
        """This decoder with `forward_concat` as its `forward`, for `torch.export`.

        The view shares every parameter and keeps the canonical state-dict names (no prefix).
        """
        view = _ConcatView.__new__(_ConcatView)
        view.__dict__ = dict(self.__dict__)
        for slot in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            view.__dict__[slot] = type(self.__dict__[slot])(self.__dict__[slot])
        return view


class _ConcatView(Decoder):
    def forward(self, input_ids, attention_mask, position_ids, past_k, past_v):  # type: ignore[override]
        return self.forward_concat(input_ids, attention_mask, position_ids, past_k, past_v)


class _ConcatEmbedsView(Decoder):
    def forward(self, inputs_embeds, attention_mask, position_ids, past_k, past_v):  # type: ignore[override]
        return self.forward_concat_embeds(inputs_embeds, attention_mask, position_ids, past_k,
                                          past_v, self._return_hidden)
