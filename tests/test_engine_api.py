"""The engine API on a tiny checkpoint: prompt-KV reuse, seeds, callbacks, cancellation, CLI."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

import engine.generate as engine_generate
from engine import Cancelled, Engine, EngineError
from engine.cli import main as cli_main
from engine.generate import CompiledStep, denoise, step_of_tensors
from engine.model import KVCache
from engine.sampler import CounterNoise, TorchNoise
from engine.training.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ck")


@pytest.fixture
def engine(tiny):
    return Engine.load(tiny)


def decoder_logits(engine, cache):
    canvas = torch.arange(10, 26)[None]
    return engine.model.logits(engine.model.decode(canvas, engine.model.decoder_context(cache, 1), cache.length))


def fresh_cache(engine, ids):
    cache = KVCache(engine.config, 1, engine.model.dtype, "cpu")
    engine.model.encode(torch.tensor([ids]), cache)
    return cache


def test_prompt_kv_reuse_gives_the_same_logits_as_a_fresh_encode(engine):
    ids = engine.tokenizer.encode("def add(a, b):\n    return a + b\n")
    engine.prefill(ids)
    encoded = engine.encoded_tokens
    typed = ids + engine.tokenizer.encode("x = add(1")
    cache = engine.prefill(typed)  # keystrokes: only the new tokens are encoded
    assert engine.encoded_tokens - encoded == len(typed) - len(ids)
    torch.testing.assert_close(decoder_logits(engine, cache), decoder_logits(engine, fresh_cache(engine, typed)),
                               atol=1e-5, rtol=0)


def test_prompt_kv_reuse_after_an_edit_inside_the_prompt(engine):
    a = engine.tokenizer.encode("import os\nprint(os.getcwd())\n")
    b = a[:3] + engine.tokenizer.encode("sys\n") + a[3:]
    engine.prefill(a)
    before = engine.encoded_tokens
    cache = engine.prefill(b)
    assert engine.encoded_tokens - before == len(b) - 3  # re-encoded from the first changed token
    torch.testing.assert_close(decoder_logits(engine, cache), decoder_logits(engine, fresh_cache(engine, b)),
                               atol=1e-5, rtol=0)


def test_prompt_kv_reuse_when_the_prompt_shrinks(engine):
    ids = engine.tokenizer.encode("for i in range(10):\n    print(i)\n")
    engine.prefill(ids)
    before = engine.encoded_tokens
    cache = engine.prefill(ids[:5])  # backspace: nothing to encode
    assert engine.encoded_tokens == before and cache.length == 5
    torch.testing.assert_close(decoder_logits(engine, cache), decoder_logits(engine, fresh_cache(engine, ids[:5])),
                               atol=1e-5, rtol=0)


def test_seed_reproducibility(engine):
    a = engine.infill("x = ", "\n", seed=7, max_middle_tokens=8)
    b = engine.infill("x = ", "\n", seed=7, max_middle_tokens=8)
    assert [c.text for c in a] == [c.text for c in b]
    g1 = engine.continue_text("import os\n", max_new_tokens=32, seed=3)
    g2 = engine.continue_text("import os\n", max_new_tokens=32, seed=3)
    assert g1.text == g2.text


def test_max_tokens_respected(engine):
    out = engine.continue_text("import os\n", max_new_tokens=40, seed=0)
    canvases = -(-40 // engine.config.canvas_length)
    assert len(out.steps) <= canvases and out.tokens <= canvases * engine.config.canvas_length
    assert out.decoder_passes == sum(out.steps)  # one row: its passes are its canvases' steps


def test_per_step_callback_sees_each_draft(engine):
    drafts = []
    engine.infill("def f():\n    return ", "\n", max_middle_tokens=8, steps=6, on_step=lambda s, t: drafts.append(s))
    assert drafts == list(range(1, len(drafts) + 1)) and 1 <= len(drafts) <= 6


def test_should_stop_cancels_generation(engine):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        engine.infill("a = ", "\n", steps=8, should_stop=stop)
    assert len(calls) == 3


def test_bad_arguments_are_clear_errors(engine):
    with pytest.raises(EngineError, match="max_middle_tokens must be >= 1"):
        engine.infill("a", "b", max_middle_tokens=0)
    with pytest.raises(EngineError, match="max_denoising_steps must be a positive integer"):
        engine.infill("a", "b", steps=0)
    with pytest.raises(EngineError, match="entropy_bound must be > 0"):
        engine.infill("a", "b", entropy_bound=-1.0)
    with pytest.raises(EngineError, match="unknown infill mode"):
        engine.infill("a", "b", mode="magic")


def test_cli_generate_and_fill(tiny, tmp_path, capsys):
    assert cli_main(["generate", "--model", str(tiny), "--prompt", "import os\n", "--max-new-tokens", "16"]) == 0
    assert "tokens/forward" in capsys.readouterr().err
    source = tmp_path / "a.py"
    source.write_text("def add(a, b):\n    return \n")
    assert cli_main(["fill", "--model", str(tiny), str(source), "--line", "2", "--col", "12", "--visual",
                     "--visual-delay", "0"]) == 0
    captured = capsys.readouterr()
    assert "step   1" in captured.err and "tokens/forward" in captured.err
    assert source.read_text() == "def add(a, b):\n    return \n"  # fill prints, never edits


@pytest.mark.parametrize("args,message", [
    (["--line", "9", "--col", "1"], "--line 9 is outside the file"),
    (["--line", "1", "--col", "99"], "--col 99 is outside line 1"),
])
def test_cli_fill_rejects_bad_positions(tiny, tmp_path, capsys, args, message):
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    assert cli_main(["fill", "--model", str(tiny), str(source), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_fill_rejects_binary_files(tiny, tmp_path, capsys):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02" * 100)
    assert cli_main(["fill", "--model", str(tiny), str(blob), "--line", "1", "--col", "1"]) == 2
    assert "looks binary" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reports_a_broken_model_without_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "engine.cli", "generate", "--model", str(tmp_path), "--prompt", "x"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "config.json" in run.stderr and "Traceback" not in run.stderr


def test_prompts_beyond_the_model_positions_keep_the_most_recent_prefix(engine, monkeypatch):
    monkeypatch.setattr(engine.config, "max_position_embeddings", 64)
    prefix = "x = 1\n" * 200
    result = engine.infill(prefix, "\n", max_middle_tokens=8)
    assert result and len(engine._cached_ids) <= 64 - 8
    assert engine._cached_ids[0] == engine.tokenizer.bos_id


def test_fast_cpu_sampler_draws_from_the_distribution():
    noise = TorchNoise(4, torch.Generator().manual_seed(0))
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))[None, None].expand(1, 20000, 4)
    canvas = torch.zeros(1, 20000, dtype=torch.long)
    sample, argmax, entropy = noise.draws(1, canvas, None).sample(logits, None)
    freq = torch.bincount(sample.flatten(), minlength=4) / sample.numel()
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)
    assert (argmax == 3).all()
    torch.testing.assert_close(entropy, torch.full_like(entropy, 1.2799), atol=1e-3, rtol=0)


@pytest.mark.parametrize("noise", [TorchNoise(6, torch.Generator().manual_seed(0)), TorchNoise(6), CounterNoise(6, 0)],
                         ids=["private-generator", "global-rng", "counter"])
def test_every_noise_source_draws_only_the_free_positions(noise):
    logits = torch.randn(2, 5, 6)
    rows = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    sample, argmax, entropy = noise.draws(1, torch.zeros(2, 5, dtype=torch.long), rows).sample(logits, rows)
    assert (entropy[~rows] == 0).all() and (entropy[rows] > 0).all()
    torch.testing.assert_close(entropy[rows], -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)[rows])
    assert torch.equal(argmax[rows], logits.argmax(-1)[rows])
    assert ((sample >= 0) & (sample < 6)).all()


def _step_inputs(engine, n, width, first_step, rows=1):
    """A prompt of n tokens in the cache and one denoising step's inputs for a canvas of `width`
    whose first third is clamped (as infill builds it): step_of_tensors' arguments after the model."""
    model = engine.model
    cache = KVCache(engine.config, rows, model.dtype, "cpu")
    model.encode(torch.arange(3, 3 + n).repeat(rows, 1), cache)
    g = torch.Generator().manual_seed(n)
    canvas = torch.randint(0, engine.config.vocab_size, (rows, width), generator=g)
    clamped = torch.zeros_like(canvas, dtype=torch.bool)
    clamped[:, : width // 3] = True
    soft = torch.zeros(rows, width, engine.config.hidden_size) if first_step else \
        model.soft_embedding(torch.randn(rows, width, engine.config.vocab_size, generator=g)).float()
    ctx = CompiledStep.context(model.decoder_context(cache, rows))  # as denoise hands it to the graph
    return (canvas, ctx.keys, ctx.values, cache.length, soft.to(model.dtype), clamped, ~clamped,
            torch.tensor(0.6), torch.tensor(0.1), engine.generation.ignore_noise_tokens,
            torch.rand((rows, width), generator=g), torch.randint(0, engine.config.vocab_size, (rows, width), generator=g))


@pytest.mark.slow
@pytest.mark.parametrize("ignore_noise_tokens", [True, False])
def test_the_traced_step_makes_the_eager_loops_decisions(tiny, ignore_noise_tokens):
    """The step as torch.compile traces it (CompiledStep: tensors in, draws taken outside, context
    made contiguous; here without code generation, aot_eager) denoises a clamped canvas on fp32
    weights to the same tokens, step counts and scores as the eager loop, from the same draws."""
    engine = Engine.load(tiny, dtype="float32")
    model = engine.model
    gen = dataclasses.replace(engine.generation, ignore_noise_tokens=ignore_noise_tokens, max_denoising_steps=6)
    cache = KVCache(engine.config, 1, model.dtype, "cpu")
    model.encode(torch.arange(3, 40)[None], cache)
    known = torch.arange(100, 124)[None]
    clamped = torch.zeros_like(known, dtype=torch.bool)
    clamped[:, :5] = clamped[:, -7:] = True

    def run(compiled=None):
        noise = TorchNoise(engine.config.vocab_size, torch.Generator().manual_seed(3))
        canvas = torch.where(clamped, known, noise.canvas(1, 24, "cpu"))
        steps = []
        result = denoise(model, model.decoder_context(cache, 1), cache.length, canvas, gen, noise, clamped=clamped,
                         on_step=lambda d: steps.append((d.canvas.clone(), d.accepted.clone())), compiled=compiled)
        return result, steps

    eager, eager_steps = run()
    traced = CompiledStep(model, gen, backend="aot_eager")
    fused, fused_steps = run(traced)
    assert torch.equal(fused.argmax, eager.argmax) and torch.equal(fused.forwards, eager.forwards)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fused_steps, eager_steps))
    assert len(fused_steps) == len(eager_steps) and any(accepted.any() for _, accepted in eager_steps)
    torch.testing.assert_close(fused.logprob[~clamped], eager.logprob[~clamped])


