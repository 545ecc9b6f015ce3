"""GenerationConfig.encoder_draft: the causal encoder's greedy draft seeds the hole; the decoder
denoises from it (no position marked as noise), and the prompt's KV cache is left as it was."""

from __future__ import annotations

import pytest
import torch

import engine.api as api
from engine.config import GenerationConfig
from engine.training.evaluate import CausalBaseline

from test_infill import train_toy_engine

pytestmark = pytest.mark.slow  # trains the toy model


@pytest.fixture(scope="module")
def toy_engine(tmp_path_factory):
    return train_toy_engine(tmp_path_factory.mktemp("toy-draft"))


def test_the_draft_is_the_encoders_greedy_continuation_and_the_cache_is_restored(toy_engine):
    tok = toy_engine.tokenizer
    prefix = "abcdefghijabcd"
    prompt = [tok.bos_id] + tok.encode(prefix)
    cache = toy_engine.prefill(prompt[:-3])
    draft = toy_engine.draft(cache, prompt[-3:], limit=6)
    assert cache.length == len(prompt) - 3
    greedy = CausalBaseline(toy_engine, one_line=True).infill(prefix, "", max_middle_tokens=6)[0]
    assert tok.decode(draft) == greedy.text == "efghij"
    before = toy_engine.encoded_tokens
    toy_engine.prefill(prompt[:-3])  # the cache still holds exactly the prompt: nothing re-encoded
    assert toy_engine.encoded_tokens == before


def test_infill_seeds_the_hole_with_the_draft_then_fillers(toy_engine, monkeypatch):
    seen = {}
    real = api.denoise

    def spy(model, context, start, canvas, gen, noise, **kw):
        seen["canvas"], seen["noised"], seen["clamped"] = canvas.clone(), kw.get("noised"), kw["clamped"]
        return real(model, context, start, canvas, gen, noise, **kw)

    monkeypatch.setattr(api, "denoise", spy)
    monkeypatch.setattr(toy_engine, "generation", GenerationConfig(**{**toy_engine.generation.__dict__,
                                                                       "encoder_draft": True}))
    tok = toy_engine.tokenizer
    out = toy_engine.infill("abcdefghijabc", "hijabcdefg", max_middle_tokens=6)
    hole = ~seen["clamped"][0]
    seeded = seen["canvas"][0, hole].tolist()
    assert tok.decode(seeded[:6]) == "defghi" and set(seeded[6:]) <= {tok.filler_id}
    assert seen["noised"] is not None and not seen["noised"].any()
    assert out and out[0].text  # the decoder ran from the seed and produced a middle


def test_encoder_draft_is_a_checked_generation_option():
    gen = GenerationConfig.from_hf_dict({"encoder_draft": True})
    assert gen.encoder_draft and GenerationConfig.from_hf_dict(gen.to_hf_dict()).encoder_draft
    assert "encoder_draft" not in GenerationConfig().to_hf_dict()
    with pytest.raises(ValueError, match="encoder_draft"):
        GenerationConfig.from_hf_dict({"encoder_draft": "yes"})
