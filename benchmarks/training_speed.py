"""Training speed of a config's model on each backend: ms per `fit` step, ms per caption.

    python -m benchmarks.training_speed --config configs/shapes.py \
        --backends tensorflow,jax,torch --captions-per-image 1,4 \
        --output benchmarks/results/cpu_training_speed_DATE.json
    python -m benchmarks.training_speed --backends tensorflow --captions-per-image 1 \
        --set train.mixed_precision=mixed_bfloat16    # any config override

One subprocess per backend (`KERAS_BACKEND` is fixed per process) builds the
config's model at its sizes, compiles it as `train.py` does (`jit_compile`
"auto": XLA on TensorFlow and JAX, eager on PyTorch) and times `fit` on one
random batch of the config's shape, repeated: the median gap between the
ends of consecutive steps of one `fit` (the best of three rounds), so setup
and compilation do not count. The data pipeline is not timed (`train.py` reads cached arrays).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.report import write_results
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def measure(config_path, captions_per_image, steps=30, rounds=3, overrides=()):
    """ms per step of the config's model under this process' backend (best of `rounds`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from vlm.backend import resolve_jit_compile
    from vlm.config import apply_overrides
    from vlm.config import load_config
    from vlm.data.tokenizer import SPECIAL_TOKENS
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.optimization import make_optimizer
    from vlm.training import build_model

    config = apply_overrides(load_config(config_path),
                             [*overrides, f"train.captions_per_image={captions_per_image}"])
    model_config, train_config = config.model, config.train
    vocabulary = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(
        model_config.vocabulary_size - len(SPECIAL_TOKENS))]
    tokenizer = CaptionTokenizer(vocabulary=vocabulary)
    keras.utils.set_random_seed(0)
    if train_config.mixed_precision:
        keras.config.set_dtype_policy(train_config.mixed_precision)
    model = build_model(model_config, tokenizer, dtype=train_config.mixed_precision)
    model.compile(optimizer=make_optimizer(train_config, 1000),
                  jit_compile=resolve_jit_compile(train_config.jit_compile))
    batch = train_config.batch_size
    rng = np.random.default_rng(0)
    size = model_config.image_size
    images = rng.uniform(0, 255, (batch // captions_per_image, size, size, 3)).astype("float32")
    tokens = rng.integers(4, model_config.vocabulary_size,
                          (batch, model_config.sequence_length)).astype("int32")
    data = tf.data.Dataset.from_tensors(({"images": images, "tokens": tokens}, tokens)).repeat()
    # A repeated tf.data batch: nothing to shuffle. The first steps compile and warm up.
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)

    class StepClock(keras.callbacks.Callback):
        """When each step ends; the gaps between ends are step times."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    per_step = float("inf")
    for _ in range(rounds):  # eager PyTorch varies by 2x from one fit to the next
        clock = StepClock()
        model.fit(data, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock],
                  shuffle=False)
        per_step = min(per_step, float(np.median(np.diff(clock.ends[1:]))))
    return {"backend": keras.config.backend(), "captions_per_image": captions_per_image,
            "mixed_precision": train_config.mixed_precision,
            "batch_size": batch, "ms_per_step": round(per_step * 1000, 1),
            "ms_per_caption": round(per_step * 1000 / batch, 2),
            "ms_per_image": round(per_step * 1000 / (batch // captions_per_image), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_speed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes.py")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--captions-per-image", default="1,4")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--output", default="benchmarks/results/training_speed.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, as train.py's --set (repeatable)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.steps,
                                 overrides=args.set)))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    rows = {}
    for backend in backends:
        for k in (int(k) for k in args.captions_per_image.split(",")):
            print(f"... {backend}, {k} caption(s) per image", flush=True)
            result = subprocess.run(
                [sys.executable, "-m", "benchmarks.training_speed", "--steps", str(args.steps),
                 *(f"--set={override}" for override in args.set),
                 "--child", args.config, str(k)],
                cwd=REPO, capture_output=True, text=True,
                env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"))
            if result.returncode:
                raise RuntimeError(f"{backend}: {result.stderr[-3000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows[f"{backend}, {k} per image"] = row
            print(json.dumps(row), flush=True)
    results = {"command": "python -m benchmarks.training_speed "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": dict(machine(), matmul_peak_gflops=round(matmul_peak_gflops(), 1)),
               "date": time.strftime("%Y-%m-%d"), "backends": [],
               "training_speed": rows}
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
