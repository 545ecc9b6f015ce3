"""Fill-in-the-middle for a model with no mask token: canvas inpainting with length control.

A hole of N noisy positions sits inside a canvas between the prefix's tail and the suffix's
head, which are clamped (never renoised, never overwritten, always visible to the
bidirectional decoder); the rest of the prefix is the encoder prompt. Length control: a
checkpoint whose tokenizer has a filler token was trained to end a middle with fillers
(delete them, keep the rest: one canvas serves every middle length up to N); for other
checkpoints several hole lengths are denoised as one batch and the most likely one wins.
Prompt-level FIM (`<|fim_prefix|>… <|fim_suffix|>… <|fim_middle|>`) is used when asked and
the tokenizer has FIM tokens. Knows token ids and the layout, not LSP or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CanvasPlan:
    prompt: list[int]  # encoder tokens before the canvas (starts with bos when the model has one)
    canvas: list[int]  # known tokens at clamped positions; hole positions hold a placeholder
    clamped: list[bool]
    hole: slice  # where the middle goes inside the canvas


def plan_canvas(prefix: list[int], suffix: list[int], hole: int, *, bos: int | None, eos: int | None,
                width: int, context: int = 32, tail: int | None = None) -> CanvasPlan:
    """Place a hole of `hole` positions in a canvas of at most `width`, between the prefix's tail
    and the suffix's head (each up to `context` tokens; room one side leaves unused goes to the other).

    `tail` fixes the prefix tail (plans sharing one prompt must agree on it). When the whole suffix
    fits, the document's end is marked with a clamped eos (as in training)."""
    room = max(0, width - hole - 1)
    a = min(len(prefix), context, max(room // 2, room - len(suffix))) if tail is None else min(len(prefix), tail)
    b = min(len(suffix), context, room - a)
    prompt = ([bos] if bos is not None else []) + prefix[: len(prefix) - a]
    end = [eos] if eos is not None and b == len(suffix) else []
    canvas = prefix[len(prefix) - a:] + [0] * hole + suffix[:b] + end
    clamped = [True] * a + [False] * hole + [True] * (b + len(end))
    return CanvasPlan(prompt, canvas, clamped, slice(a, a + hole))


def plan_fim(prefix: list[int], suffix: list[int], hole: int, *, bos: int | None, fim_prefix: int,
             fim_suffix: int, fim_middle: int) -> CanvasPlan:
    """Prompt-level FIM (PSM order): the whole canvas is the hole."""
    prompt = ([bos] if bos is not None else []) + [fim_prefix, *prefix, fim_suffix, *suffix, fim_middle]
    return CanvasPlan(prompt, [0] * hole, [False] * hole, slice(0, hole))


def candidate_lengths(max_middle: int, count: int = 4) -> list[int]:
    """Hole lengths to score together when the model has no filler token: geometric up to max_middle."""
    lengths, n = [], max_middle
    while n >= 1 and len(lengths) < count:
        lengths.append(n)
        n //= 2
    return sorted(set(lengths))


def extract_middle(tokens: torch.Tensor, *, filler: int | None, stop_ids: set[int]) -> list[int]:
    """The hole's tokens as a middle: fillers deleted wherever they are, cut at the first stop token."""
    out = []
    for t in tokens.tolist():
        if t in stop_ids:
            break
        if t != filler:
            out.append(t)
    return out


def stack_plans(plans: list[CanvasPlan], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-prompt plans of different hole lengths as one batch, right-padded with clamped pad tokens."""
    width = max(len(p.canvas) for p in plans)
    canvas = torch.full((len(plans), width), pad, dtype=torch.long, device=device)
    clamped = torch.ones((len(plans), width), dtype=torch.bool, device=device)
    for i, p in enumerate(plans):
        canvas[i, : len(p.canvas)] = torch.tensor(p.canvas, device=device)
        clamped[i, : len(p.clamped)] = torch.tensor(p.clamped, device=device)
    return canvas, clamped
