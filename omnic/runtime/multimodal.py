"""Multimodal prompts: placeholders expanded, encoder rows spliced into the input embeddings.

A prompt such as "<image>What is in the picture?" becomes token ids in which the placeholder
stands `N` times (N = embeddings the encoder yields, `placeholder_tokens(spec)`); the decoder's
input embeddings of those positions are then replaced, in order, by the encoder's output rows
(`omnic.model.components`: encoders output decoder input embeddings):

    ids  = [<s>, <image> x N, W, h, a, t, ...]
    x    = embed_tokens(ids)                    [T, d_model]
    x[ids == <image>] = vision_encoder(pixels)  [N, d_model]
    logits = decoder(inputs_embeds=x)

Placement rules (`assemble_prompt`):
- each placeholder written in the prompt (`Placeholders`: `<image>`, `<audio>`, `<sensor>`) marks
  where its input goes; one input per modality, so each may appear at most once;
- an input given without a placeholder in the prompt goes first, right after `<s>`, in the order
  image, audio, sensors (how LLaVA-style chat templates place a single image);
- a placeholder with no input is an error, as is a placeholder the tokenizer does not have.
Decoding is the shared greedy loop (`omnic.runtime.generate.greedy`) over `SplicingRunner`,
which splices the rows in on the prefill only, so the reference and every target decode alike.

Opening the parts of one run (the reference built from a spec, or a build's artifacts through
the Target interface) is omnic.compiler.multimodal_run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from omnic.constants import Components, Placeholders

if TYPE_CHECKING:
    import torch


class PromptError(ValueError):
    """A multimodal prompt that cannot be assembled (one readable line)."""


class EmbedsRunner(Protocol):
    """A decoder driven by input embeddings (batch 1, position advances per call)."""

    context_length: int | None
    last_hidden: np.ndarray | None  # [T, d_model] of the latest call, after the final norm

    def reset(self) -> None: ...

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """int64 token ids [T] -> float32 input embeddings [T, d_model]."""

    def forward_embeds(self, embeds: np.ndarray) -> np.ndarray:
        """float32 [T, d_model] at the current position -> float32 logits [T, vocab]."""


# -- prompt assembly ----------------------------------------------------------------------------
def placeholder_ids(tokenizer: Any, components: Sequence[str],
                    names: Mapping[str, str] | None = None) -> dict[str, int]:
    """{encoder component: the id of its placeholder token} for the given components.

    Args:
        tokenizer: an omnic tokenizer (`token_to_id`).
        components: encoder component ids (vision_encoder, audio_encoder, sensor_projector).
        names: placeholder text per component, overriding `Placeholders.BY_COMPONENT`.
    """
    out: dict[str, int] = {}
    for comp in components:
        name = (names or {}).get(comp) or Placeholders.BY_COMPONENT[comp]
        tid = tokenizer.token_to_id(name)
        if tid is None:
            raise PromptError(f"the tokenizer has no token {name!r} for the {comp} embeddings; "
                              f"name one it has with --{_FLAG[comp]}-token")
        out[comp] = int(tid)
    if len(set(out.values())) != len(out):
        raise PromptError(f"two modalities share one placeholder id: {out}")
    return out


_FLAG = {Components.VISION_ENCODER: "image", Components.AUDIO_ENCODER: "audio",
         Components.SENSOR_PROJECTOR: "sensor"}


def assemble_prompt(text: str, tokenizer: Any, counts: Mapping[str, int],
                    ids: Mapping[str, int], names: Mapping[str, str] | None = None,
                    add_special_tokens: bool = True) -> list[int]:
    """Token ids of a prompt with each given input's placeholder expanded to its token count.

    Args:
        text: the prompt; may hold placeholders (`<image>`, ...).
        tokenizer: encodes the text between placeholders.
        counts: {component: embeddings its encoder yields} for the inputs given (only these).
        ids: {component: placeholder id} (from `placeholder_ids`).
        names: placeholder text per component (default `Placeholders.BY_COMPONENT`).
        add_special_tokens: prepend what the tokenizer prepends (`<s>`).
    """
    names = {c: (names or {}).get(c) or default
             for c, default in Placeholders.BY_COMPONENT.items()}
    # split the text at every known placeholder, given or not (a stray one is an error)
    pieces: list[str | tuple[str]] = [text]
    for comp, name in names.items():
        split: list[str | tuple[str]] = []
        for piece in pieces:
            if isinstance(piece, tuple):
                split.append(piece)
                continue
            parts = piece.split(name)
            for i, part in enumerate(parts):
                if i:
                    split.append((comp,))
                split.append(part)
        pieces = split
    seen = [p[0] for p in pieces if isinstance(p, tuple)]
    for comp in seen:
        if comp not in counts:
            raise PromptError(f"the prompt has {names[comp]} but no --{_FLAG[comp]} was given")
        if seen.count(comp) > 1:
            raise PromptError(f"the prompt has {names[comp]} {seen.count(comp)} times; one "
                              f"--{_FLAG[comp]} input goes to one place")
    out: list[int] = []
    first = True
    for piece in pieces:
        if isinstance(piece, tuple):
            out += [ids[piece[0]]] * int(counts[piece[0]])
        elif piece or first:
            out += tokenizer.encode(piece, add_special_tokens=add_special_tokens and first)
        first = False
    # inputs without a placeholder go first, after what the tokenizer prepends (<s>)
    unplaced = [c for c in Placeholders.BY_COMPONENT if c in counts and c not in seen]
    head = len(tokenizer.encode("", add_special_tokens=add_special_tokens))
    block = [ids[c] for c in unplaced for _ in range(int(counts[c]))]
    return out[:head] + block + out[head:]


def check_placeholders(prompt: Sequence[int], counts: Mapping[str, int],
                       ids: Mapping[str, int]) -> None:
    """Each given input's placeholder id appears exactly `counts[c]` times (for --tokens)."""
    arr = np.asarray(prompt)
    for comp, n in counts.items():
        have = int((arr == ids[comp]).sum())
        if have != n:
            raise PromptError(f"the prompt holds {have} {comp} placeholder ids ({ids[comp]}), "
                              f"the encoder yields {n} embeddings")