@pytest.mark.slow
def test_the_compiled_step_serves_other_shapes_as_exactly_as_eager(tiny):
    """Engine.compile builds one graph for single-row steps: it serves prompt lengths, canvas widths
    and a first step other than its warm-up's without recompiling, as close to the fp32 truth as
    the same step run eager in bf16; two candidate rows run the eager loop, bit for bit."""
    engine = Engine.load(tiny, dtype="bfloat16")
    truth = Engine.load(tiny, dtype="float32")
    assert engine.compile() and "denoising step compiled" in engine.describe()
    graph = engine.compiled_step.graph
    with torch.no_grad():
        for n, width, first_step in ((40, 16, False), (7, 11, True), (90, 32, False)):
            args = _step_inputs(engine, n, width, first_step)
            with torch.compiler.set_stance("fail_on_recompile"):  # raises if this shape needed a new graph
                compiled = graph(*args)
            eager = step_of_tensors(engine.model, *args)
            exact = step_of_tensors(truth.model, *_step_inputs(truth, n, width, first_step))
            # entropy, and the distribution the next step self-conditions on (ignored tokens are -inf)
            for name, of in (("entropy", lambda step: step[3]), ("p", lambda step: step[4].softmax(-1))):
                err_compiled = (of(compiled) - of(exact)).abs().mean()
                err_eager = (of(eager) - of(exact)).abs().mean()
                assert err_compiled <= 1.5 * err_eager + 1e-3, (n, width, name, err_compiled, err_eager)
    plain = Engine.load(tiny, dtype="bfloat16")
    two = {"max_middle_tokens": 6, "num_candidates": 2}
    assert [c.text for c in engine.infill("def add(a, b):\n    return ", "\n", **two)] == \
        [c.text for c in plain.infill("def add(a, b):\n    return ", "\n", **two)]
    assert engine.infill("def add(a, b):\n    return ", "\n", max_middle_tokens=6)[0].ms > 0


