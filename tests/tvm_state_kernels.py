"""The TVM side of the hybrid-model tests (a test helper): the host device a build targets, and
a Relax VM that calls a layer's convolution kernel and then its mixer kernel in place, as
omnic/targets/tvm/llm_relax.py calls them."""

from __future__ import annotations

from hf_checkpoints import artifact_of

# the host alone: desktop_cpu's target triple would add a cross build that nothing here runs
HOST = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}


def tvm_artifact(result):
    """The CompileResult's one tvm artifact."""
    return artifact_of(result, "tvm")


def conv_then_mixer_vm(params, conv, conv_args, conv_types, mixer, mixer_args, mixer_types):
    """A Relax VM, compiled for this CPU, whose main(*params) calls the PrimFunc `conv` in place
    on `conv_args` (its state the second, its outputs `conv_types`: the state and the convolved
    channels), then the PrimFunc `mixer` in place on (the convolved channels, *`mixer_args`)
    (its state the sixth, its outputs `mixer_types`) and returns the mixer's output."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    with bb.function("main", params):
        conv_fn = bb.add_func(conv, "conv")
        mixer_fn = bb.add_func(mixer, "mixer")
        with bb.dataflow():
            out = bb.emit(relax.call_tir_inplace(conv_fn, conv_args, [1, -1], conv_types))
            xc = bb.emit(relax.TupleGetItem(out, 1))
            out = bb.emit(relax.call_tir_inplace(mixer_fn, [xc, *mixer_args], [5, -1],
                                                 mixer_types))
            y = bb.emit_output(relax.TupleGetItem(out, 1))
        bb.emit_func_output(y)
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return relax.VirtualMachine(tvm.compile(bb.get(), target), tvm.cpu())


def assert_gpu_builds_refuse(spec_path, tmp_path, capsys, mixer: str) -> None:
    """`omnic validate` takes the spec at `spec_path` as imported (the host build) and refuses
    it for an opencl device: it cannot carry `mixer` layers."""
    import yaml

    from omnic.cli.main import main

    assert main(["validate", str(spec_path)]) == 0, capsys.readouterr()
    data = yaml.safe_load(spec_path.read_text())
    data["targets"] = {"tvm": {"devices": ["opencl"]}}
    path = tmp_path / f"{spec_path.stem}_opencl.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot carry {mixer} layers" in " ".join((out + err).split())
