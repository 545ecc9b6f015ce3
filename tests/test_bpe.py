"""Guarantees of engine.bpe and of the committed engine/default_model/tokenizer.json."""

import json
import sysconfig
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from engine.training.bpe import PRETOKENIZE_PATTERN, SPECIAL_TOKENS, train_tokenizer

DEFAULT_TOKENIZER = Path(__file__).parent.parent / "engine/default_model/tokenizer.json"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_TRAINING_TEXTS = [(STDLIB / name).read_text(encoding="utf-8")[:3000]
                       for name in ("json/decoder.py", "textwrap.py", "bisect.py")]

TRICKY_TEXTS = [
    "",
    " ",
    "\n",
    "\t\tindented_with_tabs = 1\n",
    "windows = 1\r\nline_endings = 2\r\n",
    "lone\rcarriage\rreturns",
    "trailing spaces   \n\n\n   \n",
    " " * 1000,
    "x" + " " * 257 + "y",
    "    " * 12 + "deep = True\n",
    "\t  \t mixed \t indentation\n",
    "héllo wörld ñ ç ß",
    "日本語のテキストと中文",
    "emoji 🎉 family 👩\u200d👩\u200d👧 flag 🇫🇷",
    "e\u0301 combining, \u200b zero width, \ufeff bom, \u2028 line separator",
    "nul \x00 and \x7f and \x1b[31m escapes",
    "<|filler|> <pad><eos> <|fim_prefix|>def f():<|fim_suffix|><|fim_middle|><|file_sep|>",
    'const s = `${a}<bos>${b}`;\n{"k": "<unk>"}\n',
    "1234567890.5e-10 0xDEADBEEF",
]


@pytest.fixture(scope="module")
def tiny_tokenizer() -> Tokenizer:
    return train_tokenizer(TINY_TRAINING_TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def default_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(DEFAULT_TOKENIZER))
    tokenizer.encode_special_tokens = True      # not stored in tokenizer.json; see engine.bpe
    return tokenizer


@pytest.fixture(params=["tiny", "default"])
def tokenizer(request, tiny_tokenizer, default_tokenizer) -> Tokenizer:
    return {"tiny": tiny_tokenizer, "default": default_tokenizer}[request.param]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_decode_of_encode_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_decode_of_encode_is_exact_on_real_source(tokenizer):
    text = (STDLIB / "argparse.py").read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_special_tokens_have_fixed_ids(tokenizer):
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(9))
    assert [tokenizer.id_to_token(i) for i in range(9)] == list(SPECIAL_TOKENS)


def test_special_token_spellings_in_user_text_never_become_special_ids(tokenizer):
    text = "x = '" + "' + '".join(SPECIAL_TOKENS) + "'\n"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert min(ids) >= len(SPECIAL_TOKENS)


def test_tiny_tokenizer_trains_in_process_quickly_within_vocab_size():
    started = time.perf_counter()
    tokenizer = train_tokenizer(TINY_TRAINING_TEXTS, vocab_size=300)
    assert time.perf_counter() - started < 2
    assert 270 <= tokenizer.get_vocab_size() <= 300


def test_training_is_deterministic():
    first = train_tokenizer(TINY_TRAINING_TEXTS, vocab_size=300)
    second = train_tokenizer(TINY_TRAINING_TEXTS, vocab_size=300)
    assert first.to_str() == second.to_str()


def test_default_tokenizer_matches_the_code_that_trains_it(default_tokenizer):
    config = json.loads(DEFAULT_TOKENIZER.read_text(encoding="utf-8"))
    assert default_tokenizer.get_vocab_size() == 8192
    assert config["normalizer"] is None
    assert config["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == PRETOKENIZE_PATTERN
    assert [t["content"] for t in config["added_tokens"]] == list(SPECIAL_TOKENS)
    assert all(t["special"] for t in config["added_tokens"])


@pytest.mark.parametrize("line, tokens", [
    ("        return x\n", ["ĠĠĠĠĠĠĠ", "Ġreturn", "Ġx", "Ċ"]),
    ("    return x\n", ["ĠĠĠ", "Ġreturn", "Ġx", "Ċ"]),
    ("            self.value = value\n", ["ĠĠĠĠĠĠĠĠĠĠĠ", "Ġself", ".value", "Ġ=", "Ġvalue", "Ċ"]),
])
def test_indentation_is_one_token_and_keywords_keep_their_token_at_any_depth(
        default_tokenizer, line, tokens):
    assert default_tokenizer.encode(line).tokens == tokens