def test_a_failed_compile_leaves_the_engine_eager(tiny, monkeypatch):
    engine = Engine.load(tiny)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(engine_generate, "step_of_tensors", broken)  # fails inside CompiledStep's warm-up
    assert not engine.compile()
    assert "compile failed" in engine.describe() and "no C++ compiler" in engine.describe()
    assert engine.compiled_step is None
    assert engine.infill("def add(a, b):\n    return ", "\n", max_middle_tokens=6)


def test_a_long_prompt_keeps_its_start_while_the_user_types(engine, monkeypatch):
    """Past the model's positions the prompt loses whole chunks at its start, so typing at the
    end re-encodes a few tokens, not the whole window (the KV cache is reused)."""
    monkeypatch.setattr(engine.config, "max_position_embeddings", 128)
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(60))
    engine.infill(prefix, "\n", max_middle_tokens=8)
    start = engine._cached_ids[:8]
    encoded = []
    for typed in ("r", "re", "res", "resu", "resul", "result"):
        before = engine.encoded_tokens
        engine.infill(prefix + typed, "\n", max_middle_tokens=8)
        encoded.append(engine.encoded_tokens - before)
        assert len(engine._cached_ids) <= 128 - 8
    assert engine._cached_ids[:8] == start  # the same window start: no slide per keystroke
    assert max(encoded) <= 8, encoded  # a few tokens per keystroke, not the ~100-token window


def test_fit_prompt_drops_whole_chunks_after_bos(engine):
    bos = engine.tokenizer.bos_id
    ids = [bos] + list(range(10, 1010))
    fitted = engine.fit_prompt(ids, 500)
    assert fitted[0] == bos and len(fitted) <= 500 and fitted[-1] == ids[-1]
    assert fitted[1:] == ids[len(ids) - (len(fitted) - 1):]  # the most recent tokens, contiguous
    chunk = min(128, 499 // 4)  # TRUNCATE_CHUNK, at most a quarter of the room after bos
    assert (len(ids) - len(fitted)) % chunk == 0 and len(fitted) > 500 - chunk  # dropped: whole chunks, no more
    assert engine.fit_prompt(ids[:400], 500) == ids[:400]
