"""The adaptation trainer decodes its canvas slots as the engine decodes a canvas: the same
logits for the same prompt and canvas (a mismatch would train the decoder on inputs it never
sees at inference), and its draft slots hold the encoder's greedy tokens."""

import random
from dataclasses import replace

import torch
import torch.nn.functional as F

from engine.checkpoint import load_model
from engine.training.adapt import AdaptConfig, decode_slots, losses, make_batch
from engine.model import KVCache
from engine.training.tiny import write_tiny_checkpoint
from engine.training.train import run_encoder


def _model(tmp_path):
    model, config, _, _ = load_model(write_tiny_checkpoint(tmp_path / "tiny", seed=0), dtype="float32")
    return model.eval(), config


def test_slots_decode_as_the_engine_decodes(tmp_path):
    model, config = _model(tmp_path)
    g = torch.Generator().manual_seed(0)
    S, C = 150, 12  # the prompt is longer than the sliding window (64): the window matters
    row = torch.randint(3, config.vocab_size, (1, S), generator=g)
    attach = torch.tensor([[5, 90, 140]])
    canvas = torch.randint(3, config.vocab_size, (1, 3 * C), generator=g)
    valid = torch.ones(1, 3 * C, dtype=torch.bool)
    valid[0, 2 * C + 9:] = False  # the last slot is short: padded positions are invisible
    with torch.no_grad():
        _, enc_kv = run_encoder(model, row)
        trained = model.logits(decode_slots(model, canvas, attach, valid, enc_kv, None))  # (3, C, V)
        for k, start in enumerate(attach[0].tolist()):
            n = int(valid[0, k * C:(k + 1) * C].sum())
            cache = KVCache(config, 1, model.dtype, row.device)
            model.encode(row[:, :start], cache)
            engine = model.decoder_logits(canvas[:, k * C: k * C + n], model.decoder_context(cache, 1), start, None)
            torch.testing.assert_close(trained[k, :n].float(), engine[0].float(), atol=2e-4, rtol=2e-4)


def test_draft_slots_hold_the_encoders_greedy_tokens(tmp_path):
    model, config = _model(tmp_path)
    V = config.vocab_size
    ac = AdaptConfig(seq_len=128, slots=4, canvas=32, max_middle=12, max_tail=6, max_head=8, plain_prob=0.0,
                     draft_prob=1.0, distill_weight=0.0, encoder_weight=0.0)
    g = torch.Generator().manual_seed(1)
    row = [2] + torch.randint(3, V, (ac.seq_len,), generator=g).tolist()
    newlines = torch.zeros(V, dtype=torch.bool)
    newlines[7] = True
    batch = make_batch([row], ac, V, 5, 1, 0, torch.zeros(V, dtype=torch.bool), random.Random(0), g, newlines)
    seeded = batch.draft_pos >= 0
    assert seeded.sum() > 4
    assert not (seeded & batch.noised).any()  # a renoised draft position holds noise, not the draft
    before = batch.canvas.clone()
    with torch.no_grad():
        losses(model, batch, ac, self_condition=False)
        hidden, _ = run_encoder(model, batch.tokens[:, :-1])
        greedy = model.logits(hidden[0]).argmax(-1)
    assert torch.equal(batch.canvas[seeded], greedy[batch.draft_pos[seeded]])
    assert torch.equal(batch.canvas[~seeded], before[~seeded])


