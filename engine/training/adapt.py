"""Adapt a converted Gemma 3 (engine/gemma3.py) to block diffusion, on one CPU core, resumably.

The converted weights already make the causal encoder a good left-to-right model of code; what
the decoder lacks is predicting the token at its own canvas position (DiffusionGemma has no
shift) from a noisy canvas with the prefix tail and suffix head visible both ways. We train:
low-rank deltas (LoRA) on the attention and MLP projections the mapping left at their natural
scale, the decoder's layer scalars, and the self-conditioning block. Embeddings, norms and the
mapping's special weights (the tiny / widened value paths, the zero MoE branch) stay frozen;
`--value-deltas 1` gives the sliding layers' tiny value paths deltas at their own scale.

Each row is `bos + 512 tokens` of corpus text. The encoder reads it with its next-token loss (the
deltas are shared with it: without that loss the encoder decays, and with it the prompt KV the
canvases attend to); K canvas slots attach along the row, each the engine's inference canvas (engine/infill.py):
clamped prefix tail | hole = middle then fillers | clamped suffix head (+ eos when the row ends),
noised in the hole with uniform tokens at a rate t ~ U(0, 1); some slots are plain continuation
blocks. Loss per hole position: cross-entropy to the clean token (fillers down-weighted) plus a
distillation term at noised positions, KL(encoder's next-token distribution at j-1 || decoder at
j): the pretrained model's own belief is a far richer target per token than one id (at a clean
position the target is the visible token itself, so the prefix-only teacher would pull the wrong way). Self-conditioning half the time.
`--point-holes N` adds N one-token holes a row at random positions, each reading the row's encoder
keys before it (the decoder's left neighbour in the KV cache: the case it learns fastest).

    python -m engine.training.adapt --base runs/gemma3-32k --out runs/adapt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from functools import partial
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import load_model, save_model
from ..config import GenerationConfig
from ..gemma3 import apply_adapter, delta_targets, frozen_by_mapping
from ..model import DiffusionGemma
from ..tokenizer import Tokenizer
# Rows: Gemma's pad/eos/bos are 0/1/2, as train.py's
from .train import Rows, adam_tensors, decoder_masks, masked_attention, run_decoder, run_encoder

log = logging.getLogger("dgemma.adapt")

DELIMITERS = ("\n", ",", ":", "|", "(", ")", "=", "[", "]", "{", "}")


@dataclass
class AdaptConfig:
    base: str = "runs/gemma3-32k"  # the converted checkpoint (trimmed vocabulary, tokenizer.json beside it)
    corpus: str = "data/corpus"
    out: str = "runs/adapt"
    init_adapter: str = ""  # an adapter.safetensors to start from when `out` has no state (a committed one)
    seq_len: int = 512
    slots: int = 8  # canvases per row (each its own decoder row)
    canvas: int = 80
    batch: int = 1
    rank: int = 32
    lr: float = 2e-4
    sc_lr: float = 1e-3
    scalar_lr: float = 2e-2  # the decoder's layer scalars: decoder-only, so free to move fast (~O(10) is useful)
    # > 0: also train each block's output gain (post_attention_layernorm, post_feedforward_layernorm),
    # which bounds how far one layer can move a position's residual (shared with the encoder)
    norm_lr: float = 0.0
    # 1: sliding layers' value projections get deltas too (at the mapping's tiny scale): without,
    # what a layer can copy from another position is fixed to Gemma's own values
    value_deltas: int = 0
    min_lr_ratio: float = 0.1
    warmup: int = 40
    total_steps: int = 20_000
    weight_decay: float = 0.0
    plain_prob: float = 0.15
    draft_prob: float = 0.4  # inline slots whose hole holds the encoder's own draft instead of noise
    max_middle: int = 48
    max_tail: int = 24
    max_head: int = 40
    self_cond_prob: float = 0.25
    # inline noise slots whose noise rate is drawn from U(0, low_noise_max) instead of U(0, 1):
    # mostly single hidden tokens between visible ones, the case where the answer is the left
    # context's next-token belief (what the decoder must learn to read from position j-1) and
    # the case the engine's decoding meets once a step has accepted the hole's first positions
    low_noise_prob: float = 0.0
    low_noise_max: float = 0.25
    filler_weight: float = 0.2
    # > 0: at a hidden middle position j, the decoder's residual after each layer in `align_layers`
    # is pulled (MSE, each dimension standardised by the teacher's statistics) towards the teacher
    # encoder's at j-1: a dense, per-layer target for what the position has to carry (its left
    # neighbour's next-token belief), which the decoder at a noise token does not hold at all before
    # training (a linear probe reads 0.02-0.05 of it from the base decoder at j, 0.36-0.40 from the
    # encoder at j-1). Run 16: no difference from run 10 in 50 steps (stopped)
    align_weight: float = 0.0
    align_layers: str = "8,11,14"
    # > 0: this many one-token holes per row besides the slots, at random row positions p: the
    # decoder reads the row's encoder keys before p and one noise token at p, and predicts the
    # token at p (cross-entropy + the teacher's distillation at p-1), all packed in one decoder row.
    # The hole whose left neighbour is in the KV cache is the case the decoder reads best (run 10
    # step 669: 0.27 of first positions right, against 0.08 where the neighbour is a visible canvas
    # token), and the slots hold only a few of it a row; this makes every row hundreds of them.
    point_holes: int = 0
    point_weight: float = 1.0
    # > 0: this share of the slots is laid out as committing infilling meets it (GenerationConfig
    # .commit_hole / commit_head): no prefix tail (the left neighbour is in the KV cache), a hole of
    # `commit_hole` positions, all noise, holding what is left of the middle (0 to commit_hole tokens;
    # 0: the middle is done and the hole is all fillers, the stop signal) then fillers, and the
    # suffix's next `commit_head` tokens clamped. The first position (the one committed) weighs 1
    # even as a filler; not distilled (the teacher does not see the suffix, which is the point)
    commit_prob: float = 0.0
    commit_hole: int = 16
    commit_head: int = 32
    distill_weight: float = 1.0
    encoder_weight: float = 1.0  # the encoder's next-token loss (0: encoder without gradient)
    encoder_kl_weight: float = 2.0  # KL(base encoder || adapted encoder): keeps the shared weights' causal model
    # > 0: the encoder's losses (next-token, KL to the base) get their own AdamW moments at this lr.
    # In one optimizer their gradient (~10x the decoder's at KL weight 100, measured on run 6's
    # step 1308) sets the scale Adam divides every update by, which throttles the decoder's (0: one
    # optimizer for the sum)
    encoder_lr: float = 0.0
    seed: int = 0
    start_doc: int = 0
    checkpoint_minutes: float = 15.0
    max_minutes: float = 600.0


# ---- low-rank deltas -------------------------------------------------------------------------


class LowRankLinear(nn.Module):
    """x -> x W^T + scale * (x A^T) B^T: a frozen projection plus a trained low-rank delta, kept
    apart (a bf16 W + BA would round small deltas away); B starts at zero, so training starts at
    the base. `engine.gemma3.apply_adapter` folds it into W for the engine."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, seed: int):
        super().__init__()
        out_f, in_f = base.weight.shape
        g = torch.Generator().manual_seed(seed)
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, in_f, generator=g) * in_f**-0.5)
        self.B = nn.Parameter(torch.zeros(out_f, rank))
        self.scale = scale
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale


