"""Real, trivial targets for pipeline tests. Not stubs: each writes a file and runs it again
from that file; `torch_export` exports the decoder to a .pt2 program (torch.export.save) and
executes it with torch.export.load, like any other backend.

Registered ids (not spec keys, so tests pass them with `targets=[...]`):
    torch_export        fp32 weights
    torch_int8          matrices stored as int8 per-channel codes + scales with torch.save,
                        run by the eager decoder rebuilt from them; sets `reference_weights`
                        so the golden check uses the quantization-exact path
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from omnic.targets.base import Artifact, NotRunnable, Problem, register_target


class ExportRunner:
    def __init__(self, module, n_layers: int, kv_shape: tuple[int, ...], context: int):
        self.module, self.n_layers, self.kv_shape, self.context = (
            module, n_layers, kv_shape, context)
        self.reset()

    def reset(self) -> None:
        self.k = [torch.zeros(self.kv_shape) for _ in range(self.n_layers)]
        self.v = [torch.zeros(self.kv_shape) for _ in range(self.n_layers)]
        self.pos = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        t = ids.shape[1]
        pos = torch.arange(self.pos, self.pos + t, dtype=torch.int64)
        with torch.no_grad():
            logits, self.k, self.v = self.module(ids, pos, self.k, self.v)
        self.pos += t
        return logits[0].float().numpy()


@register_target("torch_export")
class TorchExportTarget:
    precision = "fp32"
    fail_lower = False  # tests flip this to simulate a crash in lowering
    not_runnable = False  # tests flip this to simulate a host that cannot run the artifact

    def check(self, spec) -> list[Problem]:
        if spec.model.moe is not None:
            return [Problem(self.id, "model.moe", "not supported by this test target")]
        return []

    def _weights(self, program):
        return None

    def lower(self, program, out_dir: Path) -> list[Artifact]:
        if type(self).fail_lower:
            raise RuntimeError("simulated crash while lowering")
        out_dir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(program.decoder)
        ref = self._weights(program)
        if ref is not None:
            model.load_state_dict({k: torch.from_numpy(ref[k]) if k in ref else v
                                   for k, v in model.state_dict().items()})
        k, v = model.empty_cache(1)
        ctx = model.config.context_length
        T = torch.export.Dim("T", min=1, max=ctx - 1)
        toks, pos = torch.zeros(1, 2, dtype=torch.int64), torch.arange(2)
        ep = torch.export.export(model, (toks, pos, k, v), strict=False,
                                 dynamic_shapes=({1: T}, {0: T}, [None] * len(k), [None] * len(v)))
        path = out_dir / "decoder.pt2"
        torch.export.save(ep, path)
        ops: dict[str, int] = {}
        for node in ep.graph.nodes:
            if node.op == "call_function":
                name = str(node.target)
                ops[name] = ops.get(name, 0) + 1
        c = model.config
        return [Artifact(
            component="decoder", target=self.id, path=f"{self.id}/decoder.pt2",
            signature={"inputs": {"tokens": "int64[1,T]", "input_pos": "int64[T]"},
                       "outputs": {"logits": f"float32[1,T,{c.vocab_size}]"}},
            op_histogram=ops, quantization={"weights": self.precision},
            details={"kv_shape": [1, c.n_kv_heads, c.context_length, c.head_dim],
                     "n_layers": c.n_layers},
            precision=self.precision, reference_weights=ref,
        )]

    def load(self, artifact: Artifact, build_dir: Path) -> ExportRunner:
        if type(self).not_runnable:
            raise NotRunnable("needs a host this test pretends not to be")
        ep = torch.export.load(build_dir / artifact.path)
        d = artifact.details
        return ExportRunner(ep.module(), d["n_layers"], tuple(d["kv_shape"]), d["kv_shape"][2])


@register_target("torch_int8")
class TorchInt8Target:
    """Matrices stored as int8 codes + per-channel scales (omnic.quant.reference) with
    torch.save; loaded by rebuilding the eager decoder from the dequantized weights. Sets
    `reference_weights`, so the golden check takes the quantization-exact path."""

    precision = "int8"

    def check(self, spec) -> list[Problem]:
        return []

    def lower(self, program, out_dir: Path) -> list[Artifact]:
        from dataclasses import asdict

        from omnic.quant.reference import dequantize, quantize

        out_dir.mkdir(parents=True, exist_ok=True)
        state = program.decoder.state_dict()
        stored, reference = {}, {}
        for name, t in state.items():
            if t.ndim == 2:  # every matrix; norms stay fp32
                q = quantize(t.numpy(), "int8", None, True)
                stored[name] = {"codes": torch.from_numpy(q.codes),
                                "scale": torch.from_numpy(q.scale)}
                reference[name] = dequantize(q)
            else:
                stored[name] = {"fp32": t.clone()}
        path = out_dir / "decoder-int8.pt"
        torch.save({"config": asdict(program.decoder.config), "tensors": stored}, path)
        return [Artifact(component="decoder", target=self.id, path=f"{self.id}/{path.name}",
                         quantization={"matrices": "int8 per-channel symmetric"},
                         precision=self.precision, reference_weights=reference)]

    def load(self, artifact: Artifact, build_dir: Path):
        from omnic.model import Decoder, DecoderConfig
        from omnic.runtime.torch_runner import TorchRunner

        blob = torch.load(build_dir / artifact.path, weights_only=True)
        with torch.device("meta"):
            decoder = Decoder(DecoderConfig(**blob["config"]))
        weights = {}
        for name, t in blob["tensors"].items():
            if "fp32" in t:
                weights[name] = t["fp32"]
            else:  # codes [out, groups, group] * scales [out, groups] -> [out, in]
                codes = t["codes"].float()
                weights[name] = (codes * t["scale"][..., None]).reshape(codes.shape[0], -1)
        decoder.load_state_dict(weights, assign=True)
        return TorchRunner(decoder.eval())
