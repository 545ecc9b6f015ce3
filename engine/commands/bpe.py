"""`dgemma bpe`: train the byte-level BPE tokenizer on the corpus (engine/training/bpe.py) and
print its held-out bytes per token."""

from __future__ import annotations

import json
import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--vocab-size", default=8192, type=int)
    p.add_argument("--out", required=True, type=Path, help="tokenizer.json to write "
                   "(the embedded model's: engine/default_model/tokenizer.json)")
    p.add_argument("--sample-scale", default=1.0, type=float,
                   help="multiply the per-language training budgets (quick experiments)")


def run(args) -> int:
    from engine.training.bpe import (HELDOUT_SAMPLE_BYTES, TRAINING_SAMPLE_BYTES, bytes_per_token, language_sample,
                                     train_tokenizer)

    budget = {k: int(v * args.sample_scale) for k, v in TRAINING_SAMPLE_BYTES.items()}
    started = time.time()
    sample = language_sample(args.corpus, "train", budget)
    tokenizer = train_tokenizer((document["text"] for document in sample), args.vocab_size)
    trained_seconds = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out))
    heldout = language_sample(args.corpus, "heldout", {language: HELDOUT_SAMPLE_BYTES for language in budget})
    print(json.dumps({"vocab_size": tokenizer.get_vocab_size(), "train_seconds": round(trained_seconds, 1),
                      "heldout": bytes_per_token(tokenizer, heldout)}, indent=2))
    return 0
