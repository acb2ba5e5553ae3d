"""One thread count, set the same way for every runtime, and recorded.

Each artifact is measured in a fresh worker process. Its environment (`worker_env`) carries the
count for the runtimes that read it at start-up; inside the worker `configure` sets it through
each runtime's own knob, and reads back what the runtime reports where it can:

    onnx        onnxruntime SessionOptions.intra_op_num_threads (OnnxTarget.load(intra_op_threads=))
    gguf        llama.cpp n_threads and n_threads_batch (OMNIC_THREADS, read by
                omnic.targets.gguf.runtime.default_threads)
    executorch  the ExecuTorch threadpool XNNPACK runs on (portable_lib._unsafe_reset_threadpool)
    tvm         TVM's worker pool (TVM_NUM_THREADS before first use, TvmTarget.load(num_threads=))
    reference   torch.set_num_threads (intra-op), OMP_NUM_THREADS
    coreml      nothing to set (Core ML schedules itself; it only runs on macOS)

Each runtime counts the calling thread as one of its N (onnxruntime's intra-op pool,
llama.cpp's n_threads, pthreadpool under XNNPACK, TVM's pool whose worker 0 is the caller, torch's
intra-op pool), so N is the number of threads doing the work in every row.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

# Read once at start-up by OpenMP (torch), BLAS libraries, TVM and omnic's llama.cpp runner.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
            "OMNIC_THREADS")

# target -> (keyword of Target.load that takes the count, what the runtime calls it)
LOAD_KEYWORDS = {
    "onnx": ("intra_op_threads", "onnxruntime intra_op_num_threads"),
    "tvm": ("num_threads", "TVM runtime.config_threadpool"),
}


def worker_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: `base` (default os.environ) with ENV_VARS = threads."""
    env = dict(os.environ if base is None else base)
    for var in ENV_VARS:
        env[var] = str(int(threads))
    return env


def configure(target_id: str, target: Any, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set `threads` for `target_id`'s runtime in this process, before its artifact is loaded.

    Args:
        target_id: the target id, or "reference" for the PyTorch reference.
        target: the Target object (None for the reference); its `load` signature is inspected
            so a load keyword is only passed where the target accepts it.
        threads: the count.

    Returns:
        (keyword arguments for target.load, settings to record).
    """
    settings: dict[str, Any] = {"threads": threads,
                                "env": {v: os.environ.get(v) for v in ENV_VARS}}
    kwargs: dict[str, Any] = {}
    if target_id in LOAD_KEYWORDS and target is not None:
        keyword, what = LOAD_KEYWORDS[target_id]
        if keyword in inspect.signature(target.load).parameters:
            kwargs[keyword] = threads
            settings[what] = threads
        else:
            settings[what] = f"not settable: {type(target).__name__}.load has no {keyword}="
    if target_id == "gguf":
        from omnic.targets.gguf.runtime import cpu_has_amx, default_threads, extra_buffer_types

        settings["llama.cpp n_threads"] = settings["llama.cpp n_threads_batch"] = default_threads()
        settings["llama.cpp use_extra_bufts"] = (
            f"{extra_buffer_types()} (CPU AMX: {cpu_has_amx()}; OMNIC_LLAMA_EXTRA_BUFTS="
            f"{os.environ.get('OMNIC_LLAMA_EXTRA_BUFTS', 'unset')})")
    elif target_id == "executorch":
        settings.update(_executorch_threads(threads))
    elif target_id == "reference":
        import torch

        torch.set_num_threads(threads)
        settings["torch.get_num_threads"] = torch.get_num_threads()
    elif target_id == "coreml":
        settings["coreml"] = "scheduled by Core ML (not settable)"
    return kwargs, settings


def after_load(target_id: str, settings: dict[str, Any]) -> None:
    """Read back what the runtime actually uses, once the artifact is loaded."""
    if target_id == "tvm":
        try:
            import tvm

            settings["tvm runtime.NumThreads"] = int(tvm.get_global_func("runtime.NumThreads")())
        except Exception as err:  # noqa: BLE001 - a reading for the record only
            settings["tvm runtime.NumThreads"] = f"unknown ({type(err).__name__})"
    elif target_id == "executorch":
        settings.update(_executorch_count())


def _executorch_threads(threads: int) -> dict[str, Any]:
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError as err:
        return {"executorch threadpool": f"not set: {err}"}
    # ref: executorch/extension/pybindings/pybindings.pyi (_unsafe_reset_threadpool: experimental)
    portable_lib._unsafe_reset_threadpool(int(threads))
    return _executorch_count()


def _executorch_count() -> dict[str, Any]:
    try:
        from executorch.extension.pybindings import portable_lib

        return {"executorch threadpool (XNNPACK)": int(portable_lib._threadpool_get_thread_count())}
    except Exception as err:  # noqa: BLE001 - a reading for the record only
        return {"executorch threadpool (XNNPACK)": f"unknown ({type(err).__name__})"}
