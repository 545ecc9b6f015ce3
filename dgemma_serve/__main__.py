"""`python -m dgemma_serve`: the same as `dgemma serve`."""

import argparse
import sys

from .command import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="dgemma serve", description="the engine as an HTTP service")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
