"""Greedy generation through onnxruntime-genai's own Generator (a test helper: the reference
tokens come from omnic's runners, these from genai)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def genai_greedy(folder: Path, prompt: list[int], steps: int):
    """(tokens genai generates greedily after `prompt`, the generator) for the model in
    `folder`; max_length is the prompt plus `steps`."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32)[None])
    got = []
    while not generator.is_done() and len(got) < steps:
        generator.generate_next_token()
        got.append(int(generator.get_next_tokens()[0]))
    return got, generator
