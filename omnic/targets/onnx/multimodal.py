"""The ONNX decoder of a multimodal build: token embeddings and a decoder on inputs_embeds.

For a spec with `modalities` (vision, audio, sensors or an action head), the ONNX folder holds,
beside model.onnx (the token decoder, unchanged) and the encoders (components.py):
  embedding.onnx  input_ids int64 [batch, seq] -> inputs_embeds float32 [batch, seq, d_model]
                  the decoder's embedding stored exactly as in model.onnx (Gather of fp32/fp16,
                  or com.microsoft GatherBlockQuantized for int4/int8), Gemma's scale included
  text.onnx       the decoder with inputs_embeds [batch, seq, d_model] in place of input_ids,
                  every other input and output as model.onnx; with an action head also
                  last_hidden_state [batch, seq, d_model] (after the final norm)
This is the split onnxruntime-genai's vision-language packages use (vision, embedding, text
models in one folder); a runtime embeds the prompt, overwrites the placeholder rows with the
encoders' outputs (omnic.runtime.multimodal) and runs text.onnx.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/examples/python/phi-3-vision.md
Both files go through the decoder's own stages (export.export_decoder with inputs_embeds,
then OnnxTarget.transform: weight storage, clean-up, fusions, narrowing, finalize), so their
weights are stored as model.onnx stores them. genai_config.json keeps describing model.onnx:
genai's multimodal pipelines are tied to its own model types and their image processors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from omnic.targets.onnx.window_cache import empty_cache

if TYPE_CHECKING:
    import onnx_ir as ir

    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec

_log = logging.getLogger(__name__)

EMBEDDING_FILE = "embedding.onnx"
TEXT_FILE = "text.onnx"
HIDDEN = "last_hidden_state"


def wanted(spec: "ResolvedSpec") -> bool:
    """Whether the spec has parts beyond the text decoder (then the two files are written)."""
    m = spec.modalities
    return any(x is not None for x in (m.vision, m.audio, m.sensors, m.action_head))


def details(spec: "ResolvedSpec") -> dict[str, Any]:
    """What the decoder artifact's details record about the multimodal files."""
    return {"embedding_file": EMBEDDING_FILE, "text_file": TEXT_FILE,
            "last_hidden_state": spec.modalities.action_head is not None}


def _export_embedding(decoder: Any, opset: int) -> "ir.Model":
    """`decoder.embed_tokens` as an ONNX model, its table named `embed.weight` (canonical)."""
    import torch

    from omnic.targets.onnx.export import BATCH, SEQ

    class EmbedTokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = decoder.embed  # the one registered parameter: embed.weight

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return decoder.embed_tokens(input_ids)

    ids = torch.zeros((2, 3), dtype=torch.int64)  # sizes > 1: torch.export specialises 0 and 1
    chatter = io.StringIO()
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")
        torch_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                EmbedTokens(), (ids,), dynamo=True, opset_version=opset,
                dynamic_shapes={"input_ids": {0: BATCH, 1: SEQ}}, input_names=["input_ids"],
                output_names=["inputs_embeds"], optimize=False, verbose=False)
        except Exception as err:
            raise RuntimeError(f"torch.onnx export of the embedding failed: {err}\n"
                               f"{chatter.getvalue()}") from err
        finally:
            torch_log.setLevel(level)
    return program.model


def _fix_embedding_shapes(model: "ir.Model", d_model: int) -> None:
    import onnx_ir as ir

    from omnic.targets.onnx.export import BATCH, SEQ

    model.graph.inputs[0].shape = ir.Shape([BATCH, SEQ])
    model.graph.outputs[0].shape = ir.Shape([BATCH, SEQ, d_model])


