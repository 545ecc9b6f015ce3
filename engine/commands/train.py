"""`dgemma train`: train a small DiffusionGemma on the local corpus; one option per TrainConfig field."""

from __future__ import annotations

import argparse
import logging

from engine.training.train import TrainConfig, train


def add_arguments(p):
    for f in TrainConfig.__dataclass_fields__.values():
        if isinstance(f.default, bool):
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__}))
    return 0
