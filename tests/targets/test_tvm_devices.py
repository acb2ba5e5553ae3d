"""TVM device builds (`targets.tvm.devices`): OpenCL and Metal, checked structurally.

The builds are of specs/mobile_2gb.yaml's decoder as written (6 layers, d_model 384, context
512, int4 g32 with an int8 tied embedding): its Relax module is made once per session the way
the target's `lower` makes it (weights packed, `lowering.export_decoder`, `lowering.to_relax`;
15-25 s), then compiled for each device (6-8 s each, checked in ~1.3 s) on this machine.
Nothing in the model is reduced. One tiny MoE decoder with asymmetric int4 adds ~15 s.

There is no GPU and no OpenCL or Metal runtime here, so no number is compared: what is asserted
is what `devices.structural_check` verifies (kernels in the source, the function table a
device runtime would read, the exported library loading back into a Relax VM executable), plus
what the source must hold for its driver to compile it. A device build's golden is "not_run".
"""

from __future__ import annotations

import copy
import platform
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from tiny_specs import TEST_DEVICE

pytest.importorskip("tvm")

from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.tvm import devices  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MOBILE = REPO / "specs" / "mobile_2gb.yaml"
KINDS = ("opencl", "metal")
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}


def tiny_spec(model: dict[str, Any] | None = None, quant: dict[str, Any] | None = None,
              tvm: dict[str, Any] | None = None) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny", "device": TEST_DEVICE, "model": {**TINY, **(model or {})},
        "quantization": quant or {"weights": {"scheme": "fp32"}}, "targets": {"tvm": tvm or {}}})


def relax_module(spec: ResolvedSpec, spec_dir: Path) -> Any:
    """The generic Relax module of `spec`'s decoder, as TvmTarget.lower makes it."""
    torch = pytest.importorskip("torch")
    from omnic.model import build_model
    from omnic.quant.select import tensor_schemes
    from omnic.targets.tvm import lowering
    from omnic.targets.tvm.quant import apply_packing, pack

    torch.set_num_threads(1)
    decoder = copy.deepcopy(build_model(spec, spec_dir)).eval()
    state = {k: v.detach().float().numpy() for k, v in decoder.state_dict().items()}
    packed = {name: pack(name, state[name], ts) for name, ts in tensor_schemes(spec).items()
              if ts.scheme != "fp32" and name in state}
    apply_packing(decoder, packed)
    mod, _, _ = lowering.to_relax(lowering.export_decoder(decoder, decoder.config))
    return mod


@pytest.fixture(scope="session")
def mobile_spec() -> ResolvedSpec:
    from omnic.compiler.validate import load_resolved

    return load_resolved(MOBILE)


@pytest.fixture(scope="session")
def mobile_relax(mobile_spec: ResolvedSpec) -> Any:
    return relax_module(mobile_spec, MOBILE.parent)


