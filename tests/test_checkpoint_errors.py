"""Every bad checkpoint gets an error naming the file or tensor; good layouts load."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import CheckpointError, Engine, EngineError
from engine.checkpoint import load_model
from engine.training.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("good") / "ck")


@pytest.fixture
def ck(good, tmp_path):
    path = tmp_path / "ck"
    shutil.copytree(good, path)
    return path


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def edit_tensors(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def expect(path, *fragments, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load_model(path, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_directory(tmp_path):
    expect(tmp_path / "nope", "nope", "does not exist")


def test_missing_config(ck):
    (ck / "config.json").unlink()
    expect(ck, "config.json", "not found")


def test_config_not_json(ck):
    (ck / "config.json").write_text("{not json")
    expect(ck, "config.json", "not valid JSON")


def test_wrong_model_type(ck):
    edit_config(ck, model_type="llama")
    expect(ck, "config.json", "model_type is 'llama'", "diffusion_gemma")


def test_missing_weights(ck):
    (ck / "model.safetensors").unlink()
    expect(ck, "no model.safetensors")


def test_pickle_weights_are_refused(ck):
    (ck / "model.safetensors").unlink()
    (ck / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    expect(ck, "pickle", "safetensors only")


def test_missing_tensor(ck):
    edit_tensors(ck, lambda t: t.pop("model.decoder.layers.1.mlp.up_proj.weight"))
    expect(ck, "model.decoder.layers.1.mlp.up_proj.weight", "missing")


def test_shape_mismatch(ck):
    def shrink(t):
        t["model.decoder.norm.weight"] = t["model.decoder.norm.weight"][:10].clone()
    edit_tensors(ck, shrink)
    expect(ck, "model.safetensors", "model.decoder.norm.weight", "shape (10,)", "(64,)")


def test_integer_dtype(ck):
    def to_int(t):
        t["model.decoder.norm.weight"] = t["model.decoder.norm.weight"].to(torch.int32)
    edit_tensors(ck, to_int)
    expect(ck, "model.decoder.norm.weight", "dtype torch.int32")


def test_nan_tensor(ck):
    def poison(t):
        t["model.decoder.layers.0.router.scale"][3] = float("nan")
    edit_tensors(ck, poison)
    expect(ck, "model.decoder.layers.0.router.scale", "NaN")


def test_truncated_safetensors(ck):
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect(ck, "model.safetensors", "not a readable safetensors file")


def test_corrupt_header(ck):
    (ck / "model.safetensors").write_bytes(b"\xff" * 64)
    expect(ck, "model.safetensors", "not a readable safetensors file")


def test_sharded_checkpoint_loads_the_same(ck, good):
    tensors = load_file(str(ck / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(ck / file))
    (ck / "model.safetensors").unlink()
    (ck / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    sharded, *_ = load_model(ck)
    whole, *_ = load_model(good)
    for (n, a), (_, b) in zip(sharded.named_parameters(), whole.named_parameters()):
        assert torch.equal(a, b), n


def test_missing_shard(ck):
    (ck / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.decoder.norm.weight": "model-00002-of-00002.safetensors"}}))
    (ck / "model.safetensors").unlink()
    expect(ck, "model-00002-of-00002.safetensors", "missing")


def test_hf_cache_snapshot_paths(ck, tmp_path):
    repo = tmp_path / "hub" / "models--google--diffusiongemma-26B-A4B-it"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(ck, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for path in (snapshot, repo):
        model, config, _, root = load_model(path)
        assert root == snapshot


def test_vision_tower_tensors_are_skipped_with_one_log_line(ck, caplog):
    def add_vision(t):
        t["model.encoder.vision_tower.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(4, 4)
        t["model.encoder.embed_vision.embedding_projection.weight"] = torch.zeros(4, 4)
    edit_tensors(ck, add_vision)
    with caplog.at_level(logging.INFO, logger="engine.checkpoint"):
        load_model(ck)
    lines = [r.getMessage() for r in caplog.records if "vision" in r.getMessage()]
    assert lines == ["skipping 2 vision-tower tensors (text-only engine)"]


@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                            ("float16", torch.float16), ("auto", torch.float32)])
def test_dtypes(good, dtype, expected):
    model, *_ = load_model(good, dtype=dtype)
    assert model.dtype == expected


def test_unknown_dtype(good):
    expect(good, "unknown dtype 'int8'", dtype="int8")


def test_parameters_equal_the_file_and_are_frozen(good):
    """(That loading maps rather than copies is measured by benchmarks/engine_latency.py as peak RSS.)"""
    from safetensors import safe_open

    model, *_ = load_model(good, dtype="float32")
    with safe_open(str(good / "model.safetensors"), framework="pt") as f:
        mapped = f.get_tensor("model.decoder.embed_tokens.weight")
    assert torch.equal(model.embed.weight, mapped)
    assert not model.embed.weight.requires_grad


def test_tokenizer_missing_or_broken(ck):
    (ck / "tokenizer.json").write_text("{broken")
    with pytest.raises(EngineError, match="tokenizer.json.*not a valid tokenizer.json"):
        Engine.load(ck)
    (ck / "tokenizer.json").unlink()
    with pytest.raises(EngineError, match="tokenizer.json: file not found"):
        Engine.load(ck)


def test_bad_device(good):
    with pytest.raises(EngineError, match="unknown device 'tpu'"):
        Engine.load(good, device="tpu")
