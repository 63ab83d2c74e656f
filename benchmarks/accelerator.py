"""The benchmark on an accelerator, without TensorFlow (JAX and PyTorch).

    KERAS_BACKEND=jax python -m benchmarks.accelerator --output jax.json
    KERAS_BACKEND=torch python -m benchmarks.accelerator --output torch.json

What `benchmarks/run.py` measures, for machines that have no TensorFlow (a
GPU box with only JAX or PyTorch): training examples/s of ours and the
keras-hub baseline on a fixed in-memory batch (NumPy arrays into `fit`, no
tf.data), and ms per caption of cached greedy decoding (20 new tokens) at
batch 1 and 32, through the same compiled loop `Captioner.generate` runs,
minus detokenization (which needs the tokenizer, and so TensorFlow). It also
proves that training and decoding compile and run under XLA on that device.
"""

import argparse
import json
import statistics
import sys

from benchmarks.run import GENERATION_BATCHES
from benchmarks.run import NEW_TOKENS
from benchmarks.run import TRAIN_BATCH
from benchmarks.run import best_seconds
from benchmarks.run import build_trainer
from benchmarks.run import ref_config
from benchmarks.run import step_timer
from benchmarks.run import training_batch
from benchmarks.run import training_flops_per_example

MODES = {"jax": ["jit:float32", "jit:mixed_bfloat16"],
         "torch": ["nojit:float32", "nojit:mixed_bfloat16"]}


def device_name():
    import keras

    if keras.config.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def synchronize(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def measure_training(c, vocabulary_size, steps, rounds):
    import keras
    import numpy as np

    x, y = training_batch(c, vocabulary_size)
    repeats = 2 + steps
    x = {k: np.concatenate([v] * repeats) for k, v in x.items()}
    y = np.concatenate([y] * repeats)
    flops = training_flops_per_example(c, vocabulary_size)
    results = {}
    for mode in MODES[keras.config.backend()]:
        jit, dtype = mode.split(":")
        models = {w: build_trainer(w, c, vocabulary_size, jit == "jit", dtype)
                  for w in ("ours", "baseline")}
        rates = {w: [] for w in models}
        for round_ in range(rounds + 1):  # round 0 compiles and warms up
            for which, model in models.items():
                timer = step_timer(2)
                model.fit(x, y, batch_size=TRAIN_BATCH, epochs=1, shuffle=False,
                          verbose=0, callbacks=[timer])
                if round_:
                    rates[which].append(TRAIN_BATCH / timer.seconds_per_step())
        entry = {}
        for which, values in rates.items():
            rate = statistics.median(values)
            entry[which] = {"examples_per_s": round(rate, 1),
                            "tflops": round(rate * flops / 1e12, 2)}
        entry["speedup"] = round(entry["ours"]["examples_per_s"]
                                 / entry["baseline"]["examples_per_s"], 2)
        results[mode] = entry
        print(mode, json.dumps(entry), file=sys.stderr, flush=True)
    return results


def measure_generation(c, vocabulary_size, repeats):
    import keras
    import numpy as np

    from benchmarks.baseline import build_baseline
    from benchmarks.baseline import make_greedy_generate
    from benchmarks.run import vocabulary
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.models.captioner import build_captioner
    from vlm.samplers import GreedySampler

    keras.utils.set_random_seed(0)
    tokenizer = CaptionTokenizer(vocabulary=vocabulary(vocabulary_size))
    ours = build_captioner(c, vocabulary_size, tokenizer=tokenizer)
    tokenizer.end_token_id = -1  # never stop early: always NEW_TOKENS steps
    ours_loop = ours.make_generate_function(GreedySampler(), NEW_TOKENS)
    baseline_loop = make_greedy_generate(build_baseline(c, vocabulary_size), NEW_TOKENS)
    rng = np.random.default_rng(0)
    results = {}
    for batch in GENERATION_BATCHES:
        images = (rng.random((batch, c.image_size, c.image_size, 3)) * 255).astype("float32")
        noise = np.zeros((NEW_TOKENS, batch, 1), "float32")
        candidates = {
            "ours_cached": lambda: synchronize(ours_loop(images, noise)[0]),
            "baseline_cached": lambda: synchronize(baseline_loop(images)),
        }
        seconds = best_seconds(candidates, repeats)
        entry = {f"{name}_ms": round(t / batch * 1000.0, 3) for name, t in seconds.items()}
        entry["vs_baseline"] = round(entry["baseline_cached_ms"] / entry["ours_cached_ms"], 2)
        results[f"batch_{batch}"] = entry
        print(batch, json.dumps(entry), file=sys.stderr, flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    import keras

    c = ref_config()
    result = {"backend": keras.config.backend(), "device": device_name(),
              "training": measure_training(c, c.vocabulary_size, args.steps, args.rounds),
              "generation": measure_generation(c, c.vocabulary_size, args.repeats)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