class base_weights:
    """Run the model without its deltas: the converted base, the teacher the adaptation keeps."""

    def __init__(self, model: DiffusionGemma):
        self.deltas = [m for m in model.modules() if isinstance(m, LowRankLinear)]

    def __enter__(self):
        for d in self.deltas:
            d.enabled = False

    def __exit__(self, *exc):
        for d in self.deltas:
            d.enabled = True


def adapted_linears(model: DiffusionGemma, values: bool = False) -> dict[str, tuple[nn.Module, str, float]]:
    """Projections that get deltas: name -> (owner module, attribute, scale), from engine.gemma3.delta_targets."""
    out = {}
    for name, scale in delta_targets(model.config, values).items():
        owner_name, attr = name.rsplit(".", 1)
        out[name] = (model.get_submodule(owner_name), attr, scale)
    return out


def add_deltas(model: DiffusionGemma, rank: int, seed: int = 0, values: bool = False) -> dict[str, LowRankLinear]:
    deltas = {}
    for k, (name, (owner, attr, scale)) in enumerate(adapted_linears(model, values).items()):
        wrapped = LowRankLinear(getattr(owner, attr), rank, scale, seed * 7919 + k)
        setattr(owner, attr, wrapped)
        deltas[name] = wrapped
    return deltas


GAINS = ("post_attention_layernorm", "post_feedforward_layernorm")  # --norm-lr: the blocks' output gains


def dense_trainables(model: DiffusionGemma, gains: bool = False) -> dict[str, nn.Parameter]:
    """Trained in full: the self-conditioning block and the decoder's layer scalars (and with
    `gains` the blocks' output norms)."""
    out = {n: p for n, p in model.named_parameters() if n.startswith("sc_")}
    out.update({f"layers.{i}.decoder_scalar": layer.decoder_scalar for i, layer in enumerate(model.layers)})
    if gains:
        out.update({f"layers.{i}.{g}.weight": getattr(layer, g).weight for i, layer in enumerate(model.layers)
                    for g in GAINS})
    return out


def is_gain(name: str) -> bool:
    """`layers.<i>.<gain>.weight` for a gain in GAINS (not post_feedforward_layernorm_1 / _2)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in GAINS


def is_value_delta(name: str) -> bool:
    """A sliding layer's v_proj delta (`--value-deltas`), by its adapter name."""
    return ".v_proj." in name


def trained_parameters(model: DiffusionGemma, deltas: dict[str, LowRankLinear]) -> dict[str, nn.Parameter]:
    """Every trained tensor by its adapter name: `<target>.lora_A/B` and the dense ones."""
    gains = model.layers[0].post_attention_layernorm.weight.requires_grad
    return {**{f"{n}.lora_A": d.A for n, d in deltas.items()}, **{f"{n}.lora_B": d.B for n, d in deltas.items()},
            **dense_trainables(model, gains)}