def splice(embeds: np.ndarray, tokens: Sequence[int], rows: Mapping[int, np.ndarray]) -> np.ndarray:
    """`embeds` [T, d] with the rows at each placeholder id replaced by that id's rows, in order.

    Args:
        embeds: token embeddings [T, d] (not modified).
        tokens: the ids they embed.
        rows: {placeholder id: [N, d] encoder output}; the id must occur exactly N times.
    """
    out = np.array(embeds, dtype=np.float32, copy=True)
    ids = np.asarray(tokens)
    for tid, r in rows.items():
        where = np.flatnonzero(ids == tid)
        r = np.asarray(r, dtype=np.float32).reshape(-1, out.shape[-1])
        if where.shape[0] != r.shape[0]:
            raise PromptError(f"{where.shape[0]} placeholder tokens (id {tid}) for {r.shape[0]} "
                              f"encoder embeddings")
        out[where] = r
    return out


# -- decoding -----------------------------------------------------------------------------------
class SplicingRunner:
    """`omnic.targets.base.Runner` over an `EmbedsRunner`: the first call after `reset()` (the
    prefill) gets the encoder rows spliced in; later calls embed their tokens plainly.

    `prompt_hidden` keeps the last prompt position's final-norm hidden state (for an action head).
    """

    def __init__(self, inner: EmbedsRunner, rows: Mapping[int, np.ndarray]) -> None:
        self.inner, self.rows = inner, dict(rows)
        self.context_length = getattr(inner, "context_length", None)
        self.reset()

    def reset(self) -> None:
        self.inner.reset()
        self.prefilled = False
        self.prompt_hidden: np.ndarray | None = None

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        x = self.inner.embed(ids)
        if not self.prefilled:
            x = splice(x, ids, self.rows)
        logits = self.inner.forward_embeds(x)
        if not self.prefilled and self.inner.last_hidden is not None:
            self.prompt_hidden = np.asarray(self.inner.last_hidden[-1], dtype=np.float32)
        self.prefilled = True
        return logits


