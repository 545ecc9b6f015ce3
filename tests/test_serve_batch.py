"""engine.batch, what `dgemma serve` batches with: holes of different prompts in one decoder pass,
each client's prompt KV cache kept apart."""

from __future__ import annotations

import pytest
import torch

from engine import Engine
from engine.batch import Hole, PromptCaches, infill_batch

HOLES = [
    Hole("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n", 6, "alice"),
    Hole("import os\n\ndef main():\n    path = ", "\n    print(path)\n", 6, "bob"),
    Hole("x = [1, 2, 3]\nfor i in ", ":\n    print(i)\n", 4, "carol"),
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir, dtype="float32")


def test_a_batch_of_one_is_the_single_request(engine):
    for hole in HOLES:
        single = engine.infill(hole.prefix, hole.suffix, max_middle_tokens=hole.max_middle_tokens, seed=5)[0]
        (batched,), stats = infill_batch(engine, [hole], PromptCaches(), seed=5)
        assert (batched.text, batched.tokens, batched.hole) == (single.text, single.tokens, single.hole)
        assert batched.score == pytest.approx(single.score, abs=1e-4)
        assert stats.encoded_tokens == stats.prompt_tokens  # a fresh cache encodes the whole prompt


def test_padding_does_not_leak_between_rows(engine):
    """A row's logits must not depend on its neighbours: the same hole beside a longer and a shorter
    prompt gives the same decoder output as alone (masked padding, per-row positions)."""
    from engine.batch import RaggedDecoder, ragged_context
    from engine.infill import plan_canvas, stack_plans

    tok, model = engine.tokenizer, engine.model
    caches, plans = [], []
    for hole in HOLES:
        plan = plan_canvas(tok.encode(hole.prefix), tok.encode(hole.suffix), 6, bos=tok.bos_id, eos=tok.eos_ids[0],
                           width=engine.config.canvas_length, context=8)
        cache, _ = PromptCaches().prefill(model, None, plan.prompt)
        caches.append(cache)
        plans.append(plan)

    def logits(rows):
        canvas, _ = stack_plans([plans[r] for r in rows], 0, model.device)
        real = torch.zeros_like(canvas, dtype=torch.bool)
        for j, r in enumerate(rows):
            real[j, : len(plans[r].canvas)] = True
        context = ragged_context(model, [caches[r] for r in rows], real)
        with torch.no_grad():
            return RaggedDecoder(model).decoder_logits(canvas, context, 0), [len(plans[r].canvas) for r in rows]

    together, widths = logits([0, 1, 2])
    for r in range(3):
        alone, _ = logits([r])
        torch.testing.assert_close(together[r, : widths[r]], alone[0, : widths[r]], atol=1e-4, rtol=1e-4)


def test_each_client_reuses_its_own_prompt_cache(engine):
    caches = PromptCaches(capacity=2)
    _, first = infill_batch(engine, HOLES[:2], caches)
    assert first.encoded_tokens == first.prompt_tokens
    # alice types a line; bob's request in between must not have cost her the cache
    typed = Hole(HOLES[0].prefix + "a + b\n    total = a * b\n    return ", HOLES[0].suffix, 6, "alice")
    _, again = infill_batch(engine, [HOLES[1], typed], caches)
    assert again.encoded_tokens[0] == 0  # bob: nothing changed
    assert again.prompt_tokens[1] > first.prompt_tokens[0]
    assert 0 < again.encoded_tokens[1] < again.prompt_tokens[1]  # alice: only the new tail
    # a third client evicts the least recently used one (capacity 2)
    infill_batch(engine, [HOLES[2]], caches)
    assert len(caches) == 2
    _, back = infill_batch(engine, [HOLES[1]], caches)
    assert back.encoded_tokens[0] == back.prompt_tokens[0]


def test_two_holes_of_one_client_in_one_batch(engine):
    """The second hole re-prefills the client's cache; the first hole's rows keep their own snapshot."""
    caches = PromptCaches()
    both = [HOLES[0], Hole(HOLES[1].prefix, HOLES[1].suffix, 6, "alice")]
    together, _ = infill_batch(engine, both, caches, seed=1)
    assert len(together) == 2 and all(isinstance(r.text, str) for r in together)
    alone, _ = infill_batch(engine, [both[0]], PromptCaches(), seed=1)
    assert together[0].hole == alone[0].hole


def test_a_committing_model_fills_each_hole_as_the_single_request_and_keeps_each_clients_cache(engine):
    """GenerationConfig.commit_hole: `dgemma serve`'s batches commit hole after hole, each equal to
    Engine.infill of that hole alone; a client's cache is cut back to its prompt, so its next
    request with the same prompt encodes nothing."""
    gen = engine.generation
    saved = gen.commit_hole, gen.commit_head, gen.ignore_noise_tokens
    gen.commit_hole, gen.commit_head, gen.ignore_noise_tokens = 2, 3, True
    try:
        caches, steps = PromptCaches(), []
        batched, stats = infill_batch(engine, HOLES, caches, seed=5, on_step=lambda *a: steps.append(a))
        for hole, got in zip(HOLES, batched):
            single = engine.infill(hole.prefix, hole.suffix, max_middle_tokens=hole.max_middle_tokens, seed=5)[0]
            assert (got.text, got.tokens, got.steps, got.hole) == (single.text, single.tokens, single.steps, 2)
            assert got.score == pytest.approx(single.score, abs=1e-4)
        assert stats.encoded_tokens == stats.prompt_tokens
        assert len(steps) == sum(r.tokens for r in batched) and steps[-1][2][-1] == batched[-1].text
        again, stats = infill_batch(engine, HOLES, caches, seed=5)
        assert stats.encoded_tokens == [0, 0, 0] and [r.text for r in again] == [r.text for r in batched]
    finally:
        gen.commit_hole, gen.commit_head, gen.ignore_noise_tokens = saved