def adapter_tensors(model: DiffusionGemma, deltas: dict[str, LowRankLinear]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in trained_parameters(model, deltas).items()}


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, S + 1)
    canvas: torch.Tensor  # (B, K * C) noised
    targets: torch.Tensor  # (B, K * C) clean
    weight: torch.Tensor  # (B, K * C) loss weight (0: not scored)
    teacher_pos: torch.Tensor  # (B, K * C) encoder position whose next-token logits predict the target, -1: none
    draft_pos: torch.Tensor  # (B, K * C) encoder position whose greedy next token seeds the canvas here, -1: none
    noised: torch.Tensor  # (B, K * C) positions holding a noise token (the only ones distilled)
    valid: torch.Tensor  # (B, K * C)
    attach: torch.Tensor  # (B, K)
    committed: torch.Tensor | None = None  # (B, K * C) bool: a commit slot's first position


def delimiter_mask(tok: Tokenizer, vocab: int) -> torch.Tensor:
    return torch.tensor([any(d in tok.token_text(i).replace("▁", " ") for d in DELIMITERS) for i in range(vocab)])


def newline_mask(tok: Tokenizer, vocab: int) -> torch.Tensor:
    return torch.tensor(["\n" in tok.token_text(i) for i in range(vocab)])


def middle_length(window: torch.Tensor, ac: AdaptConfig, delims: torch.Tensor, rng: random.Random) -> int:
    """Hole lengths favour a line or a span between delimiters; otherwise geometric."""
    if rng.random() < 0.7:
        stops = torch.nonzero(delims[window]).flatten().tolist()
        if len(stops) >= 2:
            i = rng.randrange(len(stops) - 1)
            j = min(len(stops) - 1, i + rng.choice([1, 1, 1, 2, 3]))
            m = stops[j] - stops[i]
            if 1 <= m <= ac.max_middle:
                return m
    return max(1, min(ac.max_middle, round(rng.expovariate(4 / ac.max_middle))))


