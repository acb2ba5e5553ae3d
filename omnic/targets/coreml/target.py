"""Core ML target: a stateful ML Program (.mlpackage) with the KV cache as Core ML state.

    decoder ─► StatefulDecoder (fp16 KV buffers) ─► torch.export (T = 1..context_length)
            ─► ct.convert (ML Program, deployment target, compute precision)
            ─► linear_quantize_weights (per-channel int8 / per-block int4, per the quant plan)
            ─► save, normalise (deterministic) ─► read back: signature, ops, stored weights

Pieces: `convert.py` (wrapper, export, conversion), `quant.py` (compression, stored
weights), `structure.py` (what a package is; `structural_check`), `rules.py` (pre-flight).

Core ML runs only on macOS. Elsewhere `load()` raises NotRunnable("needs macOS") and the golden
stage calls `structural_check(artifact, build_dir, spec)` instead. Without coremltools, `check`
reports a Problem and `load` raises NotRunnable (backend.py).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omnic.constants import Components, Targets
from omnic.targets.base import Artifact, NotRunnable, Problem, register_target
from omnic.targets.coreml.backend import NEEDS_MACOS, is_macos, missing, require_coremltools
from omnic.targets.coreml.structure import structural_check

if TYPE_CHECKING:
    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec

__all__ = ["CoremlRunner", "CoremlTarget", "structural_check"]

_log = logging.getLogger(__name__)


@register_target(Targets.COREML)
class CoremlTarget:
    """Apple Core ML: ML Program with stateful KV cache, weights compressed by coremltools."""

    id = Targets.COREML

    def int4_grid(self, spec: "ResolvedSpec") -> str | None:
        """The `omnic.quant.grids` backend whose int4 codes this target stores: calibrated
        methods (GPTQ) round on it. None: the target quantizes from floats its own way."""
        return "coreml"  # coremltools' linear quantizer, -7..7 in the compute dtype

    def check(self, spec: "ResolvedSpec") -> list[Problem]:
        """What Core ML cannot take: pre-iOS18 states or int4/per-block weights, bf16, int8 KV
        cache, fp16 storage at fp32 compute, blocks that do not tile a weight, an OS older than
        the deployment target (see rules.py); and a missing
        coremltools."""
        import omnic.targets.coreml.rules  # noqa: F401 - registers the Core ML rules
        from omnic.targets.rules import problems

        reason = missing()
        out = [Problem(self.id, "targets.coreml", reason)] if reason else []
        return out + problems(spec, Targets.COREML)

    def lower(self, program: "Program", out_dir: Path) -> list[Artifact]:
        """Write `<name>.mlpackage` under out_dir; never mutates `program`."""
        import coremltools as ct

        from omnic.spec.inventory import decoder_tensors
        from omnic.targets.coreml import convert as cv
        from omnic.targets.coreml import structure as ins
        from omnic.targets.coreml import quant as q

        spec = program.spec
        c, m = spec.targets.coreml, spec.model
        plan = program.schemes()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        package = out_dir / f"{spec.name}.mlpackage"

        t0 = time.perf_counter()
        exported = cv.export(cv.make_wrapper(program.decoder), m.context_length)
        t_export = time.perf_counter() - t0
        # a ring: a sliding layer's cache shorter than the context (0 is a layer's state)
        rings = any(0 < n < m.context_length for n in program.decoder.cache_lengths())
        mlmodel = cv.convert(exported, target=c.deployment_target, units=c.compute_units,
                             precision=c.compute_precision, rings=rings)
        t_convert = time.perf_counter() - t0 - t_export
        const_names = {op.name for op in q.main_ops(mlmodel._mil_program) if op.op_type == "const"}
        consts = q.weight_consts(exported, const_names, cv.DECODER_ATTR)
        items = q.compressions(plan, consts)
        if c.compute_precision == "fp16":
            _log.info("coreml: compute precision fp16: float weights are stored fp16 (as on "
                       "device), the KV cache is fp16 state")
        for line in q.describe(items):
            _log.info(f"coreml: {line}")
        mlmodel = q.compress(mlmodel, items)
        t_compress = time.perf_counter() - t0 - t_export - t_convert
        meta = mlmodel.user_defined_metadata
        if ins.DATE_KEY in meta:
            del meta[ins.DATE_KEY]  # the only time-dependent byte of the package
        meta[ins.META_UNITS] = c.compute_units
        meta[ins.META_PRECISION] = c.compute_precision
        meta[ins.META_SPEC] = spec.name
        if package.exists():
            shutil.rmtree(package)
        mlmodel.save(str(package))
        ins.normalise_package(package)
        seconds = time.perf_counter() - t0

        spec_pb = ct.utils.load_spec(str(package))
        saved = q.load_program(package)
        signature = ins.read_signature(spec_pb, saved)
        histogram = ins.op_histogram(spec_pb)
        stored = q.stored_weights(saved, consts)
        weights = self._reference_weights(program, stored, c.compute_precision)
        shapes = {t.name: t.shape for t in decoder_tensors(m)}
        precision = q.precision_label(plan, shapes)
        compressed = {t: histogram.get(t, 0) for t in q.COMPRESSION_OPS if histogram.get(t)}
        nbytes = ins.package_bytes(package)
        _log.info(
            f"coreml: {c.deployment_target} {c.compute_precision} {c.compute_units}, "
            f"{len(items)} weights compressed {compressed or '-'}, "
            f"{len(signature['states'])} states "
            f"-> {package.name} ({nbytes / 2**20:.2f} MiB, {seconds:.1f} s: export "
            f"{t_export:.1f}, convert {t_convert:.1f}, compress {t_compress:.1f})")
        # Relative to the build directory when out_dir is BUILD/coreml (the pipeline's layout).
        rel = Path(out_dir.name) / package.name if out_dir.name == Targets.COREML else \
            Path(package.name)
        return [Artifact(
            component=Components.DECODER,
            target=Targets.COREML,
            path=rel.as_posix(),
            signature=signature,
            op_histogram=histogram,
            quantization={
                "compressed": {i.name: {"dtype": i.dtype, "block": i.block,
                                        "symmetric": i.symmetric} for i in items},
                "compressed_ops": compressed,
                "float_weights": "fp16" if c.compute_precision == "fp16" else "fp32",
            },
            details={
                "deployment_target": c.deployment_target,
                "specification_version": spec_pb.specificationVersion,
                "compute_units": c.compute_units,
                "compute_precision": c.compute_precision,
                "states": sorted(signature["states"]),
                "kv_cache_dtype": "float16",  # Core ML states are fp16 only
                "state_bytes": sum(2 * int(np.prod(s["shape"]))
                                   for s in signature["states"].values()),
                "compressed_weight_ops": compressed,
                "weight_ops": dict(sorted(consts.items())),
                "reference_weights_derived": sorted(set(shapes) - set(consts)),
                "bytes": nbytes,
                "weight_bin_bytes": (package / ins.WEIGHTS_FILE).stat().st_size,
                "context_length": m.context_length,
                "token_range": [1, m.context_length],  # default shape 1: decode may use the ANE
                "vocab_size": m.vocab_size,
                "frontend": "torch.export",
                "coremltools": ct.__version__,
                "numeric_check": f"runs on macOS only ({NEEDS_MACOS}); structure checked here",
            },
            precision=precision,
            reference_weights=weights,
        )]

    def lower_component(self, program: "Program", name: str, out_dir: Path) -> Artifact:
        """`<component>.mlpackage` beside the decoder: a stateless ML Program (components.py)."""
        from omnic.targets.coreml.components import lower_component

        return lower_component(program.components[name], Path(out_dir), program.spec)

    @staticmethod
    def _reference_weights(program: "Program", stored: dict[str, np.ndarray],
                           precision: str) -> dict[str, np.ndarray] | None:
        """Every decoder tensor as the package stores it, dequantized to float32.

        Tensors the converter folded away (no const left, e.g. a norm weight of all ones) are
        the fp32 weight cast to the compute precision, which is what the converter would have
        stored. None when the package stores the fp32 weights unchanged.
        """
        state = {k: v.detach().float().cpu().numpy()
                 for k, v in program.decoder.state_dict().items()}
        out = {}
        for name, w in state.items():
            if name in stored:
                out[name] = stored[name].reshape(w.shape)
            else:
                out[name] = w.astype(np.float16).astype(np.float32) if precision == "fp16" else w
        if all(np.array_equal(out[k], state[k]) for k in state):
            return None
        return out

    def structural_check(self, artifact: Artifact, build_dir: Path,
                         spec: "ResolvedSpec") -> list[str]:
        """What this host can check of a decoder package it cannot run (structure.py); the
        golden stage calls it when `load` raises NotRunnable."""
        return structural_check(artifact, build_dir, spec)

    def load(self, artifact: Artifact, build_dir: Path) -> "CoremlRunner":
        """A Runner over the package on macOS; elsewhere raises NotRunnable("needs macOS"), and
        NotRunnable without coremltools."""
        if artifact.component != Components.DECODER:  # a ComponentRunner (components.py)
            from omnic.targets.coreml.components import load_component

            return load_component(artifact, build_dir)
        if not is_macos():
            raise NotRunnable(NEEDS_MACOS)
        require_coremltools()
        return CoremlRunner(Path(build_dir) / artifact.path,
                            artifact.details.get("compute_units", "all"),
                            int(artifact.details["context_length"]))


class CoremlRunner:
    """Feeds tokens to the stateful ML Program (macOS 15+): one `MLState` per sequence."""

    def __init__(self, package: Path, compute_units: str, context_length: int) -> None:
        import coremltools as ct

        from omnic.targets.coreml.convert import compute_units as units

        self.model = ct.models.MLModel(str(package), compute_units=units(compute_units))
        self.context_length = context_length
        self.reset()

    def reset(self) -> None:
        self.state = self.model.make_state()
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        from omnic.targets.coreml.convert import INPUT_IDS, INPUT_POS, LOGITS

        ids = np.asarray(tokens, dtype=np.int32).reshape(1, -1)
        t = ids.shape[1]
        if self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens exceeds context_length "
                             f"{self.context_length}")
        pos = np.arange(self.position, self.position + t, dtype=np.int32)
        out = self.model.predict({INPUT_IDS: ids, INPUT_POS: pos}, state=self.state)
        self.position += t
        return np.asarray(out[LOGITS], dtype=np.float32).reshape(t, -1)