@pytest.fixture(scope="session")
def mobile_builds(mobile_relax, mobile_spec, tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """`mobile_builds(kind)`: the device build of mobile_2gb, exported and checked, made once."""
    done: dict[str, dict[str, Any]] = {}

    def get(kind: str) -> dict[str, Any]:
        if kind not in done:
            exe, facts = devices.build_device(mobile_relax, kind, mobile_spec.targets.tvm.opt_level)
            root = tmp_path_factory.mktemp(f"tvm-{kind}")
            files = devices.export_device(exe, root / f"decoder.{kind}.so")
            check = devices.structural_check(exe, kind, root / files[0])
            done[kind] = {"kind": kind, "exe": exe, "facts": facts, "check": check, "root": root,
                          "files": files, "source": devices.device_source(exe, kind)}
        return done[kind]

    return get


# -- builds of specs/mobile_2gb.yaml -----------------------------------------------------------


def test_mobile_2gb_accepts_opencl_and_metal(mobile_spec: ResolvedSpec) -> None:
    spec = mobile_spec.model_copy(update={"targets": mobile_spec.targets.model_copy(update={
        "tvm": mobile_spec.targets.tvm.model_copy(update={"devices": list(KINDS)})})})
    assert devices.device_problems(spec) == []


@pytest.mark.parametrize("kind", KINDS)
def test_mobile_2gb_device_build_is_structurally_checked(mobile_builds, kind: str) -> None:
    build = mobile_builds(kind)
    facts, check = build["facts"], build["check"]
    assert facts["kind"] == check["kind"] == kind
    assert f'"kind":"{kind}"' in facts["target"] and '"host":{"kind":"llvm"' in facts["target"]
    assert check["loaded"] is True and "main" in check["vm_functions"]
    assert check["device_loader"].startswith("stand-in")  # no OpenCL/Metal runtime in the wheel
    # The table a device runtime reads names exactly the kernels of the source.
    assert check["format"] == {"opencl": "cl", "metal": "metal"}[kind]
    assert check["function_table"] == check["kernels"] == facts["kernels"]
    assert check["device_source_bytes"] == facts["device_source_bytes"] > 100_000
    assert {"threadIdx.x", "blockIdx.x"} <= set(check["launch_params"])
    assert check["max_kernel_buffers"] <= 31
    assert check["golden"] == "not_run" and "never run" in check["reason"]


@pytest.mark.parametrize("kind", KINDS)
def test_mobile_2gb_kernels_cover_the_decoder(mobile_builds, kind: str) -> None:
    build = mobile_builds(kind)
    names = devices.kernel_names(build["source"], kind)
    assert len(names) == build["check"]["kernels"]
    # Each of the 4 int4 matrix shapes (q/k/v, o, gate/up, down) has its own dequantization
    # kernel (the nibble unpack `bitwise_and`; the int8 embedding has none), and the linear
    # layers are NT matmuls (FuseTransposeMatmul: no W^T is written per call).
    assert sum(n.startswith("fused_bitwise_and") for n in names) == 4
    assert sum(n.startswith("NT_matmul") for n in names) >= 4
    assert not any(n.startswith("transpose") and "matmul" in n for n in names)
    assert any("softmax" in n for n in names) and any("rsqrt" in n for n in names)
    assert {"take_kernel", "take1_kernel"} <= names  # the embedding gathers


def test_opencl_source_is_opencl_c(mobile_builds) -> None:
    build = mobile_builds("opencl")
    source, n = build["source"], build["check"]["kernels"]
    # one program per kernel (TVM compiles each lazily), each with its definition
    assert source.count("// Function: ") == n
    assert len(re.findall(r"^__kernel void \w+\([^;{]*\) \{$", source, re.M)) == n
    assert "__global float* restrict" in source and "get_local_id(0)" in source
    # The fp16 scales of the int4/int8 weights need half support, declared as such.
    assert "half" in source and "cl_khr_fp16" in build["check"]["extensions"]


def test_metal_source_is_metal_shading_language(mobile_builds) -> None:
    build = mobile_builds("metal")
    source, n = build["source"], build["check"]["kernels"]
    assert source.count("// Function: ") == source.count("#include <metal_stdlib>") == n
    assert len(re.findall(r"^kernel void \w+\(", source, re.M)) == n
    assert "[[thread_position_in_threadgroup]]" in source and "device float*" in source
    # dlight's Matmul tiles the NT matmuls through threadgroup (shared) memory
    assert "threadgroup float" in source
    assert "simdgroup" not in source  # MetalMatmul is bypassed (it crashes TVM 0.27)


@pytest.mark.parametrize("kind", KINDS)
def test_exported_library_embeds_the_kernels(mobile_builds, kind: str) -> None:
    from omnic.targets.tvm.lowering import elf_machine

    build = mobile_builds(kind)
    root, files = build["root"], build["files"]
    assert files == [f"decoder.{kind}.so"]
    data = (root / files[0]).read_bytes()
    assert int.from_bytes(data[16:18], "little") == 3  # ET_DYN: a shared library
    # for this machine: the launch code and the VM run on the host CPU
    assert elf_machine(data) == {"x86_64": "x86-64", "aarch64": "AArch64"}[platform.machine()]
    assert b"NT_matmul_kernel" in data  # the device source travels inside the host library
    assert build["check"]["library_bytes"] == len(data)


@pytest.mark.parametrize("kind", KINDS)
def test_the_stand_in_loader_is_removed(mobile_builds, kind: str) -> None:
    import tvm

    build = mobile_builds(kind)
    name = f"ffi.Module.load_from_bytes.{kind}"
    assert tvm.get_global_func(name, allow_missing=True) is None
    with pytest.raises(Exception, match="loader"):
        tvm.runtime.load_module(str(build["root"] / build["files"][0]))


@pytest.mark.parametrize("kind", KINDS)
def test_check_library_reads_the_file_alone(mobile_builds, kind: str) -> None:
    build = mobile_builds(kind)
    facts = devices.check_library(build["root"] / build["files"][0], kind)
    assert facts == {k: v for k, v in build["check"].items() if k != "device_source_bytes"}


def test_check_library_rejects_a_library_without_device_code(tmp_path: Path) -> None:
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4], "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    tvm.compile(bb.get(), target="llvm").export_library(str(tmp_path / "cpu.so"))
    with pytest.raises(RuntimeError, match="holds 0 opencl modules"):
        devices.check_library(tmp_path / "cpu.so", "opencl")


