"""The onnxruntime-genai side of the ONNX folder: `genai_config.json` and the tokenizer files.

With these beside `model.onnx`, `onnxruntime_genai.Model(folder)` loads and generates. The
config follows the one onnxruntime-genai's model builder writes for a Llama-style decoder.
`past_present_share_buffer` is true when every attention layer is one GroupQueryAttention (as
in the builder's graphs): genai then allocates the KV cache once at max_length and GQA writes each
step's keys in place. An unfused graph concatenates past and new keys and needs it false.
With LFM2's short_conv layers the type is genai's `lfm2` and the decoder section lists every
layer's kind (conv_state.py); their states are never shared buffers (genai swaps present into
past each step). With sliding-window layers in window-sized caches (window_cache.py) the decoder
section gets genai's `sliding_window`: those layers' buffers hold `window_size` (+ genai's CPU
slack of 16) positions instead of max_length, and GroupQueryAttention evicts inside them.
`slide_key_value_cache` and `slide_inputs` are false: true would select genai's other windowed
cache, which slides the prompt through a fixed-shape model in chunks (QNN-style exports).
With Qwen3.5's gated_deltanet layers the type is genai's `qwen3_5_text` and the decoder's inputs
and outputs also name the conv and recurrent states (deltanet_state.py); like LFM2's, they are
never shared buffers.
With Granite 4's mamba2 layers there is no genai_config.json at all: onnxruntime-genai 0.18 has no
Mamba-2 model type (mamba2_state.py), and a config naming another type would claim a model genai
cannot run; the folder keeps the tokenizer files, and onnxruntime runs model.onnx.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/models/kv_cache.cpp
       (CreateKeyValueCache, DefaultKeyValueCache: per-layer shapes from sliding_window.layers)
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_genai_config)
  ref: https://onnxruntime.ai/docs/genai/reference/config.html
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.targets.onnx import deltanet_state
from omnic.targets.onnx.mamba2_state import GENAI_NOT_RUN, has_mamba2

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

CONFIG_NAME = "genai_config.json"


def genai_config(spec: "ResolvedSpec", model_file: str, tokenizer: Any,
                 share_buffer: bool = False,
                 window_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The genai_config.json content for the decoder of `spec` stored in `model_file`.

    Args:
        spec: the resolved spec (head counts, context length).
        model_file: the ONNX file name, relative to the folder.
        tokenizer: omnic tokenizer (bos_id, eos_ids, pad_id).
        share_buffer: every attention layer is a GroupQueryAttention node.
        window_cache: {"window", "layers"} of the layers with window-sized caches, or None.
    """
    if has_mamba2(spec):  # no type to name (write_genai_files writes no config for it)
        raise ValueError(f"no genai_config.json for mamba2 layers: {GENAI_NOT_RUN}")
    m = spec.model
    eos = list(tokenizer.eos_ids) or [0]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos[0]
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos[0]
    config = {
        "model": {
            "bos_token_id": int(bos),
            "context_length": m.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": m.dim_per_head,
                "hidden_size": m.d_model,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": m.n_heads,
                "num_hidden_layers": m.n_layers,
                "num_key_value_heads": m.kv_heads,
            },
            "eos_token_id": [int(e) for e in eos] if len(eos) > 1 else int(eos[0]),
            "pad_token_id": int(pad),
            # genai picks the decoder-only pipeline by type; "llama" is the plain one whose
            # inputs are exactly the names above (the graph carries every architectural detail).
            "type": "llama",
            "vocab_size": m.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": m.context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": bool(share_buffer),
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    if any(row.attention == "short_conv" for row in m.table):
        # LFM2: genai's lfm2 type (its cache gives conv layers a fixed-size state; "llama"
        # would look for a KV cache on every layer), told which layer is which
        from omnic.targets.onnx.conv_state import genai_layers

        extra = genai_layers(spec)
        decoder = config["model"]["decoder"]
        decoder["inputs"].update(extra.pop("inputs"))
        decoder["outputs"].update(extra.pop("outputs"))
        decoder.update(extra)
        config["model"]["type"] = "lfm2"
    if deltanet_state.has_deltanet(spec):
        # Qwen3.5: genai's qwen3_5_text type, which finds the state layers by these names
        decoder = config["model"]["decoder"]
        decoder["inputs"].update(deltanet_state.GENAI_INPUTS)
        decoder["outputs"].update(deltanet_state.GENAI_OUTPUTS)
        config["model"]["type"] = deltanet_state.GENAI_TYPE
    if window_cache:
        config["model"]["decoder"]["sliding_window"] = {
            "layers": list(window_cache["layers"]),
            "slide_inputs": False,
            "slide_key_value_cache": False,
            "window_size": int(window_cache["window"]),
        }
    return config


def write_genai_files(
    spec: "ResolvedSpec", spec_dir: Path, folder: Path, model_file: str, share_buffer: bool = False,
    window_cache: dict[str, Any] | None = None,
) -> list[Path]:
    """Write genai_config.json and the tokenizer files into `folder`; return the paths written.
    A decoder with mamba2 layers gets the tokenizer files only (genai has no type for it)."""
    from omnic.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec, spec_dir)
    if has_mamba2(spec):
        return list(tokenizer.save(Path(folder)))
    config = genai_config(spec, model_file, tokenizer, share_buffer, window_cache)
    path = Path(folder) / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [path, *tokenizer.save(Path(folder))]


def read_genai_config(folder: Path) -> dict[str, Any]:
    """The genai_config.json of an ONNX folder."""
    return json.loads((Path(folder) / CONFIG_NAME).read_text())
