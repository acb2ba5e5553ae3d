"""The ONNX target: onnxruntime / onnxruntime-genai folder for the text decoder.

`lower(program, out_dir)` writes the folder `out_dir` (the pipeline passes BUILD/onnx):
  model.onnx (+ model.onnx.data past 128 MiB) the decoder, torch.onnx dynamo export, genai I/O
  genai_config.json, tokenizer.json, ...      so `onnxruntime_genai.Model(folder)` generates
                                              (no genai_config.json with mamba2 layers: genai
                                              has no Mamba-2 type; details["genai"] says so)
  embedding.onnx, text.onnx                   multimodal specs only (multimodal.py): token
                                              embeddings, and the decoder on inputs_embeds
The artifact is that folder (what a user deploys), its path `out_dir.name` relative to the build.

Stages, in order (each a function in a small module):
  export (export.py; conv_state.py for LFM2's short_conv layers, mamba2_state.py for Granite
  4's mamba2 layers, deltanet_state.py for Qwen3.5's gated_deltanet layers) -> store weights
  (quant.py: must see the exporter's canonical names, so before any optimizer) -> clean-up and
  fusions (fusions.py) -> narrow fp16/bf16 weights (quant.py: after the optimizers, which would
  fold the Casts) -> finalize (deterministic names and metadata) -> save -> genai files
  (genai.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omnic.digest import file_sha256
from omnic.constants import Components, Targets
from omnic.targets.base import Artifact, Problem, register_target
from omnic.targets.onnx.backend import missing, require_backend
from omnic.targets.onnx.rounding import activation_rounding
from omnic.spec.layers import STATE_KINDS
from omnic.targets.onnx.conv_state import conv_layers, empty_states, present_name
from omnic.targets.onnx import deltanet_state, mamba2_state
from omnic.targets.onnx.window_cache import empty_cache, window_cache

if TYPE_CHECKING:
    import onnx_ir as ir

    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec
    from omnic.targets.onnx.multimodal import OnnxEmbedsRunner
    from omnic.targets.onnx.passes import Graph

_log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


def precision_of(spec: "ResolvedSpec") -> str:
    """Tolerance-table row of the spec's default weight scheme: fp32, fp16, int8, int4_g32..."""
    w = spec.quantization.weights
    if w.scheme in ("int4", "int8"):
        name = w.scheme if w.group_size is None else f"{w.scheme}_g{w.group_size}"
        return name if w.symmetric else f"{name}_asym"
    return w.scheme