@dataclass
class Result:
    tokens: list[int]
    prompt_logits: np.ndarray  # float32 [T, vocab]
    prompt: list[int]
    actions: np.ndarray | None = None  # [horizon, dim] from the action head
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # component -> [N, d]


def generate(runner: EmbedsRunner, prompt: Sequence[int],
             encoders: Mapping[str, Callable[[np.ndarray], np.ndarray]],
             inputs: Mapping[str, np.ndarray], ids: Mapping[str, int], steps: int,
             stop_ids: Sequence[int] = (),
             action_head: Callable[[np.ndarray], np.ndarray] | None = None,
             vocab: int | None = None) -> Result:
    """Run each given input through its encoder, splice the rows in, decode greedily.

    Args:
        runner: the decoder on embeddings (reference or a target's runtime).
        prompt: token ids with the placeholders already expanded (`assemble_prompt`).
        encoders: {component: run(input [1, ...]) -> [1, N, d]} for every given input.
        inputs: {component: the encoder's input array, batch 1}.
        ids: {component: placeholder id}.
        steps: new tokens to generate; stop_ids: stop after emitting one of these.
        action_head: run(hidden [1, d]) -> [1, horizon, dim]; needs `runner.last_hidden`.
        vocab: the vocabulary size every row of logits must have (None: any; see `greedy`).
    """
    from omnic.runtime.generate import greedy

    embeddings = {c: np.asarray(encoders[c](inputs[c]), dtype=np.float32)[0] for c in inputs}
    spliced = SplicingRunner(runner, {ids[c]: embeddings[c] for c in embeddings})
    tokens, logits = greedy(spliced, list(prompt), steps, stop_ids=stop_ids, vocab=vocab)
    actions = None
    if action_head is not None:
        if spliced.prompt_hidden is None:
            raise PromptError("the decoder does not expose its last hidden state; the action "
                              "head cannot run")
        actions = np.asarray(action_head(spliced.prompt_hidden[None]), dtype=np.float32)[0]
    return Result(tokens, logits, list(prompt), actions, embeddings)


class TorchEmbedsRunner:
    """The PyTorch reference as an `EmbedsRunner`: `Decoder.forward_embeds`, static KV cache."""

    def __init__(self, decoder: "torch.nn.Module") -> None:
        self.decoder = decoder
        self.context_length = decoder.config.context_length
        self.reset()

    def reset(self) -> None:
        self.k_cache, self.v_cache = self.decoder.empty_cache(batch=1)
        self.position = 0
        self.last_hidden = None

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        with torch.no_grad():
            return self.decoder.embed_tokens(ids)[0].float().numpy()

    def forward_embeds(self, embeds: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(embeds, dtype=np.float32))[None]
        t = x.shape[1]
        if self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens exceeds context_length "
                             f"{self.context_length}")
        pos = torch.arange(self.position, self.position + t, dtype=torch.int64)
        with torch.no_grad():
            logits, self.k_cache, self.v_cache, hidden = self.decoder.forward_embeds(
                x, pos, self.k_cache, self.v_cache, return_hidden=True)
        self.position += t
        self.last_hidden = hidden[0].numpy()
        return logits[0].float().numpy()


def torch_component_runner(module: "torch.nn.Module") -> Callable[[np.ndarray], np.ndarray]:
    """A component module (encoder, head) as run(x) -> y on numpy arrays."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(x, dtype=np.float32))).float().numpy()

    return run
