"""onnxruntime and onnxruntime-genai over a compiled ONNX folder whose layers carry fixed-size
states (mamba2, gated_deltanet, short_conv) as graph inputs and outputs, and transformers' own
states to compare them with (test helpers shared by the ONNX hybrid-model tests).

The decode loop here is written against onnxruntime directly (not omnic's OnnxRunner, which the
golden check uses): past.{i}.conv / past.{i}.recurrent start at zero and each step's
present.{i}.* is fed back as the next past.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hf_checkpoints import artifact_of


def onnx_artifact(result):
    """The CompileResult's one onnx artifact."""
    return artifact_of(result, "onnx")


def onnx_folder(result) -> Path:
    """The folder of the CompileResult's onnx artifact."""
    return result.out_dir / onnx_artifact(result).path


class Session:
    """onnxruntime over model.onnx, batch 1: the growing KV cache of the attention layers and the
    fixed-size states of the other layers, present fed back as past by name."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past: dict[str, np.ndarray] = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values."):  # [1, kv_heads, 0, head_dim]
                self.past[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
            elif i.name.startswith("past."):  # every dim but the batch is fixed
                self.past[i.name] = np.zeros((1, *i.shape[1:]), np.float32)
        self.position = 0
        self.present: dict[str, np.ndarray] = {}

    def step(self, tokens) -> np.ndarray:
        ids = np.asarray(tokens, np.int64).reshape(1, -1)
        t = ids.shape[1]
        feed = {"input_ids": ids,
                "attention_mask": np.ones((1, self.position + t), np.int64),
                "position_ids": np.arange(self.position, self.position + t)[None],
                **self.past}
        out = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        self.present = out
        for n, v in self.past.items():  # the states keep their size, step after step
            if n.startswith("past."):
                assert out["present." + n[len("past."):]].shape == v.shape, n
        self.past = {n: out[n.replace("past_key_values.", "present.").replace("past.", "present.")]
                     for n in self.past}
        self.position += t
        return out["logits"][0]

    def greedy(self, prompt, steps: int) -> tuple[list[int], np.ndarray]:
        """Prefill `prompt`, then one-token steps fed the argmax of the last row: (`steps`
        tokens, logits [len(prompt) + steps - 1, vocab])."""
        rows = [self.step(prompt)]
        tokens = [int(rows[-1][-1].argmax())]
        while len(tokens) < steps:
            rows.append(self.step([tokens[-1]]))
            tokens.append(int(rows[-1][-1].argmax()))
        return tokens, np.concatenate(rows)


def transformers_states(hf, prompt, layers) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """transformers' states after `prompt` (one cached pass of the model `hf`): layer ->
    (conv, recurrent)."""
    import torch

    with torch.no_grad():
        cache = hf(torch.tensor(prompt)[None], use_cache=True).past_key_values
        return {i: (cache.get_conv_state(i).numpy(), cache.get_recurrent_state(i).numpy())
                for i in layers}


def assert_states_after_prompt(path: Path, prompt, states, atol: float) -> None:
    """present.{i}.conv after `prompt` is the last kernel - 1 columns of transformers' conv
    state (it keeps kernel of them), present.{i}.recurrent its recurrent state, in the same
    order, for every layer i of `states` (transformers_states)."""
    session = Session(path)
    session.step(prompt)
    for i, (conv, recurrent) in states.items():
        assert np.abs(session.present[f"present.{i}.conv"] - conv[..., 1:]).max() < atol
        err = np.abs(session.present[f"present.{i}.recurrent"] - recurrent).max()
        assert err < atol, (i, err, np.abs(recurrent).max())


def zeroed_state_logits(path: Path, prompt, token: int, kind: str) -> np.ndarray:
    """The logits of `token` after `prompt` with every past.{i}.`kind` state zeroed after the
    prompt (as if the graph ignored that past)."""
    session = Session(path)
    session.step(prompt)
    session.past = {n: np.zeros_like(v) if n.endswith("." + kind) else v
                    for n, v in session.past.items()}
    return session.step([token])[0]


def genai_decode(folder: Path, prompt, steps: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """onnxruntime-genai's greedy tokens after `prompt` (up to `steps`, or EOS), its prefill
    logits [T, vocab] and the logits of each decode step (the step that chose tokens 2..)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt).astype(np.int32)[None])
    prefill = np.array(generator.get_output("logits"))[0]
    tokens, decode = [], []
    while not generator.is_done() and len(tokens) < steps:
        if tokens:  # the logits the previous token produced (a one-token decode step)
            decode.append(np.array(generator.get_logits())[0, -1])
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, prefill, np.array(decode)


def graph_io(model) -> tuple[dict[str, list], dict[str, list]]:
    """(input name -> dims, output name -> dims) of the onnx ModelProto `model`: a dim's name
    where it has one, else its size."""

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in model.graph.input},
            {v.name: dims(v) for v in model.graph.output})
