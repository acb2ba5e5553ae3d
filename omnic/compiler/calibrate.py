"""The `calibrate` stage: int4 codes chosen on calibration text (`weights.method`), once per build.

- Activations: the fp32 decoder runs `quantization.calibration`'s windows once
  (`omnic.compiler.calibration_stats`); each calibrated linear's input gives H = sum x^T x.
- awq, awq_gptq: AWQ's per-channel scales (`omnic.quant.awq.search_scales`) are folded into the
  model as built (`omnic.compiler.awq_fold`), an exact equivalence in float: the fp32 reference
  and every target see the folded model.
- awq: each weight is then clipped where clipping lowers its output error
  (`omnic.quant.awq.search_clip`); the clipped float weights go to every target, whose own
  quantizer rounds them.
- gptq, awq_gptq: GPTQ (`omnic.quant.gptq`) rounds each weight on the int4 grid of every target
  being built (`Target.int4_grid`: omnic's codes for ONNX and TVM, Q4_0 for GGUF, XNNPACK's for
  ExecuTorch, coremltools' for Core ML). Its result is a float weight that the target's own
  quantizer maps back onto exactly those codes and scales, so each backend stores its native
  form and its quantization-exact reference holds what it stores.
The targets get these weights through `Calibrated.program_for`; the memory plan, the storage and
the golden checks are those of round-to-nearest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

_log = logging.getLogger(__name__)
ANY_GRID = "*"  # awq's clipped floats: every target's quantizer takes them
GPTQ_METHODS = ("gptq", "awq_gptq")
AWQ_METHODS = ("awq", "awq_gptq")


def _rtn(grid: str, w: np.ndarray, group: int) -> np.ndarray:
    from omnic.quant.grids import quantize

    return quantize(grid, w, "int4", group, True).dequantize(w.shape)


def _compact(grid: str, w: np.ndarray, group: int) -> Any:
    """(codes int8, scales float32) when they reproduce `w` bit for bit, else `w` itself."""
    from omnic.quant.grids import quantize

    q = quantize("omnic" if grid == "gguf" else grid, w, "int4", 32 if grid == "gguf" else group,
                 True)
    scale = q.scale.astype(np.float32)
    if np.array_equal(q.codes.astype(np.float32) * scale[..., None], w.reshape(q.codes.shape)):
        return q.codes.astype(np.int8), scale
    return w


def _expand(stored: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(stored, np.ndarray):
        return stored
    codes, scale = stored
    return (codes.astype(np.float32) * scale[..., None]).reshape(shape)


@dataclass
class Calibrated:
    """What the stage decided: per grid, the weights each target quantizes in place of its own."""

    grid_of: dict[str, str | None]  # target id -> its int4 grid (None: rtn of the floats)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # grid -> name -> weight
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    # name -> mean x^2 per input column (after AWQ's fold): llama.cpp's importance matrix
    importance: dict[str, np.ndarray] = field(default_factory=dict)

    def weights_for(self, grid: str | None) -> dict[str, np.ndarray]:
        names = {**self.stored.get(ANY_GRID, {}), **self.stored.get(grid or "", {})}
        return {n: _expand(v, self.shapes[n]) for n, v in names.items()}

    def program_for(self, target_id: str, program: Any) -> Any:
        """`program` whose decoder holds the calibrated weights of `target_id`'s grid, with the
        importance matrix for a target that rounds the floats itself."""
        from omnic.golden.reference_model import with_weights

        weights = self.weights_for(self.grid_of.get(target_id))
        importance = self.importance if self.grid_of.get(target_id) is None else None
        if weights:
            program = program.evolve(decoder=with_weights(program.decoder, weights))
        return program.evolve(importance=importance) if importance else program


def windows(spec: Any, spec_dir: Path, tokenizer: Any, cal: Any = None) -> list[list[int]]:
    """The calibration windows: `cal`'s text (default: the spec's `quantization.calibration`),
    encoded by the model's tokenizer."""
    from omnic.quant.calibration_text import load_texts, samples

    cal = cal or spec.quantization.calibration
    ids = [tokenizer.encode(t) for t in load_texts(cal.text, spec_dir)]
    # a window longer than the model's context has no rope positions: cut to the context
    seq_len = min(cal.seq_len, spec.model.context_length)
    return samples([i for i in ids if i], cal.samples, seq_len, cal.seed)


