"""`compile()`: the stages of DESIGN.md, top to bottom.

    load (YAML, extends, the spec's models) → resolve (presets) → validate (semantic checks)
    → [quantization: auto picks its scheme] → plan (and the device budget) → check (every
    target's pre-flight) → build → passes → reference
    → per target: lower → golden → manifest → publish

Each stage runs once and hands its value to the next.

Output is written to a hidden staging directory beside OUT_DIR and renamed into place at the end,
so an interrupted or crashed compile leaves nothing that looks like a build. Outcomes:
- every golden check passed (not_run counts as not failed, and is reported): the build is
  renamed to OUT_DIR (replacing an existing one only with force=True); exit status 0.
- some golden check failed: the complete build is kept for inspection, but at OUT_DIR.failed,
  never at OUT_DIR (an earlier good OUT_DIR stays untouched), with manifest status "failed";
  exit status 1.
- the spec or an input is invalid (validation errors, a target's pre-flight problems, OUT_DIR
  exists without force): nothing is written; exit status 2.
- a stage crashes (a target's lowering, a pass): the staging directory is removed; exit 1.
- the disk or quota fills up (ENOSPC, EDQUOT): the staging directory is removed and the error
  names the path and the bytes the plan needs; exit 1.
- the compile is interrupted (Ctrl-C, or SIGTERM, which the CLI raises as an exception): the
  staging directory is removed; exit 130 / 143. A compile killed outright (SIGKILL) leaves its
  staging directory, which the next compile into the same OUT_DIR removes once its process is
  gone (omnic.compiler.staging).

Each target lowers into BUILD/<target id>/ and returns artifact paths relative to BUILD (a path
relative to its own folder is accepted and normalised): one artifact for the decoder and one per
component of `program.components` (encoders, heads), the latter judged against their torch
modules by `golden.components`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from rich.console import Console

from omnic.compiler import manifest as mf
from omnic.compiler import manifest_stage
from omnic.compiler.errors import CompileError, InputError
from omnic.compiler.lowering import lower_target
from omnic.compiler.staging import failed_dir, publish, staged
from omnic.constants import Components, GoldenStatus
from omnic.runtime import pages

if TYPE_CHECKING:
    from omnic.golden.check import GoldenResult
    from omnic.targets.base import Artifact

_log = logging.getLogger(__name__)


@dataclass
class CompileResult:
    status: str  # "passed" | "failed"
    exit_code: int  # 0 passed, 1 a golden check failed
    out_dir: Path  # where the build is: OUT_DIR, or OUT_DIR.failed
    manifest: mf.Manifest
    warnings: list[str] = field(default_factory=list)


class _Stages:
    """Times each stage, shows a spinner while it runs (stderr) and logs a line when it ends."""

    def __init__(self, console: Console):
        self.console = console
        self.records: dict[str, list[mf.StageTiming]] = {"stages": [], "targets": []}
        self.peak_mb = 0.0  # the whole compile's peak RSS, over every window
        self.on_start: Any = None  # told each stage's name as it starts (a --jobs worker)
        mf.reset_peak_rss()  # not the peak of whatever this process did before compiling

    @contextlib.contextmanager
    def __call__(self, name: str, kind: str = "stages") -> Iterator[None]:
        self.peak_mb = max(self.peak_mb, mf.peak_rss_mb() or 0.0)  # the window that ends here
        pages.trim_heap()  # what the last stage freed goes back to the system, not to the heap
        mf.reset_peak_rss()  # each stage records its own peak (Linux)
        start = time.perf_counter()
        if self.on_start is not None:
            self.on_start(name.split(": ", 1)[-1])
        with self.console.status(f"[bold]{name}[/]…"):
            yield
        seconds = time.perf_counter() - start
        peak = mf.peak_rss_mb()
        self.peak_mb = max(self.peak_mb, peak or 0.0)
        self.records[kind].append(mf.StageTiming(stage=name, seconds=seconds, peak_rss_mb=peak))
        _log.info(f"✓ {name:<18} {seconds:7.2f}s")


def _dump(dump_dir: Path | None, name: str, content: Any) -> None:
    """Write one stage's intermediate into --dump-dir (text, or JSON for data)."""
    if dump_dir is None:
        return
    dump_dir.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(
        mf.jsonable(content), indent=2, sort_keys=True, default=str) + "\n"
    (dump_dir / name).write_text(text, encoding="utf-8")