def write_files(program: "Program", folder: Path, transform: Callable[["ir.Model"], Any],
                external_data_threshold: int) -> list[Path]:
    """Export, store and save embedding.onnx and text.onnx into `folder`; return the files.

    Args:
        transform: the decoder's stages after its export, applied in place to each exported
            model (`OnnxTarget.transform`: weight storage, clean-up, fusions, narrowing,
            finalize), so both files store their weights as model.onnx does.
        external_data_threshold: as for model.onnx (`export.save`).
    """
    from omnic.targets.onnx import export as onnx_export

    spec = program.spec
    opts = spec.targets.onnx
    opset = opts.opset if opts is not None else 21
    hidden = spec.modalities.action_head is not None
    files: list[Path] = []
    _log.info(f"onnx: {EMBEDDING_FILE} (input_ids → inputs_embeds)")
    emb = _export_embedding(program.decoder, opset)
    transform(emb)
    _fix_embedding_shapes(emb, spec.model.d_model)
    emb.graph.name = "omnic_embedding"
    files += onnx_export.save(emb, Path(folder) / EMBEDDING_FILE, external_data_threshold)
    del emb
    _log.info(f"onnx: {TEXT_FILE} (the decoder on inputs_embeds"
               f"{', + last_hidden_state' if hidden else ''})")
    text = onnx_export.export_decoder(program.decoder, opset, inputs_embeds=True, hidden=hidden)
    transform(text)
    text.graph.name = "omnic_text"
    files += onnx_export.save(text, Path(folder) / TEXT_FILE, external_data_threshold)
    return files


class OnnxEmbedsRunner:
    """`omnic.runtime.multimodal.EmbedsRunner` over embedding.onnx and text.onnx (onnxruntime,
    batch 1, the growing KV cache of model.onnx's layout)."""

    def __init__(self, folder: Path, info: dict[str, Any], context_length: int | None = None,
                 intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        paths = [folder / info.get("embedding_file", EMBEDDING_FILE),
                 folder / info.get("text_file", TEXT_FILE)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"onnx: {p} does not exist")
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        cpu = ["CPUExecutionProvider"]
        self.embedding = ort.InferenceSession(str(paths[0]), opts, providers=cpu)
        self.text = ort.InferenceSession(str(paths[1]), opts, providers=cpu)
        self.context_length = context_length
        self.outputs = [o.name for o in self.text.get_outputs()]
        self._empty = empty_cache(self.text)  # window-sized for windowed layers
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.last_hidden: np.ndarray | None = None
        self.past = dict(self._empty)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        (out,) = self.embedding.run(["inputs_embeds"], {"input_ids": ids})
        return np.asarray(out[0], dtype=np.float32)

    def forward_embeds(self, embeds: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(embeds, dtype=np.float32)[None]
        t = x.shape[1]
        if self.context_length is not None and self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens exceeds context_length "
                             f"{self.context_length}")
        feed = {
            "inputs_embeds": x,
            "attention_mask": np.ones((1, self.position + t), dtype=np.int64),
            "position_ids": np.arange(self.position, self.position + t, dtype=np.int64)[None],
            **self.past,
        }
        result = dict(zip(self.outputs, self.text.run(self.outputs, feed)))
        self.past = {n: result[n.replace("past_key_values.", "present.")] for n in self.past}
        self.position += t
        hidden = result.get(HIDDEN)
        self.last_hidden = None if hidden is None else np.asarray(hidden[0], dtype=np.float32)
        return np.asarray(result["logits"][0], dtype=np.float32)


def load_embeds_runner(build_dir: Path, artifact: Any,
                       intra_op_threads: int | None = None) -> OnnxEmbedsRunner:
    """The multimodal decoder of an ONNX decoder artifact (its details name the files);
    `OnnxTarget.load_embeds`.

    Raises:
        NotRunnable: the ONNX toolchain is missing.
        FileNotFoundError: the build has no multimodal decoder (a text-only spec).
    """
    from omnic.targets.onnx.backend import require_backend

    require_backend()
    info = artifact.details.get("multimodal")
    folder = Path(build_dir) / artifact.path
    if not info:
        raise FileNotFoundError(f"onnx: {folder} has no {EMBEDDING_FILE} / {TEXT_FILE}: the "
                                "spec was compiled without modalities")
    return OnnxEmbedsRunner(folder, info, artifact.details.get("context_length"),
                            intra_op_threads)