def make_batch(rows: list[list[int]], ac: AdaptConfig, vocab: int, filler: int, eos: int, pad: int,
               delims: torch.Tensor, rng: random.Random, gen: torch.Generator,
               newlines: torch.Tensor | None = None) -> Batch:
    B, S, C, K = len(rows), ac.seq_len, ac.canvas, ac.slots
    tokens = torch.tensor(rows)  # (B, S + 1)
    canvas = torch.full((B, K * C), pad)
    targets = torch.full((B, K * C), pad)
    weight = torch.zeros(B, K * C)
    teacher = torch.full((B, K * C), -1)
    drafted = torch.full((B, K * C), -1)
    noised = torch.zeros(B, K * C, dtype=torch.bool)
    valid = torch.zeros(B, K * C, dtype=torch.bool)
    attach = torch.zeros(B, K, dtype=torch.long)
    committed = torch.zeros(B, K * C, dtype=torch.bool)
    stride = S // K
    for b in range(B):
        row = tokens[b]
        for k in range(K):
            lo = k * C
            s = 1 + k * stride + rng.randrange(max(1, stride - C // 2))  # the slot's first position in the row
            s = min(s, S + 1 - 8)
            attach[b, k] = s
            commit = False
            if ac.commit_prob and rng.random() < ac.commit_prob:  # as Engine._infill_committing decodes
                inline = commit = True
                a, h = 0, s
                hole = min(ac.commit_hole, C - 1)
                m = 0 if rng.random() < 0.15 else min(middle_length(row[h: h + C], ac, delims, rng), hole, S + 1 - h)
                bh = min(ac.commit_head, C - hole, S + 1 - (h + m))
                ends = (h + m + bh >= S + 1) and C - hole > bh
                clean = torch.cat([row[h: h + m], torch.full((hole - m,), filler), row[h + m: h + m + bh],
                                   torch.tensor([eos] if ends else [], dtype=torch.long)])
                n = len(clean)
                known = torch.ones(n, dtype=torch.bool)
                known[:hole] = False
                w = torch.zeros(n)
                w[:m] = 1.0
                w[m:hole] = ac.filler_weight
                w[0] = 1.0
                tpos = torch.full((n,), -1)
                committed[b, lo] = True
            elif rng.random() < ac.plain_prob:  # continuation block: every position noised
                inline = False
                n = min(C, S + 1 - s)
                clean = row[s: s + n]
                known = torch.zeros(n, dtype=torch.bool)
                tpos = torch.arange(s - 1, s - 1 + n)
                w = torch.ones(n)
            else:
                inline = True
                a = min(rng.randint(0, ac.max_tail), S + 1 - s - 1)
                h = s + a  # hole start in the row
                m = min(middle_length(row[h: h + C], ac, delims, rng), S + 1 - h)
                hole = m + rng.randint(0, max(0, min(ac.max_middle, C - a - 1) - m))  # middle then fillers
                hole = max(hole, m)
                room = C - a - hole
                bmax = min(ac.max_head, room, S + 1 - (h + m))
                bh = rng.randint(0, max(0, bmax)) if rng.random() < 0.3 else max(0, bmax)
                head = row[h + m: h + m + bh]
                ends = (h + m + bh >= S + 1) and room > bh  # the row (our "document") ends: clamped eos
                clean = torch.cat([row[s:h], row[h: h + m], torch.full((hole - m,), filler), head,
                                   torch.tensor([eos] if ends else [], dtype=torch.long)])
                n = len(clean)
                known = torch.ones(n, dtype=torch.bool)
                known[a: a + hole] = False
                w = torch.zeros(n)
                w[a: a + m] = 1.0
                w[a + m: a + hole] = ac.filler_weight
                # the encoder's next-token belief for the middle (the fillers have none)
                tpos = torch.full((n,), -1)
                tpos[a: a + m] = torch.arange(h - 1, h - 1 + m)
            n = len(clean)
            shown = clean
            t = rng.random()
            if commit:
                t = 1.0  # the committing canvas: every hole position is fresh noise
            elif inline and newlines is not None and rng.random() < ac.draft_prob:
                # what Engine.draft seeds (GenerationConfig.encoder_draft): the encoder's greedy
                # tokens from the hole's start to the first newline, then fillers; where the true
                # middle is shorter the draft runs on over the suffix's text, which the decoder must
                # turn into fillers by seeing the suffix. Teacher-forced here (losses() fills the
                # argmax in); some of it renoised, as the engine renoises what a step does not accept.
                span = row[h: h + hole]
                ends = torch.nonzero(newlines[span]).flatten()
                length = min(hole, int(ends[0]) + 1) if len(ends) else hole
                length = min(length, S + 1 - h)
                dpos = torch.full((n,), -1)
                dpos[a: a + length] = torch.arange(h - 1, h - 1 + length)
                drafted[b, lo: lo + n] = dpos
                shown = clean.clone()  # past the draft the engine's hole holds fillers, not the true middle
                shown[a + length: a + hole] = filler
                t *= 0.3
            elif inline and ac.low_noise_prob and rng.random() < ac.low_noise_prob:
                t *= ac.low_noise_max
            noisy = torch.randint(0, vocab, (n,), generator=gen)
            replace = (torch.rand(n, generator=gen) < t) & ~known
            canvas[b, lo: lo + n] = torch.where(replace, noisy, shown)
            noised[b, lo: lo + n] = replace
            targets[b, lo: lo + n] = clean
            weight[b, lo: lo + n] = w
            teacher[b, lo: lo + n] = tpos
            drafted[b, lo: lo + n] = torch.where(replace, -1, drafted[b, lo: lo + n])
            valid[b, lo: lo + n] = True
    return Batch(tokens, canvas, targets, weight, teacher, drafted, noised, valid, attach, committed)


# ---- loss ---------------------------------------------------------------------------------------


class layer_outputs:
    """Record the residual after each of the given layers while the context is open: {layer: (.., T, H)}."""

    def __init__(self, model: DiffusionGemma, layers: list[int]):
        self.model, self.layers, self.out = model, layers, {}

    def __enter__(self):
        self.hooks = [self.model.layers[i].register_forward_hook(
            lambda m, a, o, i=i: self.out.__setitem__(i, o)) for i in self.layers]
        return self.out

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def decode_slots(model: DiffusionGemma, canvas: torch.Tensor, attach: torch.Tensor, valid: torch.Tensor,
                 enc_kv, soft: torch.Tensor | None) -> torch.Tensor:
    """Every slot as its own row: canvas (B, K*C) -> hidden (B*K, C, H). Slot k of row b sees the
    row's encoder keys before attach[b, k] (the last window-1 of them on sliding layers) and its
    own valid canvas positions, as the engine's decoder sees a prompt's cache and its canvas."""
    B, K = attach.shape
    C = canvas.shape[1] // K
    S = enc_kv[0][0].shape[2]
    W = model.config.sliding_window
    slots = canvas.reshape(B * K, C)
    start = attach.reshape(B * K, 1)
    positions = start + torch.arange(C)  # (B*K, C)
    j = torch.arange(S)[None]
    enc_full = j < start  # (B*K, S)
    enc_slide = enc_full & (j > start - W)
    own = valid.reshape(B * K, 1, C) | torch.eye(C, dtype=torch.bool)[None]  # padded queries see themselves
    masks = {sliding: torch.cat([enc[:, None, :].expand(-1, C, -1), own], -1)[:, None]  # (B*K, 1, C, S + C)
             for sliding, enc in ((False, enc_full), (True, enc_slide))}
    expanded = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v in enc_kv]

    def attend(i, spec, q, k, v):
        ek, ev = expanded[i]
        return masked_attention(q, torch.cat([ek, k], 2), torch.cat([ev, v], 2), masks[spec.sliding])

    x = model.self_condition(model.embed_tokens(slots), soft)
    return model.run(x, positions, attend, decoder=True)


def decode_points(model: DiffusionGemma, noise: torch.Tensor, at: torch.Tensor, enc_kv) -> torch.Tensor:
    """One-token holes packed in one decoder row: noise (B, P) tokens at row positions at (B, P) ->
    hidden (B, P, H). Hole i sees the row's encoder keys before at[i] (the last window-1 of them on
    sliding layers) and itself: what the engine's decoder computes for a one-position canvas
    attached after a prompt of at[i] tokens (train.py's packed slots, each one position wide)."""
    masks = decoder_masks(at, torch.ones_like(at, dtype=torch.bool), enc_kv[0][0].shape[2], 1,
                          model.config.sliding_window)
    return run_decoder(model, noise, at, enc_kv, masks, None)


def point_losses(model: DiffusionGemma, batch: Batch, ac: AdaptConfig, enc_kv, teacher) -> dict[str, torch.Tensor]:
    """`point_holes` one-token holes per row (decode_points): cross-entropy to the row's token there
    and KL(the base's next-token distribution at p-1 || decoder at p)."""
    B, S = batch.tokens.shape[0], batch.tokens.shape[1] - 1
    g = torch.Generator().manual_seed(int(batch.tokens.sum()))  # fixed per row, like the slots' noise
    at = torch.stack([1 + torch.randperm(S - 1, generator=g)[: ac.point_holes] for _ in range(B)]).sort(-1).values
    noise = torch.randint(0, model.config.vocab_size, at.shape, generator=g)
    logits = model.logits(decode_points(model, noise, at, enc_kv)).float().reshape(-1, model.config.vocab_size)
    rows = torch.arange(B)[:, None].expand_as(at).reshape(-1)
    target = batch.tokens[:, :-1][rows, at.reshape(-1)]
    ce = F.cross_entropy(logits, target)
    kl = F.kl_div(F.log_softmax(logits, -1), teacher(rows, at.reshape(-1) - 1), log_target=True,
                  reduction="batchmean")
    # accuracy as the engine reads it: a noised position never keeps its noise token (ignore_noise_tokens)
    guess = logits.detach().scatter(-1, noise.reshape(-1, 1), float("-inf")).argmax(-1)
    return {"point_ce": ce, "point_kl": kl, "point_acc": (guess == target).float().mean()}


def losses(model: DiffusionGemma, batch: Batch, ac: AdaptConfig, self_condition: bool) -> dict[str, torch.Tensor]:
    ids = batch.tokens[:, :-1]
    B = ids.shape[0]
    ar = None
    # the teacher is the converted base (the deltas off): its next-token beliefs are the targets
    # the decoder distils and the adapted encoder is held to, and its greedy tokens are the drafts
    align = [int(i) for i in ac.align_layers.split(",")] if ac.align_weight else []
    with torch.no_grad(), base_weights(model), layer_outputs(model, align) as teacher_layers:
        hidden, _ = run_encoder(model, ids)
        hidden = hidden.detach()
        base_logp = F.log_softmax(model.logits(hidden).float(), -1) if ac.encoder_kl_weight else None
    if ac.encoder_weight or ac.encoder_kl_weight:
        # the deltas are shared with the encoder (one weight set): its losses keep it the
        # left-to-right model the prompt cache, the encoder draft and the causal baseline rely on
        # (run 1, without: blank lines within 150 steps; run 3, with the next-token loss alone:
        # the causal baseline fell from 27/100 to 11/100 in 170 steps)
        adapted, enc_kv = run_encoder(model, ids)
        ar_logits = model.logits(adapted).float()
        ar = ac.encoder_weight * F.cross_entropy(ar_logits.reshape(-1, ar_logits.shape[-1]),
                                                 batch.tokens[:, 1:].reshape(-1))
        if base_logp is not None:
            enc_kl = F.kl_div(F.log_softmax(ar_logits, -1).reshape(-1, ar_logits.shape[-1]),
                              base_logp.reshape(-1, base_logp.shape[-1]), log_target=True, reduction="batchmean")
            ar = ar + ac.encoder_kl_weight * enc_kl
    else:
        with torch.no_grad():
            _, enc_kv = run_encoder(model, ids)
            enc_kv = [(k.detach(), v.detach()) for k, v in enc_kv]

    @torch.no_grad()
    def teacher(rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The base's next-token log-probabilities at encoder positions: taken from base_logp
        when the encoder KL computed it for every position, else computed for these alone."""
        if base_logp is not None:
            return base_logp[rows, positions]
        return F.log_softmax(model.logits(hidden[rows, positions]).float(), -1)

    seeded = batch.draft_pos >= 0
    if seeded.any():  # the draft slots' canvases: the encoder's own greedy tokens (teacher-forced)
        rows = torch.arange(B)[:, None].expand_as(seeded)[seeded]
        batch.canvas = batch.canvas.masked_scatter(seeded, teacher(rows, batch.draft_pos[seeded]).argmax(-1))
    w = batch.weight.reshape(-1)
    sel = w > 0  # logits only where a target is scored: the vocabulary is the costly part
    tpos = batch.teacher_pos.reshape(-1)[sel]
    # the teacher sees the prefix only: distil where the canvas hides the token (a noised
    # position); where the clean token is visible, the target is to keep it, not the prefix's guess
    distill = (tpos >= 0) & batch.noised.reshape(-1)[sel]
    distill_rows = torch.arange(B)[:, None].expand_as(batch.teacher_pos).reshape(-1)[sel][distill]
    teacher_logp = None
    if ac.distill_weight and distill.any():
        teacher_logp = teacher(distill_rows, tpos[distill])
    soft = None
    if self_condition:
        with torch.no_grad():
            first = model.logits(decode_slots(model, batch.canvas, batch.attach, batch.valid, enc_kv, None))
            soft = model.soft_embedding(first.to(model.embed.weight.dtype)).detach()
    with layer_outputs(model, align) as decoder_layers:
        hid = decode_slots(model, batch.canvas, batch.attach, batch.valid, enc_kv, soft)
    logits = model.logits(hid.reshape(-1, hid.shape[-1])[sel]).float()  # (n, V)
    scored = batch.targets.reshape(-1)[sel]
    per_token = F.cross_entropy(logits, scored, reduction="none")
    ce = (per_token * w[sel]).sum() / w[sel].sum().clamp(min=1)
    out = {"ce": ce, "loss": ce}
    if teacher_logp is not None:
        kl = F.kl_div(F.log_softmax(logits[distill], -1), teacher_logp, log_target=True, reduction="batchmean")
        out["kl"] = kl
        out["loss"] = ce + ac.distill_weight * kl
    if align and distill.any():
        where = torch.nonzero(sel).flatten()[distill]  # flat decoder positions (B*K*C)
        terms = []
        for i in align:
            # standardised per dimension by the teacher's statistics over the rows: the residual's
            # few massive dimensions would otherwise make every position look alike
            t = teacher_layers[i].float().reshape(-1, hid.shape[-1])
            mean, std = t.mean(0), t.std(0)
            std = std.clamp(min=1e-2 * float(std.mean()))
            z = lambda h: (h.float() - mean) / std
            terms.append(F.mse_loss(z(decoder_layers[i].reshape(-1, hid.shape[-1])[where]),
                                    z(teacher_layers[i][distill_rows, tpos[distill]])))
        out["align"] = sum(terms) / len(terms)
        out["loss"] = out["loss"] + ac.align_weight * out["align"]
    if ac.point_holes:
        points = point_losses(model, batch, ac, enc_kv, teacher)
        out["loss"] = out["loss"] + ac.point_weight * (points["point_ce"] + ac.distill_weight * points["point_kl"])
        out.update({k: v if k in ("point_ce", "point_kl") else v.detach() for k, v in points.items()})
    if ar is not None:
        out["ar"] = ar
        out["loss"] = out["loss"] + ar
        if base_logp is not None:
            out["enc_kl"] = enc_kl.detach()
    middle = w[sel] == 1.0
    out["ce_middle"] = per_token[middle].mean().detach() if middle.any() else ce.detach()
    hidden_middle = batch.noised.reshape(-1)[sel] & middle
    if hidden_middle.any():  # a hidden token: right, or the one after it (the base's next-token habit)?
        slots = batch.targets.reshape(-1, batch.canvas.shape[1] // batch.attach.shape[1])
        following = torch.cat([slots[:, 1:], torch.full_like(slots[:, :1], -1)], 1)  # none past a slot's end
        guess = logits[hidden_middle].argmax(-1)
        out["acc_noise"] = (guess == scored[hidden_middle]).float().mean()
        out["next_noise"] = (guess == following.reshape(-1)[sel][hidden_middle]).float().mean()
    if batch.committed is not None and batch.committed.any():  # the position committing infilling keeps
        first = batch.committed.reshape(-1)[sel]
        out["commit_acc"] = (logits[first].argmax(-1) == scored[first]).float().mean()
        out["commit_ce"] = per_token[first].mean().detach()
    drafted = seeded.reshape(-1)[sel] & middle
    if drafted.any():  # how the decoder does on a draft, beside how good the draft was
        target = scored[drafted]
        out["ce_draft"] = per_token[drafted].mean().detach()
        out["acc_draft"] = (logits[drafted].argmax(-1) == target).float().mean()
        out["draft_right"] = (batch.canvas.reshape(-1)[sel][drafted] == target).float().mean()
    return out


# ---- loop ---------------------------------------------------------------------------------------


def lr_factor(step: int, ac: AdaptConfig, rewarm_from: int | None) -> float:
    f = (step + 1) / ac.warmup if step < ac.warmup else ac.min_lr_ratio + (1 - ac.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, (step - ac.warmup) / max(1, ac.total_steps - ac.warmup))))
    if rewarm_from is not None and step - rewarm_from < ac.warmup:
        f *= (step - rewarm_from + 1) / ac.warmup
    return f


def build(ac: AdaptConfig, gains: bool = False):
    """The converted base with deltas; the blocks' output gains trainable with --norm-lr (or `gains`)."""
    model, config, _, root = load_model(ac.base, dtype="bfloat16")  # frozen base in bf16; trained parts fp32
    tok = Tokenizer(root / "tokenizer.json", bos_id=config.bos_token_id, eos_ids=config.eos_ids,
                    pad_id=config.pad_token_id)
    model.requires_grad_(False)
    for layer in model.layers:
        layer.dense_experts = True  # one zero expert: two tiny GEMMs, no routing kernels under autograd
    deltas = add_deltas(model, ac.rank, ac.seed, values=bool(ac.value_deltas))
    dense = dense_trainables(model, gains or ac.norm_lr > 0)
    for p in dense.values():
        p.data = p.data.float()
    for p in [*dense.values(), *(q for d in deltas.values() for q in (d.A, d.B))]:
        p.requires_grad_(True)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    delta_factors = {f"{n}.{ab}" for n, d in model.named_modules() if isinstance(d, LowRankLinear) for ab in "AB"}
    assert not any((frozen_by_mapping(n) and n not in delta_factors) or n.endswith("base.weight") for n in trained), \
        "a frozen weight is trainable"
    assert len(trained) == 2 * len(deltas) + len(dense)
    model.train()
    return model, tok, deltas, dense


def save_state(out: Path, model, deltas, optimizer, state: dict, ac: AdaptConfig, encoder_optimizer=None):
    out.mkdir(parents=True, exist_ok=True)
    weights = adapter_tensors(model, deltas)
    tmp = out / "state.safetensors.tmp"
    params = trained_parameters(model, deltas)
    moments = adam_tensors(optimizer, params, state)
    if encoder_optimizer is not None:
        moments.update({ENCODER_ADAM + k.removeprefix("adam."): v for k, v in
                        adam_tensors(encoder_optimizer, params, {}).items()})
    save_file({**weights, **moments}, str(tmp))
    tmp.replace(out / "state.safetensors")
    adapter = {k: v.to(torch.bfloat16) if k.endswith(("lora_A", "lora_B")) else v for k, v in weights.items()}
    save_file(adapter, str(out / "adapter.safetensors.tmp"), metadata={"rank": str(ac.rank)})
    (out / "adapter.safetensors.tmp").replace(out / "adapter.safetensors")
    (out / "state.json").write_text(json.dumps({"config": asdict(ac), **state}, indent=2))


ENCODER_ADAM = "adam_encoder."  # the encoder optimizer's moments in state.safetensors (--encoder-lr)


def load_adapter_into(model, deltas, tensors: dict[str, torch.Tensor], optimizer=None, adam_step: float = 0.0,
                      encoder_optimizer=None):
    with torch.no_grad():
        for name, p in trained_parameters(model, deltas).items():
            if name not in tensors and (is_gain(name) or is_value_delta(name)):
                continue  # an adapter trained without --norm-lr / --value-deltas: the base's gain, a zero delta
            p.copy_(tensors[name].to(p.dtype))
            for opt, prefix in ((optimizer, "adam."), (encoder_optimizer, ENCODER_ADAM)):
                if opt is not None and f"{prefix}{name}.exp_avg" in tensors:
                    opt.state[p] = {"step": torch.tensor(adam_step), "exp_avg": tensors[f"{prefix}{name}.exp_avg"],
                                    "exp_avg_sq": tensors[f"{prefix}{name}.exp_avg_sq"]}


def update(parts: dict[str, torch.Tensor], optimizer, encoder_optimizer=None):
    """One optimizer step on the step's losses. With an encoder optimizer the encoder's losses
    (`parts["ar"]`) are differentiated apart and stepped by it: two sets of Adam moments over the
    shared deltas, each objective normalised by its own gradient's scale."""
    clipped = lambda opt: torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    optimizer.zero_grad(set_to_none=True)
    if encoder_optimizer is None or "ar" not in parts:
        parts["loss"].backward()
        clipped(optimizer)
        optimizer.step()
        return
    shared = [p for g in encoder_optimizer.param_groups for p in g["params"]]
    encoder_grads = torch.autograd.grad(parts["ar"], shared, retain_graph=True, allow_unused=True)
    (parts["loss"] - parts["ar"]).backward()
    clipped(optimizer)
    optimizer.step()
    for p, g in zip(shared, encoder_grads):  # the encoder's gradient, taken before that step
        p.grad = g
    clipped(encoder_optimizer)
    encoder_optimizer.step()


def train(ac: AdaptConfig):
    torch.manual_seed(ac.seed)
    out = Path(ac.out)
    model, tok, deltas, dense = build(ac)
    lora = [q for d in deltas.values() if d.scale >= 1 for q in (d.A, d.B)]
    # a delta applied at a tiny scale (the value paths) has gradients as tiny: Adam's eps scaled with
    # it, or eps would swamp them (Adam is otherwise blind to a gradient's scale)
    tiny = [q for d in deltas.values() if d.scale < 1 for q in (d.A, d.B)]
    tiny_eps = 1e-8 * min((d.scale for d in deltas.values()), default=1.0)
    scalars = [p for n, p in dense.items() if n.endswith("decoder_scalar")]
    gains = [p for n, p in dense.items() if is_gain(n)]
    sc_block = [p for n, p in dense.items() if n.startswith("sc_")]

    def group(params, lr, **extra):
        return {"params": params, "lr": lr, "base_lr": lr, **extra}

    adamw = partial(torch.optim.AdamW, betas=(0.9, 0.98), weight_decay=ac.weight_decay)
    groups = [group(lora, ac.lr), group(tiny, ac.lr, eps=tiny_eps), group(sc_block, ac.sc_lr),
              group(scalars, ac.scalar_lr)]
    if gains:
        groups.append(group(gains, ac.norm_lr))
    optimizer = adamw(groups)
    encoder_optimizer = None
    if ac.encoder_lr:  # the parameters the encoder's losses reach: the shared deltas (and gains)
        encoder_optimizer = adamw([group(lora + gains, ac.encoder_lr), group(tiny, ac.encoder_lr, eps=tiny_eps)])
    state = {"step": 0, "doc_index": ac.start_doc, "tokens": 0, "canvas_tokens": 0, "seconds": 0.0}
    if (out / "state.safetensors").exists():
        saved = json.loads((out / "state.json").read_text())
        load_adapter_into(model, deltas, load_file(str(out / "state.safetensors")), optimizer,
                          saved.get("adam_step", 0.0), encoder_optimizer)
        old = saved.pop("config")
        state = saved
        if (old.get("lr"), old.get("total_steps")) != (ac.lr, ac.total_steps):
            state["rewarm_from"] = state["step"]
        log.info("resumed %s at step %d", out, state["step"])
    elif ac.init_adapter:
        load_adapter_into(model, deltas, load_file(ac.init_adapter))
        state["rewarm_from"] = 0
        log.info("initialised from %s", ac.init_adapter)
    trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    log.info("trainable %.2fM of %.1fM parameters; %s", trainable / 1e6,
             sum(p.numel() for n, p in model.named_parameters()) / 1e6,
             json.dumps(asdict(ac)))
    rows = Rows(ac.corpus, tok, ac.seq_len, state["doc_index"])
    rng = random.Random(ac.seed * 1_000_003 + state["step"])
    gen = torch.Generator().manual_seed(ac.seed * 7 + state["step"])
    V = model.config.vocab_size
    delims = delimiter_mask(tok, V)
    newlines = newline_mask(tok, V)
    t_start = last_save = window_t = time.time()
    window, ema = [], None
    while state["step"] < ac.total_steps:
        step = state["step"]
        batch = make_batch([rows.next_row() for _ in range(ac.batch)], ac, V, tok.filler_id, tok.eos_ids[0],
                           tok.pad_id, delims, rng, gen, newlines)
        f = lr_factor(step, ac, state.get("rewarm_from"))
        for g in [*optimizer.param_groups, *(encoder_optimizer.param_groups if encoder_optimizer else [])]:
            g["lr"] = g["base_lr"] * f
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = losses(model, batch, ac, rng.random() < ac.self_cond_prob)
        update(parts, optimizer, encoder_optimizer)
        state["step"] += 1
        state["tokens"] += ac.batch * ac.seq_len
        state["canvas_tokens"] += int(batch.valid.sum())
        window.append({k: float(v.detach()) for k, v in parts.items()})
        ema = parts["ce_middle"].item() if ema is None else 0.98 * ema + 0.02 * parts["ce_middle"].item()
        if state["step"] % 10 == 0:
            now = time.time()
            mean = {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window)
                    for k in dict.fromkeys(k for w in window for k in w)}
            log.info("step %d %s ema_ce_middle %.3f lr x%.3f %.1f s/step", state["step"],
                     " ".join(f"{k} {v:.3f}" for k, v in mean.items()), ema, f, (now - window_t) / len(window))
            window, window_t = [], now
        elapsed = time.time() - t_start
        done = state["step"] >= ac.total_steps or elapsed > ac.max_minutes * 60
        if time.time() - last_save > ac.checkpoint_minutes * 60 or done:
            state["doc_index"] = rows.doc_index
            state["seconds"] = state.get("seconds", 0.0) + (time.time() - last_save)
            save_state(out, model, deltas, optimizer, state, ac, encoder_optimizer)
            log.info("checkpoint at step %d (%.2fM canvas tokens)", state["step"], state["canvas_tokens"] / 1e6)
            last_save = time.time()
    return model


@torch.no_grad()
def evaluate(ac: AdaptConfig, adapter: str | Path | None, rows: int = 24, seed: int = 1234) -> dict[str, float]:
    """The training losses on fixed held-out rows (the corpus's heldout split, fixed slots and
    noise): a gate between checkpoints far more sensitive than a 100-task pass@1. `adapter`
    None scores the converted base (zero deltas)."""
    torch.manual_seed(seed)
    tensors = load_file(str(adapter)) if adapter is not None else {}
    model, tok, deltas, _ = build(replace(ac, value_deltas=int(any(is_value_delta(k) for k in tensors))),
                                  gains=any(is_gain(k) for k in tensors))  # what the adapter was trained with
    model.eval()
    if tensors:
        load_adapter_into(model, deltas, tensors)
    source = Rows(ac.corpus, tok, ac.seq_len, 0, split="heldout")
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    delims, newlines = delimiter_mask(tok, V), newline_mask(tok, V)
    totals: dict[str, list[float]] = {}
    for _ in range(rows):
        batch = make_batch([source.next_row()], ac, V, tok.filler_id, tok.eos_ids[0], tok.pad_id, delims, rng, gen,
                           newlines)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = losses(model, batch, ac, self_condition=False)
        for k, v in parts.items():
            totals.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def export(base: str | Path, adapter: str | Path, dest: str | Path, *, steps: int | None = None,
           dtype: torch.dtype = torch.bfloat16) -> Path:
    """A plain checkpoint: the converted base with the adapter folded in (what the engine loads)."""
    model, config, gen, root = load_model(base, dtype="float32")
    apply_adapter(model, load_file(str(adapter)))
    if steps is not None:
        gen = GenerationConfig(**{**gen.__dict__, "max_denoising_steps": steps})
    dest = Path(dest)
    save_model(model, gen, dest, dtype=dtype)
    (dest / "tokenizer.json").write_bytes((root / "tokenizer.json").read_bytes())
    return dest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.training.adapt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    for f in AdaptConfig.__dataclass_fields__.values():
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    ex = sub.add_parser("export", help="fold an adapter into the base: a checkpoint the engine loads")
    ex.add_argument("adapter")
    ex.add_argument("dest")
    ex.add_argument("--steps", type=int, default=None)
    ev = sub.add_parser("evaluate", help="the losses on fixed held-out rows (a checkpoint gate)")
    ev.add_argument("adapter", nargs="?", default=None, help="adapter.safetensors (none: the converted base)")
    ev.add_argument("--rows", type=int, default=24)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "export":
        export(args.base, args.adapter, args.dest, steps=args.steps)
        return
    config = AdaptConfig(**{k: v for k, v in vars(args).items() if k in AdaptConfig.__dataclass_fields__})
    if args.command == "evaluate":
        print(json.dumps({"adapter": args.adapter, "rows": args.rows,
                          **{k: round(v, 4) for k, v in evaluate(config, args.adapter, args.rows).items()}}))
        return
    train(config)


if __name__ == "__main__":
    main()
