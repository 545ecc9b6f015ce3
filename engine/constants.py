"""Names and sizes that the runtime, the tooling and the language server share: the special
tokens of the tokenizers we train (their order is their ids) and the middle each completion
scope may fill. Plain values; imports nothing.
"""

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FILLER = "<|filler|>"  # ends a middle shorter than its hole (length control, engine/infill.py)
FILE_SEP = "<|file_sep|>"

# ids 0..8 of every tokenizer engine.training.bpe trains, in this order
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FILLER, FILE_SEP)
PAD_ID, EOS_ID, BOS_ID, FILLER_ID = (SPECIAL_TOKENS.index(t) for t in (PAD, EOS, BOS, FILLER))

# the most tokens a completion may insert, per scope (the language server picks the scope)
MAX_MIDDLE_TOKENS = {"line": 24, "statement": 48, "block": 128}
