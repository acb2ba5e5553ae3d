"""Pass pipelines: explicit, ordered lists of pass ids, each ordering constraint commented."""

from __future__ import annotations

DEFAULT: list[str] = [
    # First: every later pass and every target addresses tensors by canonical name; a builder
    # that produced other names must fail here, by name, before anything depends on them.
    "common::verify_inventory",
    # After the inventory check: the plan is keyed by those names and must cover all of them.
    # Before lowering: every target reads program.schemes() instead of re-deciding.
    "quant::plan",
]

PIPELINES: dict[str, list[str]] = {"default": DEFAULT}
