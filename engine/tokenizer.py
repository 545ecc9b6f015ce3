"""Text <-> token ids through the `tokenizers` library, from a checkpoint's `tokenizer.json`.

Knows the special tokens a checkpoint defines (bos / eos / pad, FIM markers, the filler
token used for length control) and nothing about the model.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .constants import FILLER, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from .errors import CheckpointError

# other spellings seen in public checkpoints
_FIM_ALIASES = {
    FIM_PREFIX: ("<fim_prefix>", "<|fim▁begin|>"),
    FIM_SUFFIX: ("<fim_suffix>", "<|fim▁hole|>"),
    FIM_MIDDLE: ("<fim_middle>", "<|fim▁end|>"),
}


class Tokenizer:
    def __init__(self, path: str | Path, bos_id: int | None = None, eos_ids=(), pad_id: int | None = None):
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: file not found (the checkpoint needs a tokenizer.json)")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from None
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        self.fim_prefix_id = self._special(FIM_PREFIX)
        self.fim_middle_id = self._special(FIM_MIDDLE)
        self.fim_suffix_id = self._special(FIM_SUFFIX)
        self.filler_id = self._special(FILLER)
        self.special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        # user text that spells a special token ("<|filler|>" in a source file) must stay text
        self._tok.encode_special_tokens = True

    def _special(self, token: str) -> int | None:
        for name in (token, *_FIM_ALIASES.get(token, ())):
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        return None

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id)

    def encode(self, text: str) -> list[int]:
        """Plain text to ids: no bos/eos added, special-token spellings in the text stay text."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Ids to text, dropping special tokens (bos/eos/pad/filler)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def token_text(self, i: int) -> str:
        return self._tok.id_to_token(int(i)) or ""