def test_base_weights_switch_the_deltas_off(tmp_path):
    from engine.training.adapt import add_deltas, base_weights

    model, config = _model(tmp_path)
    ids = torch.randint(3, config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before, _ = run_encoder(model, ids)
        deltas = add_deltas(model, rank=4)
        for d in deltas.values():
            d.B.normal_()
        adapted, _ = run_encoder(model, ids)
        with base_weights(model):
            base, _ = run_encoder(model, ids)
        again, _ = run_encoder(model, ids)
    assert not torch.allclose(adapted, before, atol=1e-3)
    torch.testing.assert_close(base, before)
    torch.testing.assert_close(again, adapted)


def test_a_draft_slot_shows_fillers_past_the_draft(tmp_path):
    """As at inference: the hole holds the draft (to its first newline), then fillers; the true
    middle past the draft is a target, never an input."""
    ac = AdaptConfig(seq_len=128, slots=4, canvas=32, max_middle=12, max_tail=6, max_head=8, plain_prob=0.0,
                     draft_prob=1.0)
    V, filler = 64, 5
    g = torch.Generator().manual_seed(3)
    row = [2] + [7 if i % 5 == 4 else t for i, t in enumerate(torch.randint(8, V, (ac.seq_len,), generator=g).tolist())]
    newlines = torch.zeros(V, dtype=torch.bool)
    newlines[7] = True  # token 7 ends a line: lines of 5 tokens
    batch = make_batch([row], ac, V, filler, 1, 0, torch.zeros(V, dtype=torch.bool), random.Random(0), g, newlines)
    hole = batch.weight > 0
    past = hole & (batch.draft_pos < 0) & ~batch.noised
    assert past.any()
    assert (batch.canvas[past] == filler).all()
    assert (batch.targets[past & (batch.weight == 1.0)] != filler).any()  # the middle went on past some drafts


def test_low_noise_slots_hide_at_most_their_share_of_the_hole(tmp_path):
    """--low-noise-prob 1: every inline slot's noise rate comes from U(0, low_noise_max), so over
    many slots a small share of hole positions is hidden (U(0, 1) hides about half)."""
    V = 64
    g = torch.Generator().manual_seed(5)
    rows = [[2] + torch.randint(8, V, (256,), generator=g).tolist() for _ in range(6)]
    shares = {}
    for low in (0.0, 1.0):
        ac = AdaptConfig(seq_len=256, slots=8, canvas=32, max_middle=12, max_tail=6, max_head=8, plain_prob=0.0,
                         draft_prob=0.0, low_noise_prob=low, low_noise_max=0.1)
        batch = make_batch(rows, ac, V, 5, 1, 0, torch.zeros(V, dtype=torch.bool), random.Random(1),
                           torch.Generator().manual_seed(1), torch.zeros(V, dtype=torch.bool))
        hole = batch.weight > 0
        shares[low] = float(batch.noised[hole].float().mean())
    assert shares[1.0] < 0.12 and shares[0.0] > 0.3, shares


def test_trained_gains_are_part_of_the_adapter_and_fold_into_the_model(tmp_path):
    """--norm-lr: the blocks' output gains are adapter tensors by their parameter names, which
    `apply_adapter` copies in; an adapter without them leaves the base's gains."""
    from engine.gemma3 import apply_adapter
    from engine.training.adapt import add_deltas, dense_trainables, is_gain, load_adapter_into, trained_parameters

    model, _ = _model(tmp_path)
    gains = {n: p for n, p in dense_trainables(model, gains=True).items() if is_gain(n)}
    assert len(gains) == 2 * len(model.layers)
    params = dict(model.named_parameters())
    assert all(params[n] is p for n, p in gains.items())
    name = next(iter(gains))
    apply_adapter(model, {name: torch.full_like(gains[name], 0.5)})
    assert (params[name] == 0.5).all()

    deltas = add_deltas(model, rank=2)
    for p in gains.values():
        p.requires_grad_(True)
    trained = trained_parameters(model, deltas)
    assert set(gains) <= set(trained)
    without = {k: v.detach().clone() for k, v in trained.items() if not is_gain(k)}
    load_adapter_into(model, deltas, without)  # no gains in it: the model's stay
    assert (params[name] == 0.5).all()


def _tiny_run(tmp_path, **config) -> AdaptConfig:
    """An adaptation run on a tiny checkpoint and a four-document corpus, written under tmp_path."""
    import json

    base = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i, add(i, 2))\n"
    (corpus / "train.jsonl").write_text("".join(json.dumps({"text": text * 3}) + "\n" for _ in range(4)))
    return AdaptConfig(base=str(base), corpus=str(corpus), out=str(tmp_path / "run"), seq_len=64, slots=2, canvas=24,
                       max_middle=8, max_tail=4, max_head=6, rank=2, warmup=1, checkpoint_minutes=0.0, **config)


