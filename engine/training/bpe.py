"""Trains the byte-level BPE tokenizer (a `tokenizer.json`) on the corpus.

Owns the special-token table and its fixed ids, the code-friendly pre-tokenization and the
training sample. Loading and using the tokenizer at run time is engine/tokenizer.py's job;
this module knows nothing about the model.

    dgemma bpe --corpus data/corpus --vocab-size 8192 \
        --out engine/default_model/tokenizer.json
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .corpus import iter_documents

# Fixed ids 0..8, in this order, for every tokenizer we train.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<|fim_prefix|>", "<|fim_middle|>",
                  "<|fim_suffix|>", "<|filler|>", "<|file_sep|>")

# Pre-token boundaries (cl100k-like, without English contractions: in code a quote starts a
# string far more often than it starts "'s"). Newlines split from the indentation after them,
# and a run of spaces gives all but its last space to one pre-token, so "\n        return"
# becomes "\n" + 7 spaces + " return": indentation costs one token per line, not one per
# space, and " return" stays the same token at every depth. Numbers split every 3 digits.
# Pieces only decide where merges may happen; ByteLevel then maps every byte to a symbol, so
# decode(encode(text)) == text for any string.
PRETOKENIZE_PATTERN = (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Training sample per language, in bytes, taken in corpus order (a deterministic shuffle).
# Python is ~90% of the corpus; the small languages get a larger share here so their syntax
# earns merges too. The cfnlint/botocore schemas dominate JSON, hence its small budget.
TRAINING_SAMPLE_BYTES = {"python": 36_000_000, "javascript": 5_000_000, "markdown": 5_000_000,
                         "json": 3_000_000, "typescript": 1_000_000}
HELDOUT_SAMPLE_BYTES = 2_000_000     # per language, for the bytes/token report


def untrained_tokenizer() -> Tokenizer:
    """A BPE tokenizer with our pre-tokenizer and decoder and no normalizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on texts, with SPECIAL_TOKENS at ids 0..8.

    Special-token spellings inside texts are encoded as ordinary text: the returned tokenizer
    has `encode_special_tokens = True`. tokenizer.json cannot store that flag, so whoever
    loads the file must set it again (engine/tokenizer.py does).
    """
    tokenizer = untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def language_sample(corpus: str, split: str, budget: dict[str, int]) -> Iterator[dict]:
    """Documents of a split in corpus order until each language's byte budget is spent."""
    spent = defaultdict(int)
    for document in iter_documents(corpus, split):
        language = document["language"]
        if spent[language] < budget.get(language, 0):
            spent[language] += len(document["text"].encode("utf-8"))
            yield document


def bytes_per_token(tokenizer: Tokenizer, documents: Iterable[dict]) -> dict[str, dict]:
    """Per language: UTF-8 bytes per token and tokens per line of the given documents."""
    totals = defaultdict(lambda: {"bytes": 0, "tokens": 0, "lines": 0})
    for document in documents:
        text = document["text"]
        total = totals[document["language"]]
        total["bytes"] += len(text.encode("utf-8"))
        total["tokens"] += len(tokenizer.encode(text, add_special_tokens=False).ids)
        total["lines"] += text.count("\n") + 1
    return {language: {"bytes_per_token": round(t["bytes"] / t["tokens"], 3),
                       "tokens_per_line": round(t["tokens"] / t["lines"], 2),
                       "bytes": t["bytes"]}
            for language, t in sorted(totals.items())}
