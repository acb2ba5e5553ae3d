"""The base of every spec model: frozen, closed (unknown keys are errors), described."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SpecModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys.

    Every field of a subclass carries a `Field(description=...)`: the JSON Schema that editors
    and CI use is generated from these models and nothing else.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