def test_encoder_lr_steps_the_encoder_losses_with_their_own_moments_and_resumes(tmp_path):
    """--encoder-lr: the encoder's losses and the decoder's are differentiated apart and stepped by
    two AdamW instances over the shared deltas; both sets of moments are checkpointed and resumed."""
    import json

    from safetensors.torch import load_file

    from engine.training.adapt import ENCODER_ADAM, train

    ac = _tiny_run(tmp_path, lr=1e-3, encoder_lr=1e-3, total_steps=2, encoder_weight=0.0, encoder_kl_weight=10.0)
    train(ac)
    saved = load_file(str(tmp_path / "run" / "state.safetensors"))
    name = "layers.0.self_attn.q_proj.lora_B"
    decoder_m, encoder_m = saved[f"adam.{name}.exp_avg"], saved[f"{ENCODER_ADAM}{name}.exp_avg"]
    assert decoder_m.abs().sum() > 0 and encoder_m.abs().sum() > 0
    assert not torch.allclose(decoder_m, encoder_m)  # two objectives, two sets of moments
    assert f"{ENCODER_ADAM}layers.0.decoder_scalar.exp_avg" not in saved  # decoder-only: never the encoder's
    assert "layers.0.decoder_scalar" in saved and "adam.layers.0.decoder_scalar.exp_avg" in saved

    from dataclasses import replace

    train(replace(ac, total_steps=3))  # resumes at step 2, one more step
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 3
    resumed = load_file(str(tmp_path / "run" / "state.safetensors"))
    assert not torch.equal(resumed[f"{ENCODER_ADAM}{name}.exp_avg"], encoder_m)


def test_value_deltas_train_at_their_tiny_scale_and_fold_into_the_model(tmp_path):
    """--value-deltas: sliding layers' v_proj get deltas applied at the mapping's 2^-24 scale. Their
    gradients are as tiny, so Adam's eps is scaled with them: after a step their B moves as far as
    the other deltas' do; folded in (`apply_adapter`) they give the model the deltas computed."""
    from safetensors.torch import load_file

    from engine.gemma3 import SLIDING_V_SCALE, apply_adapter
    from engine.training.adapt import train

    ac = _tiny_run(tmp_path, lr=1e-2, total_steps=1, encoder_weight=1.0, encoder_kl_weight=0.0, value_deltas=1)
    model = train(ac)
    adapter = load_file(str(tmp_path / "run" / "state.safetensors"))
    v, q = (adapter[f"layers.0.self_attn.{p}.lora_B"].abs().mean() for p in ("v_proj", "q_proj"))
    assert v > 0.2 * q > 0, (v, q)  # one Adam step moves each entry ~lr, at any gradient scale

    delta = model.layers[0].self_attn.v_proj  # the trained LowRankLinear
    assert delta.scale == SLIDING_V_SCALE
    folded, _ = _model(tmp_path)
    name = "layers.0.self_attn.v_proj"
    with torch.no_grad():
        delta.B.mul_(2.0**24)  # a delta as large as the tiny model's (unscaled) values, so a wrong fold shows
        folded.layers[0].self_attn.v_proj.weight.copy_(delta.base.weight.float())
        apply_adapter(folded, {f"{name}.lora_A": delta.A.detach(), f"{name}.lora_B": delta.B.detach()})
        x = torch.randn(5, delta.A.shape[1], generator=torch.Generator().manual_seed(4))
        want = F.linear(x, delta.base.weight.float()) + F.linear(F.linear(x, delta.A), delta.B) * delta.scale
        assert (want - F.linear(x, delta.base.weight.float())).abs().mean() > 0.02 * want.abs().mean()
        torch.testing.assert_close(folded.layers[0].self_attn.v_proj(x), want, atol=1e-5, rtol=1e-4)