def run(program: Any, tokenizer: Any, grid_of: dict[str, str | None],
        log: Callable[[str], None] = _log.info) -> Calibrated:
    """Collect, fold and round (see the module docstring). Changes `program.decoder` in place
    (AWQ's fold only, which keeps its function).

    Raises:
        ValueError: the calibration text cannot be read or holds no tokens.
    """
    from omnic.compiler import calibration_stats as cs
    from omnic.quant.select import method_for
    from omnic.spec.inventory import decoder_tensors

    started = time.perf_counter()
    spec, decoder = program.spec, program.decoder
    plan = program.schemes()
    methods = {t.name: method_for(spec.quantization, t) for t in decoder_tensors(spec.model)}
    names = {n for n, m in methods.items() if m != "rtn" and plan[n].scheme == "int4"}
    wins = windows(spec, program.spec_dir, tokenizer)
    mods = cs.linears(decoder, names)
    modules = dict(decoder.named_modules())
    fallback = sorted(names - {f"{n}.weight" for n in mods})
    grids = sorted({g for g in grid_of.values() if g})
    out = Calibrated(grid_of)
    err_rtn = {g: 0.0 for g in grids}
    err_cal = {g: 0.0 for g in grids}
    folded = n_chunks = 0
    for stats in cs.collect(decoder, wins, mods):
        n_chunks += 1
        by_consumer = {c[: -len(".weight")]: s for s in stats for c in s.consumers}
        rtn_before = {}  # the loss of plain rtn, measured before the fold moves the weights
        for s in stats:
            h = s.hessian()
            for name in (c for c in s.consumers if c in names):
                w = modules[name[: -len(".weight")]].weight.detach().numpy().astype(np.float32)
                g = plan[name].group_size
                rtn_before[name] = {gr: _output_error(w, _rtn(gr, w, g), h) for gr in grids}
        folded += _fold(decoder, modules, by_consumer, methods, plan, names)
        for s in stats:
            mean_sq = (s.h.diagonal() / max(s.tokens, 1)).numpy().astype(np.float32)
            out.importance.update({n: mean_sq for n in s.consumers if n in names})
            _round(s, modules, methods, plan, names, grids, out)
        for s in stats:  # the error of what each grid now gets, for the report
            h = s.hessian()
            for name in (c for c in s.consumers if c in names):
                w = modules[name[: -len(".weight")]].weight.detach().numpy().astype(np.float32)
                g = plan[name].group_size
                for gr in grids:
                    got = out.stored.get(gr, {}).get(name, out.stored.get(ANY_GRID, {}).get(name))
                    new = _rtn(gr, w if got is None else _expand(got, w.shape), g)
                    err_cal[gr] += _output_error(w, new, h)
                    err_rtn[gr] += rtn_before[name][gr]
    n_done = len(names) - len(fallback)
    seconds = time.perf_counter() - started
    cal = spec.quantization.calibration
    out.report = {
        "methods": sorted({methods[n] for n in names}),
        "text": cal.text, "windows": len(wins), "tokens": int(sum(len(w) for w in wins)),
        "tensors": n_done, "awq_folded": folded, "chunks": n_chunks,
        "rtn_fallback": fallback, "seconds": round(seconds, 1),
        "grids": {g: {"targets": sorted(t for t, x in grid_of.items() if x == g),
                      "output_error_vs_rtn": round(err_cal[g] / err_rtn[g], 4)
                      if err_rtn[g] else None} for g in grids},
        "own_rounding_targets": sorted(t for t, x in grid_of.items() if not x),
        "importance_tensors": len(out.importance),
    }
    ratios = ", ".join(f"{g} {v['output_error_vs_rtn']}x" for g, v in out.report["grids"].items())
    log(f"  calibrate: {len(wins)} windows, {out.report['tokens']} tokens ({cal.text}); "
        f"{n_done} tensors, {folded} AWQ folds, {n_chunks} chunk(s), {seconds:.1f}s; "
        f"output error vs rtn: {ratios}")
    if fallback:
        log(f"  calibrate: not an nn.Linear input, rounded to nearest: {', '.join(fallback)}")
    for t in out.report["own_rounding_targets"]:
        log(f"  calibrate: {t} has no int4 grid for calibrated codes; its own quantizer rounds "
            "the weights (after AWQ's fold and clipping, when asked), weighted by the "
            "importance matrix where it takes one (GGUF K-quants)")
    return out


