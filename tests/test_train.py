"""`dgemma train` on a tiny corpus: it checkpoints, resumes, exports and restarts from a committed model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from engine import Engine
from engine.training.tiny import write_tiny_checkpoint
from engine.training.train import TrainConfig, export_model, heldout_loss, masked_attention, paired_difference, train

SMALL = dict(seq_len=32, canvas=16, batch=2, max_middle=6, hidden_size=32, layers=2, heads=2, kv_heads=1,
             head_dim=16, intermediate_size=64, experts=2, top_k=1, moe_intermediate_size=32, sliding_window=16,
             checkpoint_minutes=0.0, warmup=2, compile=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tiny = write_tiny_checkpoint(root / "tiny")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = [{"path": f"f{i}.py", "source": "test", "license": "MIT", "language": "python",
             "text": f"def f{i}(x):\n    return x + {i}\n" * 3} for i in range(20)]
    (corpus / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    heldout = [{**d, "path": f"g{i}.py", "text": f"def g{i}(y):\n    return y + {i}\n" * 3} for i, d in enumerate(docs)]
    (corpus / "heldout.jsonl").write_text("".join(json.dumps(d) + "\n" for d in heldout))
    return root, str(tiny / "tokenizer.json"), str(corpus)


def test_train_checkpoints_resumes_and_exports(setup):
    root, tokenizer, corpus = setup
    out = root / "run"
    train(TrainConfig(corpus=corpus, tokenizer=tokenizer, out=str(out), total_steps=3, **SMALL))
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 3 and state["tokens"] == 3 * 2 * 32 and state["doc_index"] > 0
    train(TrainConfig(corpus=corpus, tokenizer=tokenizer, out=str(out), total_steps=5, **SMALL))
    assert json.loads((out / "train_state.json").read_text())["step"] == 5  # resumed, not restarted
    export_model(out, root / "exported", steps=4)
    engine = Engine.load(root / "exported")
    assert engine.config.max_position_embeddings == 32 and engine.generation.max_denoising_steps == 4
    assert isinstance(engine.infill("def f(x):\n    return ", "\n")[0].text, str)


def test_training_from_a_committed_model_starts_from_its_weights(setup):
    root, tokenizer, corpus = setup
    out = root / "continued"
    train(TrainConfig(corpus=corpus, tokenizer=tokenizer, out=str(out), total_steps=1, lr=0.0,
                      init_from=str(root / "exported"), **SMALL))
    before = Engine.load(root / "exported", dtype="float32").model.state_dict()
    after = Engine.load(out / "model", dtype="float32").model.state_dict()
    assert all((before[k] - after[k]).abs().max() < 1e-2 for k in before)  # lr 0: unchanged up to bf16 rounding


def test_dense_experts_compute_the_routed_experts():
    """Training runs every expert on every token (static shapes for torch.compile); the layer must
    compute the same function, gradients included, as the routed kernel the engine uses."""
    import torch

    from engine.model import DiffusionGemma, init_weights
    from engine.training.train import model_config

    tc = TrainConfig(**SMALL)
    model = DiffusionGemma(model_config(tc, 64))
    init_weights(model, std=0.2)
    layer = model.layers[0]
    x = torch.randn(2, 5, tc.hidden_size)
    cos, sin = model.rope(torch.arange(5)[None], torch.float32)[model.config.layers[0]]

    def attend(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=True)

    outs, grads = [], []
    for dense in (False, True):
        layer.dense_experts = dense
        model.zero_grad()
        y = layer(x, cos, sin, attend, layer.decoder_scalar)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in (layer.experts_gate_up, layer.experts_down, layer.router_proj.weight)])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for dense_grad, routed_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(dense_grad, routed_grad, rtol=1e-4, atol=1e-5)
        assert routed_grad.abs().sum() > 0


def test_a_new_schedule_on_resume_warms_up_again():
    from engine.training.train import lr_at

    tc = TrainConfig(lr=1e-3, warmup=10, total_steps=1000)
    assert lr_at(500, tc, rewarm_from=500) == pytest.approx(lr_at(500, tc) / 10)
    assert lr_at(509, tc, rewarm_from=500) == lr_at(509, tc)
    assert lr_at(600, tc, rewarm_from=500) == lr_at(600, tc)
    assert lr_at(0, tc) == 1e-4 and abs(lr_at(1000, tc) - 1e-4) < 1e-12


@pytest.mark.slow
def test_heldout_loss_is_reproducible_and_falls_with_training(setup):
    """The held-out objective scores every checkpoint on the same canvases: the same number twice,
    and lower after 60 steps than at (almost) initialisation, on files the run never read."""
    root, tokenizer, corpus = setup
    scores = {}
    for name, steps, lr in (("init", 1, 0.0), ("trained", 60, 3e-3)):
        train(TrainConfig(corpus=corpus, tokenizer=tokenizer, out=str(root / name), total_steps=steps, lr=lr,
                          **SMALL))
        scores[name] = heldout_loss(root / name / "model", corpus, rows=8, seq_len=32, batch=4)
    assert heldout_loss(root / "trained" / "model", corpus, rows=8, seq_len=32, batch=4) == scores["trained"]
    paired = paired_difference(scores["init"], scores["trained"])
    for key in ("diffusion", "diffusion_self_conditioned", "next_token"):  # measured: 5.8 -> 3.9
        assert scores["trained"][key] < scores["init"][key] - 0.5, (key, scores)
        assert paired[key]["difference"] < -2 * paired[key]["standard_error"] < 0, paired


def test_eval_loss_cli_reports_bad_paths_without_a_traceback(setup, tmp_path, capsys):
    from engine.cli import main as cli_main

    root, _, corpus = setup
    assert cli_main(["eval-loss", "--model", str(tmp_path / "missing"), "--corpus", corpus]) == 2
    assert "checkpoint directory does not exist" in capsys.readouterr().err
    assert cli_main(["eval-loss", "--corpus", str(tmp_path)]) == 2
    assert "heldout.jsonl not found" in capsys.readouterr().err


def test_eval_loss_cli_writes_its_scores_with_commit_and_command(setup, tmp_path, capsys):
    from engine.cli import main as cli_main

    _, _, corpus = setup
    model = write_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "loss.json"
    assert cli_main(["eval-loss", "--model", str(model), "--corpus", corpus, "--rows", "2", "--seq-len", "32",
                     "--out-json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    written = json.loads(out.read_text())
    assert written["kind"] == "eval-loss" and written["scores"] == [printed] and written["rows"] == 2
    assert "eval-loss" in written["command"] and "commit" in written and "dirty" in written


@pytest.mark.parametrize("heads, kv_heads", [(4, 1), (8, 2), (2, 2)])
def test_masked_attention_equals_sdpa_with_grouped_kv_heads(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 7, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, kv_heads, 11, 16, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(2, 1, 7, 11, generator=g) > 0.5
    mask[..., 3] = True  # every query sees a key
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=True)
    torch.testing.assert_close(masked_attention(q, k, v, mask), want, rtol=1e-12, atol=1e-12)