def _dump_yaml(dump_dir: Path | None, name: str, data: Any) -> None:
    if dump_dir is not None:
        import yaml

        _dump(dump_dir, name, yaml.safe_dump(mf.jsonable(data), sort_keys=False))


def _select_targets(resolved: Any, requested: Sequence[str] | None) -> list[str]:
    from omnic.spec.targets import Targets as TargetsModel

    enabled = resolved.targets.enabled()
    if requested is None:
        if not enabled:
            raise InputError("no target enabled in the spec's `targets:`")
        return enabled
    out = []
    for t in requested:
        if t in TargetsModel.model_fields and t not in enabled:
            raise InputError(f"--targets {t}: not enabled in the spec (enabled: "
                             f"{', '.join(enabled) or 'none'}); add `{t}: {{}}` under targets:")
        if t not in out:
            out.append(t)
    if not out:
        raise InputError("--targets is empty")
    return out


def _exported_graph(decoder: Any) -> str:
    """The torch.export graph of the decoder the targets receive (for --dump-dir only)."""
    import torch

    try:
        k, v = decoder.empty_cache(1)
        ep = torch.export.export(decoder, (torch.zeros(1, 2, dtype=torch.int64),
                                           torch.arange(2), k, v), strict=False)
        return ep.graph_module.print_readable(print_output=False)
    except Exception as err:  # noqa: BLE001 - a debugging aid must not fail the compile
        return f"torch.export failed: {type(err).__name__}: {err}\n"


def _golden(session: Any, components: Any, target: Any, artifacts: list["Artifact"]
            ) -> list[tuple["Artifact", "GoldenResult"]]:
    """Check each artifact: the decoder's with `session`, the others' with `components`."""
    out = []
    for a in artifacts:
        g = session.check(target, a) if a.component == Components.DECODER else \
            components.check(target, a)
        # the dequantized weights served this check only: keeping them until the manifest would
        # hold one fp32-sized copy per target at once (5 GB each at 1B parameters)
        a.reference_weights = None
        out.append((a, g))
        log = _log.error if g.status == "failed" else _log.info
        log(f"  {a.path}: {g.status}" + (f" — {g.reason}" if g.reason else ""))
    gc.collect()  # runtimes (sessions, mmaps) go before the next target loads its own
    return out


def _publish(staging: Path, out_dir: Path, passed: bool) -> Path:
    """Rename the finished staging directory into place (see the module docstring)."""
    final = out_dir if passed else failed_dir(out_dir)
    publish(staging, final)
    return final


@dataclass(frozen=True)
class Built:
    """The build stage's value: the program every pass and target starts from, and the
    tokenizer the golden prompts are encoded with."""

    program: Any  # omnic.passes.program.Program
    tokenizer: Any


def _build(resolved: Any, spec_dir: Path, dump: Path | None) -> Built:
    """The torch model, its components and tokenizer, from the resolved spec."""
    from omnic.model import build_model
    from omnic.model.components import build_components
    from omnic.passes.program import Program
    from omnic.tokenizer import load_tokenizer

    try:
        decoder = build_model(resolved, spec_dir)
        components = build_components(resolved, spec_dir)  # encoders, heads (modalities)
        tokenizer = load_tokenizer(resolved, spec_dir)
    except (ValueError, OSError) as err:  # weights / tokenizer that do not fit the spec
        raise InputError(f"{type(err).__name__}: {err}") from None
    _dump(dump, "04-model.txt", f"{decoder}\n\n" + "\n".join(
        f"{k} {list(v.shape)} {v.dtype}" for k, v in decoder.state_dict().items()) + "\n")
    return Built(Program(spec=resolved, spec_dir=spec_dir, decoder=decoder,
                         components=components), tokenizer)


