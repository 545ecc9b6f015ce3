"""Infilling end to end: a tiny model trained here on a toy pattern fills holes of any length."""

from __future__ import annotations

import random

import pytest
import torch

from engine.api import Engine
from engine.config import GenerationConfig
from engine.generate import denoise
from engine.infill import candidate_lengths, extract_middle, plan_canvas
from engine.model import DiffusionGemma, init_weights
from engine.sampler import CounterNoise
from engine.tokenizer import Tokenizer
from engine.training.bpe import train_tokenizer
from engine.training.train import TrainConfig, delimiter_ids, losses, make_batch, model_config

CYCLE = "abcdefghij"


@pytest.fixture(scope="module")
def toy_engine(tmp_path_factory):
    return train_toy_engine(tmp_path_factory.mktemp("toy"))


def train_toy_engine(path, steps: int = 600) -> Engine:
    """AdamW steps on an endless 'abcdefghij' cycle with the real training objective."""
    # 256 bytes + 9 specials: no merges, one character per token
    train_tokenizer([CYCLE * 20], vocab_size=265).save(str(path / "tokenizer.json"))
    tok = Tokenizer(path / "tokenizer.json", bos_id=2, eos_ids=[1], pad_id=0)
    tc = TrainConfig(seq_len=48, canvas=16, batch=16, max_middle=6, infill_prob=0.7, short_canvas_prob=0.3,
                     hidden_size=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate_size=128,
                     experts=2, top_k=1, moe_intermediate_size=64, sliding_window=32)
    torch.manual_seed(0)
    model = DiffusionGemma(model_config(tc, tok.vocab_size))
    init_weights(model, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rng = random.Random(0)
    delims = delimiter_ids(tok)
    for step in range(steps):
        rows = []
        for _ in range(tc.batch):
            start = rng.randrange(len(CYCLE))
            text = (CYCLE * 8)[start: start + tc.seq_len]
            rows.append([2] + tok.encode(text))
        batch = make_batch(rows, tc, model.config.vocab_size, delims, rng)
        diffusion_loss, ar_loss = losses(model, batch, tc, self_condition=step % 2 == 0)
        optimizer.zero_grad()
        (diffusion_loss + ar_loss).backward()
        optimizer.step()
    assert diffusion_loss.item() < 1.0, f"toy training did not converge: {diffusion_loss.item():.2f}"
    model.requires_grad_(False).eval()
    gen = GenerationConfig(max_denoising_steps=12, eos_token_id=[1], pad_token_id=0)
    return Engine(model, model.config, gen, tok, path)


@pytest.mark.parametrize("prefix,suffix,middle", [
    ("abcdefghijabcd", "hijabcdefg", "efg"),
    ("cdefghijabcdefgh", "bcdefghij", "ija"),
    ("abcdefghijab", "ghijabcd", "cdef"),
    ("abc", "efghij", "d"),
])
@pytest.mark.slow
def test_trained_tiny_model_fills_the_hole(toy_engine, prefix, suffix, middle):
    """A hole of the middle's length, clamped context on both sides, filled exactly."""
    best = toy_engine.infill(prefix, suffix, max_middle_tokens=len(middle), context_tokens=6)[0]
    assert best.text == middle


@pytest.mark.slow
def test_models_without_filler_score_several_hole_lengths(toy_engine, monkeypatch):
    """No filler token: holes of candidate_lengths are denoised as one batch, best score first.
    (At this toy budget every candidate is near-certain, so the order among them is not asserted.)"""
    monkeypatch.setattr(toy_engine.tokenizer, "filler_id", None)
    results = toy_engine.infill("abcdefghijab", "fghijabcd", max_middle_tokens=6, context_tokens=6)
    assert {r.hole for r in results} <= set(candidate_lengths(6))
    assert "cde" in [r.text for r in results if r.hole == 3]
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


@pytest.mark.slow
def test_clamped_positions_never_change_across_steps(toy_engine):
    tok = toy_engine.tokenizer
    plan = plan_canvas(tok.encode("abcdefgh"), tok.encode("cdefghij"), 5, bos=2, eos=1, width=16, context=5)
    known = torch.tensor([plan.canvas])
    clamped = torch.tensor([plan.clamped])
    cache = toy_engine.prefill(plan.prompt)
    noise = CounterNoise(toy_engine.config.vocab_size, seed=3)
    canvas = torch.where(clamped, known, noise.canvas(1, known.shape[1], "cpu"))
    drafts = []
    denoise(toy_engine.model, toy_engine.model.decoder_context(cache, 1), cache.length, canvas,
            toy_engine.generation, noise, clamped=clamped, on_step=drafts.append)
    assert len(drafts) >= 2
    for d in drafts:
        assert torch.equal(d.canvas[clamped], known[clamped]), f"step {d.step}: input canvas changed"
        assert torch.equal(d.argmax[clamped], known[clamped]), f"step {d.step}: output overwrote context"
        assert not d.accepted[clamped].any()


@pytest.mark.slow
def test_ignore_noise_tokens_never_predicts_the_noise_a_position_holds(toy_engine):
    """Positions holding fresh noise going into a step never get that token back, neither as argmax
    nor as an accepted sample; without the option the same model does copy it."""
    tok = toy_engine.tokenizer
    gen = GenerationConfig(**{**toy_engine.generation.__dict__, "ignore_noise_tokens": True})
    plan = plan_canvas(tok.encode("abcdefgh"), tok.encode("cdefghij"), 6, bos=2, eos=1, width=16, context=5)
    known, clamped = torch.tensor([plan.canvas]), torch.tensor([plan.clamped])
    cache = toy_engine.prefill(plan.prompt)
    noise = CounterNoise(toy_engine.config.vocab_size, seed=5)
    # the first "noise" is the true middle ("ijab" + 2 fillers): without the rule the model keeps it
    canvas = known.clone()
    canvas[0, plan.hole] = torch.tensor(tok.encode("ijab") + [tok.filler_id] * 2)
    context = toy_engine.model.decoder_context(cache, 1)
    control = []
    denoise(toy_engine.model, context, cache.length, canvas, toy_engine.generation,
            CounterNoise(toy_engine.config.vocab_size, seed=5), clamped=clamped, on_step=control.append)
    assert (control[0].argmax == canvas)[~clamped].any()
    drafts = []
    denoise(toy_engine.model, context, cache.length, canvas, gen, noise, clamped=clamped, on_step=drafts.append)
    inputs = [canvas] + [d.canvas for d in drafts[:-1]]
    noised = [~clamped] + [~clamped & ~d.accepted for d in drafts[:-1]]
    checked = 0
    for d, before, where in zip(drafts, inputs, noised):
        assert not (d.argmax == before)[where].any(), f"step {d.step}: a noise token was predicted"
        assert not (d.canvas == before)[where & d.accepted].any()
        checked += int(where.sum())
    assert checked >= 6
    assert GenerationConfig.from_hf_dict(gen.to_hf_dict()).ignore_noise_tokens is True
    assert "ignore_noise_tokens" not in toy_engine.generation.to_hf_dict()
    with pytest.raises(ValueError, match="ignore_noise_tokens"):
        GenerationConfig.from_hf_dict({"ignore_noise_tokens": "yes"})
    with pytest.raises(ValueError, match="ignore_noise_tokens"):
        GenerationConfig(ignore_noise_tokens=1)


@pytest.mark.slow
def test_a_trained_model_still_fills_holes_when_ignoring_noise_tokens(toy_engine, monkeypatch):
    monkeypatch.setattr(toy_engine.generation, "ignore_noise_tokens", True)
    assert toy_engine.infill("abcdefghijabcd", "hijabcdefg", max_middle_tokens=3, context_tokens=6)[0].text == "efg"


@pytest.mark.slow
def test_ignored_tokens_leave_entropy_finite_and_positions_accepted(toy_engine):
    """A -inf logit (an ignored noise token) adds 0 to a row's entropy: with 0 * -inf = nan, every
    noisy position's entropy was nan, the entropy bound accepted nothing and the last step's
    marginals wrote the whole hole. On every noise source's sampling op, then denoising on the CPU's."""
    from engine.sampler import TorchNoise, entropy

    logits = torch.tensor([[[2.0, 1.0, float("-inf"), 0.5]]])
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), -1)
    expected = -(p * p.log()).sum()
    canvas = torch.zeros(1, 1, dtype=torch.long)
    for noise in (TorchNoise(4, torch.Generator().manual_seed(0)), TorchNoise(4), CounterNoise(4, 0)):
        ent = noise.draws(1, canvas, None).sample(logits, None).entropy
        torch.testing.assert_close(ent[0, 0], expected)
    torch.testing.assert_close(entropy(logits)[0, 0], expected)

    tok = toy_engine.tokenizer
    gen = GenerationConfig(**{**toy_engine.generation.__dict__, "ignore_noise_tokens": True})
    plan = plan_canvas(tok.encode("abcdefgh"), tok.encode("cdefghij"), 6, bos=2, eos=1, width=16, context=5)
    known, clamped = torch.tensor([plan.canvas]), torch.tensor([plan.clamped])
    cache = toy_engine.prefill(plan.prompt)
    noise = TorchNoise(toy_engine.config.vocab_size, torch.Generator().manual_seed(0))
    canvas = torch.where(clamped, known, noise.canvas(1, known.shape[1], "cpu"))
    drafts = []
    denoise(toy_engine.model, toy_engine.model.decoder_context(cache, 1), cache.length, canvas, gen, noise,
            clamped=clamped, on_step=drafts.append)
    assert drafts[0].accepted.any(), "no position accepted at the first step"
    assert sum(int(d.accepted.sum()) for d in drafts) >= int((~clamped).sum())


def test_extract_middle_deletes_fillers_and_stops_at_eos():
    assert extract_middle(torch.tensor([5, 7, 6, 7, 1, 9]), filler=7, stop_ids={1}) == [5, 6]


def test_prompt_level_fim_mode(tmp_path):
    from engine.training.tiny import write_tiny_checkpoint

    engine = Engine.load(write_tiny_checkpoint(tmp_path / "ck"))
    results = engine.infill("def f(x):\n    return ", "\n", max_middle_tokens=8, mode="fim")
    assert results and all(isinstance(r.text, str) and r.hole == 8 for r in results)
    assert engine._cached_ids[-1] == engine.tokenizer.fim_middle_id


@pytest.mark.slow
def test_causal_baseline_continues_the_prefix_left_to_right(toy_engine):
    """The evaluation's autoregressive baseline: the same weights' encoder, greedy from the prefix
    alone (the toy was trained with the next-token loss too), stopping at max_middle_tokens."""
    from engine.training.evaluate import CausalBaseline

    baseline = CausalBaseline(toy_engine, one_line=True)
    best = baseline.infill("bcdefgh", "unseen suffix", max_middle_tokens=5)[0]
    assert best.text == "ijabc" and best.tokens == 5 and best.tokens_per_forward == 1.0