@pytest.mark.parametrize("kind", KINDS)
def test_structural_check_rejects_the_wrong_device(mobile_builds, kind: str) -> None:
    build = mobile_builds(kind)
    other = "metal" if kind == "opencl" else "opencl"
    with pytest.raises(RuntimeError, match=f"expected one {other} module"):
        devices.structural_check(build["exe"], other)


# -- a tiny MoE decoder, asymmetric int4 -------------------------------------------------------


def test_tiny_moe_int4_builds_for_metal() -> None:
    quant = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True},
             "overrides": [{"match": {"name": r"layers\.1\.attn\..*"}, "scheme": "int4",
                            "group_size": 16, "symmetric": False}]}
    spec = tiny_spec({"moe": {"experts": 4, "top_k": 2}, "tie_embeddings": True}, quant,
                     {"devices": ["metal"]})
    assert devices.device_problems(spec) == []
    executable, facts = devices.build_device(relax_module(spec, Path(".")), "metal")
    check = devices.structural_check(executable, "metal")
    assert check["loaded"] and check["function_table"] == facts["kernels"]
    source = devices.device_source(executable, "metal")
    assert "topk" in source or "sort" in source  # the MoE router's top-k, dispatched for GPUs


# -- pre-flight --------------------------------------------------------------------------------


def test_vulkan_is_refused_with_the_reason() -> None:
    import tvm

    assert tvm.get_global_func("target.build.vulkan", allow_missing=True) is None
    (problem,) = devices.device_problems(tiny_spec(tvm={"devices": ["opencl", "vulkan"]}))
    assert (problem.target, problem.field) == ("tvm", "targets.tvm.devices")
    assert f"apache-tvm {tvm.__version__} was built without Vulkan" in problem.message
    assert "no target.build.vulkan" in problem.message and "nearest: opencl" in problem.message
    with pytest.raises(ValueError, match="target.build.vulkan"):
        devices.build_device(None, "vulkan")


def test_opencl_and_metal_codegens_are_found() -> None:
    assert devices.codegen_missing("opencl") is None and devices.codegen_missing("metal") is None
    assert devices.device_problems(tiny_spec(tvm={"devices": ["opencl", "metal"]})) == []
    assert devices.device_problems(tiny_spec()) == []


@pytest.mark.parametrize("model, tvm, expect", [
    ({}, {"devices": ["metal", "metal"]}, "'metal' is listed 2 times"),
    ({"sliding_window": {"size": 16, "layers": "even"}}, {"devices": ["opencl"]},
     "layers [0] keep a ring cache"),
])
def test_device_problems(model: dict[str, Any], tvm: dict[str, Any], expect: str) -> None:
    problems = devices.device_problems(tiny_spec(model, tvm=tvm))
    assert [p.field for p in problems] == ["targets.tvm.devices"]
    assert expect in problems[0].message, problems


def test_a_window_as_long_as_the_context_is_no_ring() -> None:
    spec = tiny_spec({"sliding_window": {"size": 64, "layers": "all"}}, tvm={"devices": ["metal"]})
    assert devices.device_problems(spec) == []


def test_spec_field_vocabulary() -> None:
    from pydantic import ValidationError

    assert tiny_spec().targets.tvm.devices == []
    with pytest.raises(ValidationError):
        tiny_spec(tvm={"devices": ["cuda"]})