def _check(resolved: Any, requested: Sequence[str] | None) -> dict[str, Any]:
    """Every selected target's pre-flight; the targets by id, or InputError with every problem."""
    from omnic.targets.base import get_target

    objs, problems = {}, []
    for t in _select_targets(resolved, requested):
        try:
            objs[t] = get_target(t)
        except KeyError as err:
            raise InputError(f"target {t} is not available: {err}") from None
        problems += [str(p) for p in objs[t].check(resolved)]
    if problems:
        raise InputError("pre-flight problems:\n" + "\n".join(problems))
    _log.info(f"  targets: {', '.join(objs)}")
    return objs


def compile(
    spec_path: str | Path,
    out_dir: str | Path,
    targets: Sequence[str] | None = None,
    dump_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    extra_passes: Sequence[str] = (),
    cache: "str | Path | bool | None" = None,
    jobs: int = 1,
) -> CompileResult:
    """Compile a spec into verified artifacts and a manifest.

    Each stage runs once and hands its value to the next (see the module docstring).

    Args:
        spec_path: the spec YAML.
        out_dir: the build directory to create.
        targets: target ids to build (default: every target enabled in the spec).
        dump_dir: when given, each stage's intermediate result is written there.
        force: replace an existing out_dir.
        progress: show a spinner on stderr while a stage runs (log lines go through `logging`).
        extra_passes: pass ids appended to the model-level pipeline (tests plant faults with
            the `test::` passes of omnic.passes.faults).
        cache: the build cache (omnic.compiler.cache): None for the default location
            ($OMNIC_CACHE_DIR, else ~/.cache/omnic/builds; OMNIC_CACHE=off disables it), a
            directory, or False for none.
        jobs: targets lowered and checked at once, in worker processes (omnic.compiler.
            parallel_targets), as far as the machine's memory allows; 1: one after another
            in this process.

    Returns:
        CompileResult (status "passed" with exit_code 0, or "failed" with exit_code 1 and the
        build at OUT_DIR.failed).

    Raises:
        InputError: invalid spec or input (exit status 2); nothing written.
        CompileError: a stage crashed (exit status 1); nothing written.
    """
    from omnic.compiler.plan import plan_memory
    from omnic.golden.tolerances import validate_overrides
    from omnic.passes import DEFAULT, PassError, run_passes
    from omnic.passes.faults import fault_name
    from omnic.compiler.auto_quant import choose_for_build, is_auto
    from omnic.compiler import validate
    from omnic.compiler import parallel_targets
    from omnic.compiler.cache import open_cache
    from omnic.compiler.cached_stages import built as built_result
    from omnic.golden import store as golden_store
    from omnic.compiler.cached_stages import CACHED, CompileCache

    stage = _Stages(Console(stderr=True, quiet=not progress, highlight=False))
    started = time.perf_counter()
    spec_path, out_dir = Path(spec_path), Path(out_dir)
    dump = Path(dump_dir) if dump_dir is not None else None
    spec_dir = spec_path.parent
    if out_dir.exists() and not force:
        raise InputError(f"{out_dir} exists; pass --force to replace it")
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")

    # The file is read once and its presets resolved once. Every error of the three stages is
    # reported at once (as `omnic validate` does): a stage stops the compile only when the next
    # one has nothing to work on.
    def stop_on_errors(stopped: bool = False) -> None:
        if stopped or not validation.ok:
            raise InputError("\n".join(str(d) for d in validation.errors))

    with stage("load"):
        validation = validate.load(spec_path)
        stop_on_errors(validation.spec is None)
        _dump_yaml(dump, "01-spec.yaml", validation.spec.model_dump(mode="json",
                                                                    exclude_unset=True))
    with stage("resolve"):
        validate.inline_presets(validation)
        stop_on_errors(validation.resolved is None)
        resolved = validation.resolved
        _dump_yaml(dump, "02-resolved.yaml", resolved.model_dump(mode="json"))
    with stage("validate"):
        validate.check_resolved(validation, spec_dir)
        stop_on_errors()
        problems = validate_overrides(validation.spec.golden.tolerances)
        if problems:
            raise InputError("\n".join(problems))
        warnings = [str(d) for d in validation.warnings]
        for w in warnings:
            _log.warning(w)
    built, auto, front = None, None, None  # auto: {"report", "quantization"} of `auto`
    store = open_cache(cache)
    cc = CompileCache(store, spec_dir, extra_passes, read=dump is None) if store else None
    if cc is not None:  # the stages before the targets, when every target is cached too
        front = cc.front(resolved.model_dump(mode="json"),
                         list(targets or resolved.targets.enabled()))
    if front is not None and front.payload["auto"] is not None:
        from omnic.spec.quant import Quantization

        auto = front.payload["auto"]
        resolved = resolved.model_copy(update={"quantization": Quantization.model_validate(
            auto["quantization"])})
    elif is_auto(validation.spec.quantization):
        # quantization: auto picks its scheme here, measured on the built fp32 model (which does
        # not depend on the scheme, so the build stage below takes this one over)
        with stage("quant auto"):
            built = _build(resolved, spec_dir, dump)
            try:
                choice = choose_for_build(resolved, built.program.decoder, built.tokenizer,
                                          spec_dir, _log.info)
            except ValueError as err:
                raise InputError(str(err)) from None
            resolved = resolved.model_copy(update={"quantization": choice.quantization})
            auto = {"report": choice.to_dict(),
                    "quantization": choice.quantization.model_dump(mode="json")}
            built = Built(built.program.evolve(spec=resolved), built.tokenizer)
    spec_data = resolved.model_dump(mode="json")
    with stage("plan"):
        plan = plan_memory(resolved, artifacts=True, spec_dir=str(spec_dir))
        validation.resolved = resolved  # the scheme auto chose, when it did
        validate.check_fit(validation, plan)
        stop_on_errors()
        _dump(dump, "03-plan.json", plan.to_dict())
    with stage("check"):
        objs = _check(resolved, targets)
    hits = {t: cc.target(spec_data, t, getattr(o, "cache_inputs", lambda s: None)(resolved))
            for t, o in objs.items()} if cc is not None else {}
    if front is not None and all(hits.values()):  # nothing to build: every result is cached
        try:
            with staged(out_dir, _planned_bytes(plan, objs)) as staging:
                store.restore(front, staging)
                results = []
                for t, entry in hits.items():
                    with stage(f"{t}: {CACHED}", "targets"):
                        results.append(cc.restore_target(entry, staging))
                if None in results:
                    raise FileNotFoundError("a cache entry went away while it was read")
                f = front.payload
                return _finish(
                    stage, staging, out_dir, resolved, spec_dir, plan, objs, f["passes"],
                    results, auto and auto["report"], f["calibration"], fault_name(
                        [*DEFAULT, *extra_passes]), warnings, started, dump)
        except FileNotFoundError as err:  # pruned meanwhile: build it all
            _log.warning(f"cache: {err}; building instead")
            hits = {}
    if built is None:
        with stage("build"):
            built = _build(resolved, spec_dir, dump)
    pipeline = [*DEFAULT, *extra_passes]
    with stage("passes"):
        try:
            program, pass_records = run_passes(built.program, pipeline)
        except PassError as err:
            raise CompileError(str(err)) from err
        for r in pass_records:
            _log.info(f"  {r.id:<28} {'changed' if r.changed else 'unchanged':<9} "
                      f"{r.seconds:.3f}s")
        _dump(dump, "05-passes.json", {"passes": [vars(r) for r in pass_records],
                                       "quant_plan": program.quant_plan})
    calibrated = None
    if resolved.quantization.calibrated():
        # after quant::plan (it reads the plan), before the reference: AWQ's fold changes the
        # model as built (keeping its function), and the fp32 reference must be that model
        with stage("calibrate"):
            calibrated = _calibrate(program, built.tokenizer, objs)
    fault = fault_name(pipeline)
    if fault:
        _log.warning(f"TEST FAULT {fault}: the targets get a damaged program")
    if dump is not None:
        with stage("dump graph"):
            _dump(dump, "05-program-graph.txt", _exported_graph(program.decoder))

    with staged(out_dir, _planned_bytes(plan, objs)) as staging:
        with stage("reference"):
            # from the model as built, before any pass: a pass that damages the program (the
            # test:: faults) must show up as a golden failure, not move the reference with it
            sessions = _reference(built, resolved, staging, program.quant_plan)
        passes = [{"id": r.id, "changed": r.changed, "seconds": r.seconds} for r in pass_records]
        report = calibrated.report if calibrated else None
        if cc is not None:
            cc.store_front(staging, resolved.name, pass_records, report, auto)
        by_target = {}
        for t in objs:
            if hits.get(t) is not None:
                with stage(f"{t}: {CACHED}", "targets"):
                    restored = cc.restore_target(hits[t], staging)
                if restored is not None:
                    by_target[t] = restored

        def lower_and_check(t: str) -> Any:
            mark = golden_store.writes()
            with stage(f"{t}: lower", "targets"):
                lowered = calibrated.program_for(t, program) if calibrated else program
                artifacts = lower_target(t, objs[t], lowered, staging)
                del lowered
            with stage(f"{t}: golden", "targets"):
                result = built_result(t, _golden(*sessions, objs[t], artifacts), staging, mark)
            _dump(dump, f"06-{t}-artifacts.json", [
                {k: v for k, v in vars(a).items() if k != "reference_weights"}
                for a in artifacts])
            return result

        def store(t: str, result: Any) -> None:
            if cc is not None:
                cc.store_target(staging, resolved.name, result)

        todo = [t for t in objs if t not in by_target]
        by_target.update(parallel_targets.run_targets(lower_and_check, todo, jobs, plan, stage,
                                                       store))
        results = [by_target[t] for t in objs]
        return _finish(stage, staging, out_dir, resolved, spec_dir, plan, objs, passes, results,
                       auto and auto["report"], report, fault, warnings,
                       started, dump)


