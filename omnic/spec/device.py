"""Where the model must run (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from omnic.spec.base import SpecModel


class Device(SpecModel):
    name: str = Field(description="Device name.")
    memory_budget_mb: PositiveInt = Field(
        description="Memory an app may use before the OS kills it (not the RAM size), in MiB."
    )
    ram_mb: PositiveInt | None = Field(None, description="Physical RAM in MiB, informational.")
    bandwidth_gbps: PositiveFloat = Field(description="Sustained memory bandwidth, GB/s.")
    os: Literal["ios", "android", "linux", "macos", "windows"] = Field(
        description="Operating system."
    )
    os_version: str | None = Field(None, description="e.g. '18' for iOS 18.")
    arch: Literal["arm64", "x86_64", "armv7"] = Field("arm64", description="CPU architecture.")
    target_triple: str | None = Field(None, description="LLVM triple for cross-compilation.")
    preferred_targets: tuple[str, ...] = Field(
        (), description="Targets that suit this device best."
    )
    features: tuple[str, ...] = Field(
        (), description="Hardware features: neon, dotprod, i8mm, fp16, ane, avx2, avx512..."
    )
