"""Offline tooling around the engine: the corpus, the tokenizer trainer, training, evaluation,
decoding sweeps and tiny test checkpoints. The runtime (engine.api and what it imports,
dgemma_ls, kernels) never imports this package; it may need the `train` extra (numpy).
"""