def _finish(stage: _Stages, staging: Path, out_dir: Path, resolved: Any, spec_dir: Path,
            plan: Any, objs: dict[str, Any], passes: list[dict[str, Any]], results: list[Any],
            auto: dict[str, Any] | None, calibration: dict[str, Any] | None, fault: str | None,
            warnings: list[str], started: float, dump: Path | None) -> CompileResult:
    """The manifest stage and the publication of the build: `passes` the model-level pass
    records, `results` each target's cached_stages.TargetResult."""
    with stage("manifest"):
        manifest = manifest_stage.manifest(resolved, spec_dir, plan, list(objs), passes, results,
                                           auto, calibration, fault, staging)
    manifest.timings = manifest_stage.timings(stage.records, passes, results, started,
                                              max(stage.peak_mb, mf.peak_rss_mb() or 0.0))
    mf.write(manifest, staging)
    _dump(dump, "07-manifest.json", mf.dumps(manifest))
    passed = manifest.status == GoldenStatus.PASSED
    final = _publish(staging, out_dir, passed)
    return CompileResult(manifest.status, 0 if passed else 1, final, manifest, warnings)


def _calibrate(program: Any, tokenizer: Any, targets: dict[str, Any]) -> Any:
    """The calibrate stage (omnic.compiler.calibrate) for the targets being built."""
    from omnic.compiler import calibrate

    grids = {t: getattr(o, "int4_grid", lambda spec: None)(program.spec)
             for t, o in targets.items()}
    try:
        return calibrate.run(program, tokenizer, grids, _log.info)
    except ValueError as err:  # unreadable calibration text
        raise InputError(f"quantization.calibration: {err}") from None


def _planned_bytes(plan: Any, targets: dict[str, Any]) -> int | None:
    """The memory plan's bytes for the artifacts of `targets` (None: no target byte model)."""
    return sum(a["bytes"] for a in plan.artifacts
               if a.get("carried") and a["target"] in targets) or None


def _reference(built: Built, resolved: Any, staging: Path, plan: Any) -> tuple[Any, Any]:
    """The golden sessions: the decoder's fp32 reference, and the components'. `plan`: the
    quant plan the targets lower, the recipe of the field reference (golden/field.py)."""
    from omnic.golden import inputs as golden_inputs
    from omnic.golden.check import GoldenSession
    from omnic.golden.components import ComponentGoldenSession

    golden = resolved.golden
    inputs = golden_inputs.inputs_for_spec(resolved, golden_inputs.special_ids_of(built.tokenizer),
                                           built.tokenizer)
    session = GoldenSession(built.program.decoder, inputs, staging, golden.tolerances,
                            plan=plan, max_kld=golden.max_kld, spec=resolved)
    session.fp32()
    components = ComponentGoldenSession(built.program.components, staging, golden.seed,
                                        golden.tolerances)
    return session, components
