"""`dgemma-ls`: start the language server on stdio (the default) or on a TCP port."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dgemma-ls",
        description="Language server for inline completions, fill-in-the-middle and JSON / Markdown-table "
        "repair with a DiffusionGemma model on the CPU.",
    )
    parser.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    parser.add_argument("--tcp", action="store_true", help="listen for one client on a TCP port instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --tcp (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2087, help="port for --tcp (default: 2087)")
    parser.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="checkpoint directory (default: the embedded model); the dgemma.model setting overrides it",
    )
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "int4", "fp8"],
                        help="weight-only quantization while the model loads (docs/quantization.md); "
                        "the dgemma.quantize setting overrides it")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,  # --log-level debug works too
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the log written to stderr (default: WARNING)",
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's own, which honours OMP_NUM_THREADS); "
                        "the dgemma.threads setting overrides it")
    remote = parser.add_argument_group("remote backend (docs/serve.md; the dgemma.backend* settings override these)")
    remote.add_argument("--backend", choices=["local", "dgemma", "openai"], default=None,
                        help="local: the in-process engine (default); dgemma: a `dgemma serve`; openai: any "
                        "OpenAI-compatible server")
    remote.add_argument("--backend-url", default=None, metavar="URL", help="e.g. http://gpu-box:8012")
    remote.add_argument("--backend-model", default=None, metavar="NAME", help="model name to send")
    remote.add_argument("--backend-api-key-env", default=None, metavar="NAME",
                        help="environment variable holding the API key")
    remote.add_argument("--backend-timeout-ms", type=int, default=None, metavar="MS", help="per request (10000)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser.parse_args(argv)


def use_system_malloc() -> None:
    """Run the server under PYTHONMALLOC=malloc (re-executing itself, same pid and pipes) unless
    PYTHONMALLOC is set. py-tree-sitter allocates through PyMem_Malloc, so a big document's syntax
    tree fills Python's 1 MiB small-object arenas, and one small object still alive in an arena
    keeps all of it: after five 1.7 M-character files were closed the server stayed 9-14 % above
    its ready size and grew 6-9 MB with every round of them; with glibc's malloc (and malloc_trim
    on close) it comes back to +2-3 %, flat (docs/reliability.md). The price: parsing such a
    file takes about 30 % more CPU."""
    if sys.platform.startswith("linux") and "PYTHONMALLOC" not in os.environ and sys.executable:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONMALLOC": "malloc"})


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        use_system_malloc()
    args = parse_args(argv)
    # stdout carries the protocol on stdio: every log line goes to stderr
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":
        logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))

    # torch warns at import when NumPy is absent (the server needs none): silence it before importing torch
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    from dgemma_ls.server import VERSION, build_server  # after logging: importing torch is slow and may log

    if args.version:
        print(f"dgemma-ls {VERSION}")
        return
    if args.threads is not None:
        from engine import EngineError, set_threads

        try:
            set_threads(args.threads)
        except EngineError as error:
            sys.exit(f"dgemma-ls: error: --threads: {error}")
    from dgemma_ls.settings import Settings

    cli_backend = Settings(backend=args.backend, backend_url=args.backend_url, backend_model=args.backend_model,
                           backend_api_key_env=args.backend_api_key_env, backend_timeout_ms=args.backend_timeout_ms)
    server = build_server(cli_model=args.model, cli_quantize=args.quantize, cli_backend=cli_backend)
    if args.tcp:
        server.start_tcp(args.host, args.port)
    else:
        server.start_io()


if __name__ == "__main__":
    main()