def test_align_pulls_a_hidden_positions_layers_towards_the_teachers_at_its_left_neighbour(tmp_path):
    """--align-weight: the term is the standardised MSE between the decoder's residual after each
    named layer at a hidden middle position and the base encoder's at the position before it in
    the row, computed here independently with plain forward hooks; its gradient reaches the
    deltas of the named layers and those below, not above."""
    from engine.training.adapt import add_deltas, base_weights

    model, config = _model(tmp_path)
    deltas = add_deltas(model, rank=4)
    with torch.no_grad():
        for d in deltas.values():
            d.B.normal_(std=0.05)
    for d in deltas.values():
        d.A.requires_grad_(True), d.B.requires_grad_(True)
    V = config.vocab_size
    ac = AdaptConfig(seq_len=96, slots=3, canvas=24, max_middle=10, max_tail=4, max_head=6, plain_prob=0.5,
                     draft_prob=0.0, encoder_weight=0.0, encoder_kl_weight=0.0, align_weight=1.0, align_layers="0")
    g = torch.Generator().manual_seed(4)
    row = [2] + torch.randint(3, V, (ac.seq_len,), generator=g).tolist()
    batch = make_batch([row], ac, V, 5, 1, 0, torch.zeros(V, dtype=torch.bool), random.Random(2), g,
                       torch.zeros(V, dtype=torch.bool))
    parts = losses(model, batch, ac, self_condition=False)

    seen = {}
    hook = model.layers[0].register_forward_hook(lambda m, a, o: seen.__setitem__(len(seen), o.detach()))
    with torch.no_grad():
        with base_weights(model):
            _, _ = run_encoder(model, batch.tokens[:, :-1])
        _, enc_kv = run_encoder(model, batch.tokens[:, :-1])
        decode_slots(model, batch.canvas, batch.attach, batch.valid, enc_kv, None)
    hook.remove()
    teacher, decoder = seen[0][0], seen[2].reshape(-1, config.hidden_size)  # (S, H), (K*C, H)
    pick = (batch.weight[0] > 0) & batch.noised[0] & (batch.teacher_pos[0] >= 0)
    assert pick.sum() > 3
    mean, std = teacher.mean(0), teacher.std(0)
    std = std.clamp(min=1e-2 * float(std.mean()))
    want = F.mse_loss((decoder[pick] - mean) / std, (teacher[batch.teacher_pos[0][pick]] - mean) / std)
    torch.testing.assert_close(parts["align"], want, rtol=1e-4, atol=1e-5)

    grads = torch.autograd.grad(parts["align"], [d.B for d in deltas.values()], allow_unused=True)
    reached = {name.split(".")[1] for name, gr in zip(deltas, grads) if gr is not None and gr.abs().sum() > 0}
    assert reached == {"0"}


