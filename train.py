"""Trains a captioner: `python train.py [--config configs/NAME.py] [--set key=value ...]`.

With no arguments it trains the default model on the embedded shapes dataset
(generated offline on first use) and writes `saved_models/shapes.keras`, the
resolved config, the training history and a captioning report beside it.
Rerun the same command after an interruption to resume where it stopped.

Exit codes: 0 trained; 2 a bad config or command line (one line on stderr
names the key and the value); 3 the loss became NaN or infinite (one line
on stderr says where; the final model is not written); 130 interrupted
(Ctrl-C: one line says what is saved and how to resume).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from vlm.config import DISTRIBUTE_MODES  # noqa: E402
from vlm.config import ConfigError  # noqa: E402
from vlm.config import apply_overrides  # noqa: E402
from vlm.config import load_config  # noqa: E402

DEFAULT_CONFIG = "configs/shapes.py"
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"a Python config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config field, e.g. --set train.epochs=3")
    parser.add_argument("--distribute", choices=DISTRIBUTE_MODES, default=None,
                        help="devices: none (one device), data_parallel, model_parallel "
                             "(JAX), or auto (data parallel when several are visible); "
                             "the global batch is split across them (default: the "
                             "config's train.distribute)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        distribute = [f"train.distribute={args.distribute}"] if args.distribute else []
        config = apply_overrides(load_config(args.config), args.overrides + distribute)
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    note = choose_backend(config.train.backend)
    if note:
        print(note, flush=True)
    from vlm.distribution import DistributionError
    from vlm.training import TrainingDiverged  # heavy: after the config is good
    from vlm.training import train  # heavy: after the config is good

    started = time.time()
    try:
        train(config)
    except KeyboardInterrupt:
        print(f"train.py: {interrupted(config, started)}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except DistributionError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def choose_backend(backend):
    """Sets KERAS_BACKEND to the config's `train.backend` unless the user chose one.

    KERAS_BACKEND, when set, wins, and so does a Keras already imported (a
    backend is fixed once per process). Returns a line to print, or None.
    """
    if not backend or "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return None
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        return (f"train.backend={backend!r} trains this config fastest, but {backend} is not "
                "installed: Keras' default backend runs it")
    os.environ["KERAS_BACKEND"] = backend
    return None


def interrupted(config, started):
    """What an interrupted run leaves, and how to go on, in one line."""
    from vlm.callbacks import read_backup
    from vlm.training import output_paths

    paths = output_paths(config)
    model = paths["model"]
    if os.path.exists(model) and os.path.getmtime(model) >= started:
        return (f"interrupted after training: {model} is saved, its report is not "
                f"(python evaluate.py --model {model} scores it)")
    backup = read_backup(paths["backup"])
    if backup:
        done = backup["epoch"]
        saved = f"epoch {done} is" if done == 1 else f"epochs 1-{done} are"
        return (f"interrupted in epoch {done + 1}; {saved} saved in {paths['backup']}: "
                "rerun the same command to resume")
    return ("interrupted before the first epoch ended; nothing is saved yet: rerun the same "
            "command to start again")


if __name__ == "__main__":
    sys.exit(main())
