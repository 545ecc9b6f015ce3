"""Print the parity table in docs/parity.md: our engine vs transformers 5.23.0, measured now.

    python tests/parity_table.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from hf_reference import CONFIGS, make_reference  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from engine.checkpoint import load_model  # noqa: E402
from engine.generate import generate_blocks  # noqa: E402
from engine.model import KVCache  # noqa: E402
from engine.sampler import TorchNoise  # noqa: E402


def measure(name: str, path: Path) -> list[str]:
    reference = make_reference(name, path)
    V = reference.config.text_config.vocab_size
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(1))
    canvas = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(2))
    sc = torch.randn(2, 8, V, generator=torch.Generator().manual_seed(3))
    truth = None
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        ref = reference if dtype == torch.float32 else reference.to(dtype)
        ours, config, gen, _ = load_model(path, dtype=dtype)
        with torch.no_grad():
            cache = DynamicCache(config=ref.config.text_config)
            ref_h = ref.model.encoder(input_ids=ids, past_key_values=cache).last_hidden_state
            kv = KVCache(config, 2, dtype, "cpu")
            our_h = ours.encode(ids, kv)
            ref_l = ref(decoder_input_ids=canvas, past_key_values=cache, self_conditioning_logits=sc.to(dtype)).logits
            our_l = ours.logits(ours.decode(canvas, ours.decoder_context(kv, 2), kv.length, sc_logits=sc.to(dtype)))
        enc = (our_h.float() - ref_h.float()).abs().max().item()
        dec = (our_l - ref_l).abs().max().item()
        if truth is None:
            truth = (ref_h.float(), ref_l.float())
            same = 0
            for seed in range(10):
                prompt = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(100 + seed))
                torch.manual_seed(seed)
                a = ref.generate(prompt, max_new_tokens=24).sequences
                torch.manual_seed(seed)
                b = generate_blocks(ours, prompt, gen, noise=TorchNoise(V), max_new_tokens=24).sequences
                same += torch.equal(a, b)
            extra = f"{same}/10 | —"
        else:
            med = lambda x, t: (x.float() - t).abs().mean(-1).median().item()  # noqa: E731
            extra = (f"— | hidden {med(our_h, truth[0]):.3f} vs {med(ref_h, truth[0]):.3f}; "
                     f"logits {med(our_l, truth[1]):.3f} vs {med(ref_l, truth[1]):.3f}")
        rows.append(f"| {name} | {str(dtype).removeprefix('torch.')} | {enc:.2e} | {dec:.2e} "
                    f"(logit scale {ref_l.abs().max().item():.2f}) | {extra} |")
    return rows


def main():
    print("| config | dtype | encoder hidden max abs diff | decoder logits max abs diff | generate identical "
          "seeds | bf16 median error vs fp32: ours vs reference |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            for row in measure(name, Path(tmp) / name):
                print(row)


if __name__ == "__main__":
    main()
