"""Where weights and the tokenizer come from (torch-free)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from omnic.spec.base import SpecModel


class RandomWeights(SpecModel):
    source: Literal["random"] = Field(description="Seeded random weights (nothing is read).")
    seed: int = Field(0, ge=0, description="Seed; the same seed gives bit-identical weights.")


class SafetensorsWeights(SpecModel):
    source: Literal["safetensors"] = Field(
        description="One .safetensors file in omnic tensor names."
    )
    path: str = Field(description="Path to the file, relative to the spec file and inside its "
                      "folder; a file elsewhere is named by its absolute path.")


class HuggingfaceWeights(SpecModel):
    source: Literal["huggingface"] = Field(
        description="A Hugging Face model directory (config.json + safetensors shards)."
    )
    path: str = Field(description="Directory path, relative to the spec file and inside its "
                      "folder; a directory elsewhere is named by its absolute path.")


class GgufWeights(SpecModel):
    source: Literal["gguf"] = Field(
        description="A llama.cpp GGUF file (llama, qwen2, qwen3); every tensor is dequantized "
        "exactly to float32, and its storage is recorded in the manifest."
    )
    path: str = Field(description="Path to the .gguf file, relative to the spec file and inside "
                      "its folder; a file elsewhere is named by its absolute path.")


Weights = Annotated[
    Union[RandomWeights, SafetensorsWeights, HuggingfaceWeights, GgufWeights],
    Field(discriminator="source"),
]


class ByteTokenizer(SpecModel):
    kind: Literal["byte"] = Field(
        description="256 byte tokens followed by specials (bos, eos, pad)."
    )


class HuggingfaceTokenizer(SpecModel):
    kind: Literal["huggingface"] = Field(description="tokenizer.json read with `tokenizers`.")
    path: str = Field(description="Directory holding tokenizer.json, relative to the spec file "
                      "and inside its folder; a directory elsewhere is named by its absolute path.")


Tokenizer = Annotated[Union[ByteTokenizer, HuggingfaceTokenizer], Field(discriminator="kind")]