def test_point_holes_decode_as_the_engine_decodes_a_one_position_canvas(tmp_path):
    """--point-holes: one-token holes packed in one decoder row give, at each hole, the logits the
    engine's decoder gives a one-position canvas attached after a prompt of that many tokens
    (past the sliding window too); their losses are part of the step's."""
    from engine.training.adapt import decode_points

    model, config = _model(tmp_path)
    g = torch.Generator().manual_seed(6)
    S = 150  # longer than the tiny model's sliding window (64)
    row = torch.randint(3, config.vocab_size, (1, S), generator=g)
    at = torch.tensor([[1, 7, 64, 65, 100, 149]])
    noise = torch.randint(3, config.vocab_size, at.shape, generator=g)
    with torch.no_grad():
        _, enc_kv = run_encoder(model, row)
        packed = model.logits(decode_points(model, noise, at, enc_kv))[0]  # (P, V)
        for i, p in enumerate(at[0].tolist()):
            cache = KVCache(config, 1, model.dtype, row.device)
            model.encode(row[:, :p], cache)
            engine = model.decoder_logits(noise[:, i: i + 1], model.decoder_context(cache, 1), p, None)
            torch.testing.assert_close(packed[i].float(), engine[0, 0].float(), atol=2e-4, rtol=2e-4)

    ac = AdaptConfig(seq_len=96, slots=2, canvas=24, max_middle=8, max_tail=4, max_head=6, draft_prob=0.0,
                     encoder_weight=0.0, encoder_kl_weight=0.0, point_holes=16)
    tokens = [2] + torch.randint(3, config.vocab_size, (ac.seq_len,), generator=g).tolist()
    batch = make_batch([tokens], ac, config.vocab_size, 5, 1, 0, torch.zeros(config.vocab_size, dtype=torch.bool),
                       random.Random(0), g, torch.zeros(config.vocab_size, dtype=torch.bool))
    with torch.no_grad():
        with_points = losses(model, batch, ac, self_condition=False)
        without = losses(model, batch, replace(ac, point_holes=0), self_condition=False)
    assert with_points["point_ce"] > 0 and 0 <= with_points["point_acc"] <= 1
    torch.testing.assert_close(with_points["loss"], without["loss"] + with_points["point_ce"] + with_points["point_kl"])


def test_commit_slots_are_laid_out_as_committing_infilling_decodes(tmp_path):
    """--commit-prob: a slot starts at its hole (its left neighbour is the row's encoder position
    before it, in the cache), the hole is all noise and holds what is left of the middle then
    fillers (all fillers: the stop signal), the suffix's next tokens follow clamped; the first
    position is marked committed, weighs 1 and is not distilled; the step reports its accuracy."""
    model, config = _model(tmp_path)
    V, filler = config.vocab_size, 5
    ac = AdaptConfig(seq_len=128, slots=4, canvas=24, max_middle=8, commit_prob=1.0, commit_hole=6, commit_head=8,
                     draft_prob=0.0, encoder_weight=0.0, encoder_kl_weight=0.0)
    g = torch.Generator().manual_seed(3)
    C, seen_stop, seen_middle = ac.canvas, 0, 0
    for seed in range(6):
        row = [2] + torch.randint(6, V, (ac.seq_len,), generator=g).tolist()
        batch = make_batch([row], ac, V, filler, 1, 0, torch.zeros(V, dtype=torch.bool), random.Random(seed), g,
                           torch.zeros(V, dtype=torch.bool))
        assert int(batch.committed.sum()) == ac.slots
        for k in range(ac.slots):
            lo, s = k * C, int(batch.attach[0, k])
            target, canvas = batch.targets[0, lo: lo + C], batch.canvas[0, lo: lo + C]
            assert batch.committed[0, lo] and not batch.committed[0, lo + 1: lo + C].any()
            assert batch.noised[0, lo: lo + 6].all() and not batch.noised[0, lo + 6: lo + C].any()
            m = int((target[:6] != filler).sum())
            assert target[:m].tolist() == row[s: s + m] and (target[m:6] == filler).all()
            n = int(batch.valid[0, lo: lo + C].sum())
            head = row[s + m: s + m + n - 6]
            head += [1] * (n - 6 - len(head))  # the row (the "document") ends: a clamped end of text
            assert canvas[6:n].tolist() == target[6:n].tolist() == head and len(head) <= 8 + 1  # head + end of text
            assert batch.weight[0, lo] == 1.0 and (batch.teacher_pos[0, lo: lo + C] == -1).all()
            seen_stop += m == 0
            seen_middle += m > 0
    assert seen_stop and seen_middle
    with torch.no_grad():
        out = losses(model, batch, ac, self_condition=False)
    assert 0 <= out["commit_acc"] <= 1 and out["commit_ce"] > 0