@register_target(Targets.ONNX)
class OnnxTarget:
    """ONNX for onnxruntime and onnxruntime-genai (decoder only)."""

    id = Targets.ONNX

    def int4_grid(self, spec: "ResolvedSpec") -> str | None:
        """The `omnic.quant.grids` backend whose int4 codes this target stores: calibrated
        methods (GPTQ) round on it. None: the target quantizes from floats its own way."""
        return "omnic"  # MatMulNBits holds omnic's codes and fp32 scales

    def __init__(self, external_data_threshold: int | None = None,
                 accuracy_level: int | None = None) -> None:
        from omnic.targets.onnx.export import EXTERNAL_DATA_THRESHOLD
        from omnic.targets.onnx.quant import INT8_COMPUTE

        self.external_data_threshold = external_data_threshold or EXTERNAL_DATA_THRESHOLD
        # MatMulNBits compute precision (quant.INT8_COMPUTE: why 4); 0 = exact float32
        self.accuracy_level = INT8_COMPUTE if accuracy_level is None else accuracy_level

    # -- pre-flight --------------------------------------------------------------------------
    def check(self, spec: "ResolvedSpec") -> list[Problem]:
        """Problems that would stop this target, found from the spec alone (torch-free): a
        missing toolchain, and the capability rules."""
        from omnic.targets.rules import problems

        reason = missing()
        out = [Problem(self.id, "targets.onnx", reason)] if reason else []
        return out + problems(spec, Targets.ONNX)

    # -- lowering ----------------------------------------------------------------------------
    def lower(self, program: "Program", out_dir: Path) -> list[Artifact]:
        """Export, store weights, fuse, save the ONNX folder; return the decoder's artifact."""
        from omnic.targets.onnx import export as onnx_export

        spec = program.spec
        opts = spec.targets.onnx
        opset = opts.opset if opts is not None else 21
        _log.info(f"onnx: exporting the decoder with torch.onnx (dynamo), opset {opset}")
        start = time.perf_counter()
        if mamba2_state.mamba2_layers(program.decoder):  # Granite 4: both states as I/O
            model = mamba2_state.export_decoder(program.decoder, opset)
        elif deltanet_state.deltanet_layers(program.decoder):  # Qwen3.5: genai's qwen3_5_text
            model = deltanet_state.export_decoder(program.decoder, opset,
                                                  ops=opts is None or opts.fusions)
        elif conv_layers(program.decoder):  # LFM2: genai's lfm2 layout, conv states as I/O
            from omnic.targets.onnx import conv_state

            model = conv_state.export_decoder(program.decoder, opset)
        else:
            model = onnx_export.export_decoder(program.decoder, opset)
        _log.info(f"onnx: exported in {time.perf_counter() - start:.1f} s")
        return [self.lower_exported(program, model, Path(out_dir))]

    def lower_component(self, program: "Program", name: str, out_dir: Path) -> Artifact:
        """`<component>.onnx` in the folder, beside the decoder (components.py)."""
        from omnic.targets.onnx.components import lower_component

        return lower_component(program.components[name], Path(out_dir), program.spec)

    def lower_exported(self, program: "Program", model: "ir.Model", out_dir: Path) -> Artifact:
        """Everything after the export, on an exported model (consumed, modified in place)."""
        from omnic.targets.onnx import export as onnx_export
        from omnic.targets.onnx import fusions as onnx_fusions
        from omnic.targets.onnx import genai as onnx_genai
        from omnic.targets.onnx import quant as onnx_quant
        from omnic.targets.onnx import multimodal as onnx_multimodal

        spec = program.spec
        opts = spec.targets.onnx
        opset = opts.opset if opts is not None else 21
        graph, pass_records = self.transform(program, model)
        quant = onnx_quant.summary(graph.records)

        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        files = onnx_export.save(model, folder / MODEL_FILE, self.external_data_threshold)
        onnx_export.release_weights(model)  # consumed: the file is read back below instead
        gqa = onnx_fusions.fused_ops(model).get("com.microsoft::GroupQueryAttention", 0)
        windowed = window_cache(model.metadata_props)  # sliding layers' window-sized caches
        attention = sum(row.attention not in STATE_KINDS for row in spec.model.table)
        files += onnx_genai.write_genai_files(spec, program.spec_dir, folder, MODEL_FILE,
                                              share_buffer=gqa == attention,
                                              window_cache=windowed)
        if onnx_multimodal.wanted(spec):  # + embedding.onnx and text.onnx (inputs_embeds)
            files += onnx_multimodal.write_files(
                program, folder, lambda m: self.transform(program, m),
                self.external_data_threshold)
        stored = _reload(folder / MODEL_FILE)  # read back what the file holds
        reference = onnx_quant.read_weights(stored, lazy=True)  # dequantized when read
        details = {
            "model_file": MODEL_FILE,
            "opset": opset,
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                      for p in sorted(files)},
            "external_data": len([p for p in files if p.name.endswith(".data")]) > 0,
            "fusions": bool(opts is None or opts.fusions),
            "fusion_counts": graph.fusion_counts,
            "fused_ops": onnx_fusions.fused_ops(stored),
            "context_length": spec.model.context_length,
        }
        if windowed:
            details["window_cache"] = windowed
        if mamba2_state.has_mamba2(spec):  # onnxruntime runs it (golden); genai cannot
            details["genai"] = {"status": "not_run", "reason": mamba2_state.GENAI_NOT_RUN}
        if onnx_multimodal.wanted(spec):
            details["multimodal"] = onnx_multimodal.details(spec)
        return Artifact(
            component=Components.DECODER,
            target=Targets.ONNX,
            path=folder.name,  # relative to the build directory, out_dir's parent
            signature=onnx_export.signature(stored),
            op_histogram=onnx_export.op_histogram(stored),
            quantization=quant,
            details=details,
            precision=precision_of(spec) if reference else "fp32",
            reference_weights=reference or None,
            activation_quant=activation_rounding(stored) or None,
            passes=pass_records,
        )

    def transform(self, program: "Program", model: "ir.Model") -> tuple["Graph", list]:
        """Store weights, clean up, fuse, narrow and finalize an exported graph (in place), by
        running the ONNX pass list (omnic.targets.onnx.passes) through the shared pass runner.

        Returns:
            (the Graph: weight storage records and how often each fusion fired; one
            omnic.passes.PassRecord per pass, in order).
        """
        import omnic
        from omnic.passes import run_passes
        from omnic.targets.onnx import quant as onnx_quant
        from omnic.targets.onnx.passes import FUSIONS, Graph, pipeline

        opts = program.spec.targets.onnx
        fusions = opts is None or opts.fusions
        graph = Graph(model=model, schemes=program.schemes(), accuracy_level=self.accuracy_level,
                      opset=opts.opset if opts is not None else 21,
                      producer_version=omnic.__version__)
        graph, records = run_passes(graph, pipeline(fusions))
        lost = sorted(n for n, r in graph.records.items()
                      if r["form"] == "unrecognised" and r["planned"] != "fp32")
        if lost:
            more = " ..." if len(lost) > 3 else ""
            _log.warning(f"onnx: {len(lost)} matrices kept float32, their use in the graph "
                         f"was not recognised: {', '.join(lost[:3])}{more}")
        if fusions:
            seconds = sum(r.seconds for r in records if r.id in FUSIONS)
            fired = ", ".join(f"{k}={v}" for k, v in graph.fusion_counts.items() if v)
            _log.info(f"onnx: fusions {fired or 'none matched'} ({seconds:.1f} s)")
        forms = ", ".join(f"{k} ({v})"
                          for k, v in onnx_quant.summary(graph.records)["forms"].items())
        _log.info(f"onnx: weights → {forms}")
        return graph, records

    # -- running -----------------------------------------------------------------------------
    def load(
        self, artifact: Artifact, build_dir: Path, intra_op_threads: int | None = None
    ) -> "OnnxRunner":
        """An onnxruntime session over the artifact's model, behind the Runner protocol."""
        require_backend()
        if artifact.component != Components.DECODER:  # a ComponentRunner (components.py)
            from omnic.targets.onnx.components import load_component

            return load_component(artifact, build_dir)
        path = Path(build_dir) / artifact.path
        model = path / artifact.details.get("model_file", MODEL_FILE) if path.is_dir() else path
        if not model.is_file():
            raise FileNotFoundError(f"onnx: {model} does not exist")
        return OnnxRunner(model, intra_op_threads=intra_op_threads,
                          context_length=artifact.details.get("context_length"))

    def load_embeds(self, artifact: Artifact, build_dir: Path,
                    intra_op_threads: int | None = None) -> "OnnxEmbedsRunner":
        """The decoder on input embeddings (embedding.onnx + text.onnx of a multimodal build).

        Raises:
            NotRunnable: the ONNX toolchain is missing.
            FileNotFoundError: the build has no such files (a spec without modalities).
        """
        from omnic.targets.onnx.multimodal import load_embeds_runner

        return load_embeds_runner(Path(build_dir), artifact, intra_op_threads)


