"""Per-target options (torch-free). A target present in `targets:` is built."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from omnic.spec.base import SpecModel

GgufFileType = Literal[
    "auto", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K"
]


class OnnxTarget(SpecModel):
    opset: int = Field(21, ge=17, le=23, description="ONNX opset of the default domain.")
    fusions: bool = Field(True, description="Apply onnxruntime fusions (attention, rotary, norms).")


class GgufTarget(SpecModel):
    file_type: GgufFileType = Field(
        "auto", description="GGUF file type; auto derives it from the spec's quantization."
    )


class ExecutorchTarget(SpecModel):
    backend: Literal["xnnpack", "coreml", "portable"] = Field(
        "xnnpack", description="Delegate that runs the lowered graph."
    )


class CoremlTarget(SpecModel):
    deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS14", "macOS15"] = Field(
        "iOS18", description="Minimum OS; iOS18/macOS15 are needed for stateful KV and int4 blocks."
    )
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = Field(
        "cpu_and_ne", description="Core ML compute units."
    )
    compute_precision: Literal["fp16", "fp32"] = Field("fp16", description="Activation precision.")


class TvmTarget(SpecModel):
    target: str = Field("llvm", description="TVM target string for the host build.")
    target_triple: str | None = Field(
        None, description="Cross-compile triple, e.g. aarch64-linux-android; null = host only."
    )
    opt_level: int = Field(3, ge=0, le=3, description="Relax optimisation level.")
    devices: list[Literal["opencl", "metal", "vulkan"]] = Field(
        default_factory=list,
        description="GPU builds made beside the host build, with TVM's GPU pipeline and dlight "
                    "schedules: opencl (Android), metal (iOS/macOS), vulkan (needs an "
                    "apache-tvm built with Vulkan). Checked structurally, never run here: their "
                    "golden is not_run.",
    )


class Targets(SpecModel):
    onnx: OnnxTarget | None = Field(None, description="ONNX (onnxruntime, onnxruntime-genai).")
    gguf: GgufTarget | None = Field(None, description="GGUF (llama.cpp).")
    executorch: ExecutorchTarget | None = Field(None, description="ExecuTorch .pte.")
    coreml: CoremlTarget | None = Field(None, description="Core ML .mlpackage.")
    tvm: TvmTarget | None = Field(None, description="Apache TVM Relax.")

    def enabled(self) -> list[str]:
        """Ids of the targets present, in canonical order."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class Golden(SpecModel):
    cases: PositiveInt = Field(4, description="Golden prompts.")
    prompt_tokens: PositiveInt = Field(32, description="Tokens per golden prompt.")
    decode_steps: PositiveInt = Field(16, description="Greedy steps compared after the prompt.")
    seed: int = Field(0, ge=0, description="Seed of the golden inputs.")
    tolerances: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the tolerance table, keyed 'target/precision/metric'.",
    )
    max_kld: PositiveFloat | None = Field(
        None,
        description="Quality budget of quantized artifacts: the most mean KL divergence from the "
                    "fp32 model (nats) on the golden prompts. Default: 1.25x what the field's "
                    "reference quantization of the same recipe (llama.cpp's Q4_0, Q8_0...) "
                    "costs on the same model.",
    )