def _output_error(w: np.ndarray, w_new: np.ndarray, h: np.ndarray) -> float:
    from omnic.quant.gptq import output_error

    return output_error(w, w_new, h)


def _fold(decoder: Any, modules: dict[str, Any], by_consumer: dict[str, Any],
          methods: dict[str, str], plan: dict[str, Any], names: set[str]) -> int:
    """AWQ's scales for every fold group of this chunk whose consumers all ask for it."""
    import torch

    from omnic.compiler.awq_fold import apply, fold_groups
    from omnic.quant.awq import search_scales

    done = 0
    for group in fold_groups(decoder):
        tensors = [f"{c}.weight" for c in group.consumers]
        stats = {id(by_consumer.get(c)) for c in group.consumers}
        if (not all(t in names and methods[t] in AWQ_METHODS for t in tensors)
                or None in (by_consumer.get(c) for c in group.consumers) or len(stats) != 1
                or len({plan[t].group_size for t in tensors}) != 1):
            continue
        s = by_consumer[group.consumers[0]]
        ws = [modules[c].weight.detach().numpy().astype(np.float32) for c in group.consumers]
        found = search_scales(ws, s.hessian(), s.abs_mean(), plan[tensors[0]].group_size)
        if found.ratio == 0 or np.all(found.scales == 1):
            continue
        apply(modules, group, found.scales)
        scale = torch.from_numpy(np.asarray(found.scales, dtype=np.float32))
        s.h.div_(scale[:, None] * scale[None, :])  # x -> x / s
        s.abs_sum.div_(scale)
        done += 1
    return done


def _round(s: Any, modules: dict[str, Any], methods: dict[str, str], plan: dict[str, Any],
           names: set[str], grids: list[str], out: Calibrated) -> None:
    """GPTQ on every grid (rows of the consumers of one input stacked), or AWQ's clip."""
    from omnic.quant.awq import search_clip
    from omnic.quant.gptq import gptq, hinv_cholesky

    h = u = None
    todo: dict[tuple[str, int], list[str]] = {}
    for name in (c for c in s.consumers if c in names):
        todo.setdefault((methods[name], plan[name].group_size), []).append(name)
    for (method, group), tensors in todo.items():
        h = s.hessian() if h is None else h
        ws = [modules[n[: -len(".weight")]].weight.detach().numpy().astype(np.float32)
              for n in tensors]
        for n, w in zip(tensors, ws):
            out.shapes[n] = w.shape
        if method not in GPTQ_METHODS:
            for n, w in zip(tensors, ws):
                out.stored.setdefault(ANY_GRID, {})[n] = search_clip(w, h, group)
            continue
        rows = np.cumsum([w.shape[0] for w in ws])[:-1]
        stacked = np.concatenate(ws, axis=0)
        u = hinv_cholesky(h) if u is None else u  # one factorization for every grid
        for grid in grids:
            parts = np.split(gptq(stacked, h, grid, group, hinv=u), rows, axis=0)
            for n, w_new in zip(tensors, parts):
                out.stored.setdefault(grid, {})[n] = _compact(grid, np.ascontiguousarray(w_new),
                                                              group)
