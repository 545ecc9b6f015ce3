"""`dgemma`: one parser, one subcommand per module.

Each command is a module exposing `add_arguments(parser)` and `run(args) -> int`, listed in
COMMANDS below with its one-line help. Only the chosen command's module is imported, so
`dgemma --help` stays fast and the runtime never imports the tooling (engine.training) unless
a tooling command runs. Adding a command: write the module, add one line to COMMANDS.

    dgemma [--threads N] COMMAND [...]        dgemma COMMAND --help for its options
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import warnings

from . import set_threads
from .errors import EngineError

COMMANDS = {  # name: (module with add_arguments(parser) and run(args) -> int, one-line help)
    "generate": ("engine.commands.generate", "continue a prompt"),
    "fill": ("engine.commands.fill", "print the middle at a cursor in FILE"),
    "inspect": ("engine.commands.inspect", "parameter counts and device bytes per quantization, from config.json"),
    # the HTTP service lives above the engine (dgemma_serve -> engine); only this table names it
    "serve": ("dgemma_serve.command", "the engine as an HTTP service (llama.cpp /infill, OpenAI-compatible)"),
    "infill-batch": ("engine.commands.infill_batch", "fill HumanEval-infilling style tasks into a JSONL file"),
    "eval-infilling": ("engine.commands.eval_infilling", "pass@1 on HumanEval infilling"),
    "eval-loss": ("engine.commands.eval_loss", "the training objective on the held-out corpus split"),
    "sweep": ("engine.commands.sweep", "decoding sweep (steps, canvas context) on held-out holes"),
    "corpus": ("engine.commands.corpus", "build the training corpus from text on this machine"),
    "bpe": ("engine.commands.bpe", "train the byte-level BPE tokenizer on the corpus"),
    "train": ("engine.commands.train", "train a small DiffusionGemma on the corpus, resumably"),
    "export": ("engine.commands.export", "a training run's checkpoint as a model directory"),
    "convert": ("engine.commands.convert", "a Gemma 3 checkpoint (GGUF or HF) as a DiffusionGemma checkpoint"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command`'s module imported and its options added. An
    ImportError there (a tooling command without the `train` extra) propagates to main."""
    parser = argparse.ArgumentParser(prog="dgemma", description="DiffusionGemma block-diffusion engine")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads for this process (default: torch's own choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    # before any command imports torch, which warns at import when NumPy is absent (the runtime needs none)
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as e:
        return missing(command, e)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["dgemma", *argv])  # what a command's stamped JSON records
    try:
        if args.threads is not None:
            set_threads(args.threads)
        return args.run(args) or 0
    except EngineError as e:
        print(f"dgemma: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a command importing its tooling when it runs
        return missing(command, e)


def missing(command: str | None, error: ModuleNotFoundError) -> int:
    print(f"dgemma: error: {command} needs the {error.name} module, which is not installed (the tooling "
          f"commands need the train extra: pip install 'dgemma-ls[train]')", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
