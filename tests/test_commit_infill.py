"""Committing infilling (GenerationConfig.commit_hole): the engine's path for checkpoints whose
decoder reads cached states far better than canvas ones. Its token-by-token equality with a
fresh-cache recomputation is in tests/test_evaluate.py (eval-infilling --decoder commit runs it)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine import Cancelled, Engine, EngineError
from engine.config import GenerationConfig
from engine.errors import CheckpointError
from engine.training.tiny import write_tiny_checkpoint

PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def committing(tmp_path_factory):
    """A tiny checkpoint whose generation_config.json asks for committing infilling."""
    root = write_tiny_checkpoint(tmp_path_factory.mktemp("commit") / "ck")
    path = root / "generation_config.json"
    gen = json.loads(path.read_text())
    path.write_text(json.dumps({**gen, "commit_hole": 2, "commit_head": 3, "ignore_noise_tokens": True}))
    return root


def test_the_generation_config_carries_the_commit_layout(committing):
    engine = Engine.load(committing)
    assert (engine.generation.commit_hole, engine.generation.commit_head) == (2, 3)
    again = GenerationConfig.from_hf_dict(engine.generation.to_hf_dict())
    assert (again.commit_hole, again.commit_head) == (2, 3)
    assert "commit_hole" not in GenerationConfig().to_hf_dict()  # off: the file stays the reference's


@pytest.mark.parametrize("bad, message", [
    ({"commit_hole": -1}, "commit_hole must be an integer >= 0"),
    ({"commit_hole": 1.5}, "commit_hole must be an integer >= 0"),
    ({"commit_head": 4}, "commit_head needs commit_hole >= 1"),
    ({"commit_blind": True}, "commit_blind needs commit_hole >= 1"),
    ({"commit_hole": 2, "commit_blind": "yes"}, "commit_blind must be true or false"),
])
def test_a_bad_commit_layout_is_a_clear_load_error(committing, tmp_path, bad, message):
    root = tmp_path / "ck"
    shutil.copytree(committing, root)
    path = root / "generation_config.json"
    gen = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("commit_")}
    path.write_text(json.dumps({**gen, **bad}))
    with pytest.raises(CheckpointError, match=f"generation_config.json: {message}"):
        Engine.load(root)


def test_one_candidate_is_the_greedy_middle_and_counts_its_passes(committing):
    engine = Engine.load(committing)
    fills = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6)
    assert len(fills) == 1
    fill = fills[0]
    assert fill.hole == 2 and fill.tokens <= 6 and fill.steps in (fill.tokens, fill.tokens + 1)
    assert fill.tokens_per_forward == pytest.approx(fill.tokens / fill.steps)
    assert fill.score < 0


def test_candidates_branch_on_the_first_token_then_go_on_greedily(committing):
    """The i-th candidate starts with the first pass's i-th likeliest token, in that order; the
    first is the single greedy middle exactly (its noise drawn on from the same generator state)."""
    engine = Engine.load(committing)
    greedy = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6)[0]
    fills = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6, num_candidates=3)
    texts = [f.text for f in fills]
    assert 2 <= len(fills) <= 3 and len(set(texts)) == len(texts) and texts[0] == greedy.text
    assert all(f.steps == f.tokens or f.steps == f.tokens + 1 for f in fills)


def test_the_cache_keeps_the_middle_and_the_next_request_reencodes_only_what_changed(committing):
    engine = Engine.load(committing)
    tok = engine.tokenizer
    first = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6)[0]
    prompt = [tok.bos_id] + tok.encode(PREFIX)
    assert first.tokens >= 2
    # the cache holds the middle but its last token (committed with the next pass, which never ran)
    assert engine._cached_ids[: len(prompt)] == prompt and len(engine._cached_ids) == len(prompt) + first.tokens - 1
    before = engine.encoded_tokens
    again = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6)[0]
    # the prompt was reused: re-encoded are its last token (with the first pass, as always) and the middle
    assert engine.encoded_tokens - before == 1 + first.tokens - 1
    assert again.text == first.text == Engine.load(committing).infill(PREFIX, SUFFIX, max_middle_tokens=6)[0].text


def test_cancelling_mid_fill_leaves_the_engine_consistent(committing):
    engine = Engine.load(committing)
    calls = []

    def stop_on_third() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        engine.infill(PREFIX, SUFFIX, max_middle_tokens=6, should_stop=stop_on_third)
    assert len(calls) == 3
    after = engine.infill(PREFIX + "a", SUFFIX, max_middle_tokens=6)[0]
    assert after.text == Engine.load(committing).infill(PREFIX + "a", SUFFIX, max_middle_tokens=6)[0].text


def test_each_pass_streams_the_middle_so_far(committing):
    engine = Engine.load(committing)
    seen: list[tuple[int, str]] = []
    fill = engine.infill(PREFIX, SUFFIX, max_middle_tokens=5, on_step=lambda step, text: seen.append((step, text)))[0]
    assert [step for step, _ in seen] == list(range(1, fill.tokens + 1))
    assert seen[-1][1] == fill.text and all(fill.text.startswith(text) for _, text in seen)


def newline_at(engine, passes: set[int]):
    """The real model, its logits pushed to the newline token on the given passes (1-based)."""
    newline = engine.tokenizer.encode("\n")
    assert len(newline) == 1
    real, count = engine.model.logits, [0]

    def logits(*args, **kwargs):  # one call a pass in committing decoding
        count[0] += 1
        out = real(*args, **kwargs)
        if count[0] in passes:
            out[..., newline[0]] = out.max() + 100
        return out

    engine.model.logits = logits
    return count


@pytest.mark.parametrize("passes, tokens", [({3}, 3), ({1, 4}, 4)])
def test_one_line_stops_at_the_end_of_the_first_non_blank_line(committing, passes, tokens):
    engine = Engine.load(committing)
    free = engine.infill(PREFIX, SUFFIX, max_middle_tokens=8)[0]
    newline_at(engine, passes)
    line = engine.infill(PREFIX, SUFFIX, max_middle_tokens=8, one_line=True)[0]
    assert line.tokens == tokens and line.text.strip() and "\n" not in line.text.lstrip()
    if free.tokens == 8:  # without one_line, the same newline does not stop it
        newline_at(engine, passes)
        assert engine.infill(PREFIX, SUFFIX, max_middle_tokens=8)[0].tokens == 8


def test_a_layout_wider_than_the_canvas_is_a_clear_error(committing):
    engine = Engine.load(committing)
    engine.generation.commit_hole = engine.config.canvas_length
    with pytest.raises(EngineError, match="exceed the canvas length"):
        engine.infill(PREFIX, SUFFIX, max_middle_tokens=4)


def test_fim_mode_and_commit_off_keep_the_canvas_path(committing):
    engine = Engine.load(committing)
    engine.generation.commit_hole = engine.generation.commit_head = 0
    fills = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6, num_candidates=2, steps=2)
    assert all(f.hole == 6 and f.steps <= 2 for f in fills)


def test_stop_when_ends_the_fill_where_the_caller_says(committing):
    engine = Engine.load(committing)
    free = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6)[0]
    assert free.tokens == 6
    seen: list[str] = []

    def third(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    short = engine.infill(PREFIX, SUFFIX, max_middle_tokens=6, stop_when=third)[0]
    assert short.tokens == 3 and free.text.startswith(short.text) and seen[-1] == short.text


def test_a_committing_model_skips_the_denoising_step_compile(committing):
    engine = Engine.load(committing, compile=True)
    assert engine.compiled_step is None and "commit" in engine.describe()


def test_a_committing_model_continues_text_one_token_a_pass_and_streams_each(committing):
    engine = Engine.load(committing)
    drafts = []
    out = engine.continue_text("def add(a, b):\n", max_new_tokens=5, on_step=drafts.append)
    assert out.tokens <= 5 and out.decoder_passes in (out.tokens, out.tokens + 1)
    assert [d.canvas_index for d in drafts] == list(range(out.tokens))
    assert engine.tokenizer.decode([int(d.argmax[0, 0]) for d in drafts]) == out.text
    # the same tokens as an infill with nothing after the hole (commit_head 0: the suffix unseen)
    engine.generation.commit_head = 0
    middle = engine.infill("def add(a, b):\n", "", max_middle_tokens=5)[0]
    assert middle.text == out.text


@pytest.mark.parametrize("length, tokens, width", [(10, 1, 1), (100, 1, 5), (150, 3, 4), (63, 1, 2), (64, 2, 3)])
def test_encode_then_decode_is_an_encode_and_a_decode_in_one_pass(length, tokens, width, tmp_path):
    """DiffusionGemma.encode_then_decode (what committing decoding runs a token) computes what
    encode(ids) then decoder_logits(canvas) compute, the cache included, across the tiny model's
    sliding window (64) too."""
    from engine.checkpoint import load_model
    from engine.model import KVCache

    model, config, _, _ = load_model(write_tiny_checkpoint(tmp_path / "ck", seed=0), dtype="float32")
    g = torch.Generator().manual_seed(length)
    prompt, ids, canvas = (torch.randint(3, config.vocab_size, (1, n), generator=g) for n in (length, tokens, width))
    with torch.no_grad():
        apart = KVCache(config, 1, model.dtype, "cpu")
        model.encode(prompt, apart)
        model.encode(ids, apart)
        want = model.decoder_logits(canvas, model.decoder_context(apart, 1), apart.length)
        fused = KVCache(config, 1, model.dtype, "cpu")
        model.encode(prompt, fused)
        got = model.logits(model.encode_then_decode(ids, canvas, fused))
    assert fused.length == apart.length == length + tokens
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(apart.keys + apart.values, fused.keys + fused.values):
        torch.testing.assert_close(b[:, :, : fused.length], a[:, :, : apart.length], atol=1e-5, rtol=1e-5)


def test_branches_in_lockstep_decide_as_each_branch_alone(committing):
    """commit_branches (the candidates' rows in one pass a token) against commit_tokens run once
    per branch from the same prompt cache and the same generator state."""
    from engine.api import commit_branches, commit_tokens

    engine = Engine.load(committing)
    tok, model, gen = engine.tokenizer, engine.model, engine.generation
    prompt = [tok.bos_id] + tok.encode(PREFIX)
    known = tok.encode(SUFFIX)[:3]
    firsts = [17, 42, 99]
    generator = torch.Generator().manual_seed(7)
    generator.manual_seed(7)
    cache = engine.prefill(prompt)
    together = commit_branches(model, tok, cache, known, gen, firsts, limit=6, generator=generator)
    assert cache.length == len(prompt)  # the prompt's cache is left as it was
    for first, (out, passes, logprob) in zip(firsts, together):
        alone_generator = torch.Generator().manual_seed(7)
        alone = commit_tokens(model, tok, engine.prefill(prompt), known, gen, limit=6, seed=0, start=[first],
                              generator=alone_generator)
        assert out == alone[0] and passes == alone[1] and logprob == pytest.approx(alone[2], abs=1e-4)
        assert out[0] == first and len(out) <= 6
    assert max(len(out) for out, _, _ in together) > 2  # rows ran on past their first tokens


def test_encode_then_decode_keeps_several_canvases_apart(tmp_path):
    """Two canvases in one pass (committing decoding's blind view beside its suffix view), rows of a
    batch too: each gives what its own decoder_logits gives after the encode."""
    from engine.checkpoint import load_model
    from engine.model import KVCache

    model, config, _, _ = load_model(write_tiny_checkpoint(tmp_path / "ck", seed=0), dtype="float32")
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, config.vocab_size, (2, 90), generator=g)
    ids = torch.randint(3, config.vocab_size, (2, 1), generator=g)
    canvases = [torch.randint(3, config.vocab_size, (2, w), generator=g) for w in (1, 6)]
    with torch.no_grad():
        apart = KVCache(config, 2, model.dtype, "cpu")
        model.encode(prompt, apart)
        model.encode(ids, apart)
        want = [model.decoder_logits(c, model.decoder_context(apart, 2), apart.length) for c in canvases]
        fused = KVCache(config, 2, model.dtype, "cpu")
        model.encode(prompt, fused)
        got = [model.logits(h) for h in model.encode_then_decode(ids, canvases, fused)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
