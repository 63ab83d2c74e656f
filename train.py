"""Trains a captioner: `python train.py [--config configs/NAME.py] [--set key=value ...]`.

With no arguments it trains the default model on the embedded shapes dataset
(generated offline on first use) and writes `saved_models/shapes.keras`, the
resolved config, the training history and a captioning report beside it.
Rerun the same command after an interruption to resume where it stopped.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from vlm.config import ConfigError, apply_overrides, load_config  # noqa: E402

DEFAULT_CONFIG = "configs/shapes.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"a Python config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config field, e.g. --set train.epochs=3")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    from vlm.training import train  # heavy imports after the config is known good

    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