def _reload(path: Path) -> "ir.Model":
    import onnx_ir as ir

    return ir.load(path)


class OnnxRunner:
    """Batch-1 decoding with onnxruntime over the concatenated (growing) KV cache; a layer with
    a window-sized cache (window_cache.py) keeps its fixed capacity instead, a short_conv
    layer its fixed-size state (conv_state.py), a mamba2 or gated_deltanet layer its two
    (mamba2_state.py, deltanet_state.py: the same names).

    Implements `omnic.targets.base.Runner`: int64 tokens [T] in, float32 logits [T, vocab] out;
    the position advances by T per call; `reset()` empties the cache.
    """

    def __init__(self, model_path: Path, intra_op_threads: int | None = None,
                 context_length: int | None = None) -> None:
        import onnxruntime as ort

        self.context_length = context_length
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        # window-sized for windowed layers; zero states for short_conv, mamba2 and
        # gated_deltanet layers (past.{i}.conv, past.{i}.recurrent)
        self._empty = {**empty_cache(self.session), **empty_states(self.session),
                       **mamba2_state.empty_states(self.session)}
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.past = dict(self._empty)

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        t = ids.shape[1]
        if self.context_length is not None and self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens exceeds context_length "
                             f"{self.context_length}")
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((1, self.position + t), dtype=np.int64),
            "position_ids": np.arange(self.position, self.position + t, dtype=np.int64)[None],
            **self.past,
        }
        result = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        self.past = {n: result[present_name(n)] for n in self.past}
        self.position += t
        return np.asarray(result["logits"][0], dtype=np.float32)
