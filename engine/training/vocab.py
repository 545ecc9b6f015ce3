"""A vocabulary for code: Gemma's 262,144 tokens trimmed to the ones code, JSON and Markdown use.

The LM head and the self-conditioning soft embedding are vocabulary-wide, ~70 % of a denoising
step at 262k; a trimmed table keeps: the special tokens, every byte-fallback token (so any text
still encodes), the top tokens by frequency on the training corpus, and the merge parents each
kept token is built from (so the BPE still reaches it). Merges that produce a dropped token go.
Four of Gemma's spare `<unusedN>` tokens become the filler and FIM markers. Knows the
tokenizer.json layout and the corpus reader, not the model.

    python -m engine.training.vocab --tokenizer BASE.gguf --corpus data/corpus --size 32768 --out runs/vocab

`--tokenizer` takes the base's tokenizer.json, or its GGUF: the tokenizer is then rebuilt from the
GGUF metadata by transformers' GGUF tokenizer builder (tooling only; a well-kept implementation of
SentencePiece-BPE-from-scores we do not rewrite).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .corpus import iter_documents

log = logging.getLogger("dgemma.vocab")

# spare Gemma tokens renamed to the names engine/tokenizer.py looks up
RENAMES = {"<unused0>": "<|filler|>", "<unused1>": "<|fim_prefix|>", "<unused2>": "<|fim_middle|>",
           "<unused3>": "<|fim_suffix|>"}
ALWAYS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *RENAMES, "<start_of_turn>", "<end_of_turn>")


def sample_texts(corpus: str | Path, split: str, max_bytes: int, every: int = 1) -> list[str]:
    texts, size = [], 0
    for i, doc in enumerate(iter_documents(str(corpus), split)):
        if i % every:
            continue
        texts.append(doc["text"])
        size += len(doc["text"].encode())
        if size >= max_bytes:
            break
    return texts


def token_counts(tok: HFTokenizer, texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        counts.update(enc.ids)
    return counts


def merge_parents(data: dict) -> dict[str, tuple[str, str]]:
    """token -> the best-ranked merge that produces it (the path BPE takes to it)."""
    parents: dict[str, tuple[str, str]] = {}
    for a, b in data["model"]["merges"]:
        parents.setdefault(a + b, (a, b))
    return parents


def choose(data: dict, counts: Counter, size: int) -> list[int]:
    """Base ids to keep, in their base order (so pad/eos/bos stay 0/1/2)."""
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    keep = {vocab[t] for t in ALWAYS if t in vocab}
    keep |= {i for t, i in vocab.items() if t.startswith("<0x") and len(t) == 6 and t.endswith(">")}
    parents = merge_parents(data)

    def add(i: int):
        stack = [i]
        while stack:
            j = stack.pop()
            if j in keep:
                continue
            keep.add(j)
            pair = parents.get(by_id[j])
            if pair is not None:
                stack += [vocab[pair[0]], vocab[pair[1]]]

    for i, _ in counts.most_common():
        if len(keep) >= size:
            break
        add(i)
    return sorted(keep)


def trimmed_tokenizer(data: dict, keep: list[int]) -> dict:
    """tokenizer.json over the kept ids, renumbered 0..len(keep)-1 in base order."""
    out = copy.deepcopy(data)
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    new_id = {old: new for new, old in enumerate(keep)}
    kept_tokens = {by_id[i] for i in keep}
    out["model"]["vocab"] = {RENAMES.get(by_id[old], by_id[old]): new for old, new in new_id.items()}
    out["model"]["merges"] = [[a, b] for a, b in data["model"]["merges"]
                              if a in kept_tokens and b in kept_tokens and a + b in kept_tokens]
    added = []
    for t in data["added_tokens"]:
        if t["id"] in new_id:
            added.append({**t, "id": new_id[t["id"]], "content": RENAMES.get(t["content"], t["content"]),
                          **({"special": True} if t["content"] in RENAMES else {})})
    out["added_tokens"] = added
    if out.get("post_processor"):
        out["post_processor"] = None  # the engine adds bos itself
    return out


def bytes_per_token(tok: HFTokenizer, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tok = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return n_bytes / max(1, n_tok)


def base_tokenizer_json(path: str | Path) -> dict:
    """tokenizer.json of the base: read, or rebuilt from a GGUF's metadata."""
    path = Path(path)
    if path.suffix != ".gguf":
        return json.loads(path.read_text())
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return json.loads(backend.to_str())


def build(tokenizer: str | Path, corpus: str | Path, size: int, out: str | Path, sample_mb: int = 24) -> dict:
    data = base_tokenizer_json(tokenizer)
    full = HFTokenizer.from_str(json.dumps(data))
    texts = sample_texts(corpus, "train", sample_mb << 20, every=3)
    counts = token_counts(full, texts)
    keep = choose(data, counts, size)
    trimmed = trimmed_tokenizer(data, keep)
    small = HFTokenizer.from_str(json.dumps(trimmed))
    heldout = sample_texts(corpus, "heldout", 4 << 20)
    new_id = {old: new for new, old in enumerate(keep)}
    same = sum(a.ids == [new_id.get(i, -1) for i in b.ids] for a, b in
               zip(small.encode_batch(heldout[:500], add_special_tokens=False),
                   full.encode_batch(heldout[:500], add_special_tokens=False)))
    report = {
        "base_vocab": len(data["model"]["vocab"]), "kept": len(keep), "sample_mb": sample_mb,
        "distinct_tokens_seen": len(counts),
        "bytes_per_token_heldout": {"full": round(bytes_per_token(full, heldout), 4),
                                    "trimmed": round(bytes_per_token(small, heldout), 4)},
        "heldout_docs_tokenized_identically": f"{same}/{min(500, len(heldout))}",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(trimmed, ensure_ascii=False))
    (out / "kept_tokens.json").write_text(json.dumps(keep))
    (out / "vocab_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.training.vocab", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="the base tokenizer.json or .gguf (Gemma 3, full vocabulary)")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--size", type=int, default=32768)
    p.add_argument("--sample-mb", type=int, default=24)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(build(args.tokenizer, args.corpus, args.size, args.out, args.sample_mb), indent=2))


if __name__ == "__main__":
    main()
