"""Speed and memory of our captioner next to the keras-hub baseline.

    python -m benchmarks                       # every backend, one subprocess each
    python -m benchmarks --backends jax        # one backend
    python -m benchmarks --quick               # fewer steps, for a smoke run

For each backend, in its own process, at the reference size ("ref": 64x64
images, patch 8, 4+4 layers of width 256, vocabulary 1000, 24-token
captions, batch 64), with random weights and a fixed in-memory batch:

1. training: examples/s of `fit` steps after warm-up, ours and the
   baseline (`benchmarks/baseline.py`) alternating, with `jit_compile` on and
   off; GFLOP/s from the analytic count (`training_flops_per_example`) and
   its fraction of the fp32 matmul peak measured in the same process;
2. generation: ms per caption for 20 new tokens at batch 1 and 32: ours
   (cached, compiled), ours naive (whole model per step) and the baseline's
   cached keras-hub loop;
3. memory: peak resident memory (ru_maxrss) of a process that only trains
   and of one that only generates, ours.

Then, once: ms per image through the exported SavedModel (TensorFlow).
Results go to `benchmarks/results/benchmarks.json` and a markdown table.
On PyTorch, `jit_compile=True` means `torch.compile`, which compiles for
minutes here; it runs only with `--torch-compile`.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.report import write_results
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops

BACKENDS = ("tensorflow", "jax", "torch")
NEW_TOKENS = 20
TRAIN_BATCH = 64
# Ours also trains with this many captions per image in a batch (16 images x
# 4 captions): `train.captions_per_image`, the shapes dataset has 3-5 and COCO
# 5 captions per image. The baseline has no such mode.
CAPTIONS_PER_IMAGE = 4
GENERATION_BATCHES = (1, 32)


def ref_config():
    from vlm.config import ModelConfig

    return ModelConfig(image_size=64, patch_size=8, encoder_layers=4, encoder_heads=4,
                       encoder_dim=256, encoder_mlp_dim=1024, decoder_layers=4,
                       decoder_heads=4, decoder_dim=256, decoder_mlp_dim=1024,
                       sequence_length=24, vocabulary_size=1000, dropout=0.0)


def training_flops_per_example(c, vocabulary_size, captions_per_image=1):
    """6 x the multiply-accumulates of one forward pass, attention included.

    Forward is 2 FLOP per multiply-accumulate and the backward pass twice the
    forward. Counts every matmul: patch embedding, encoder projections,
    attention scores and weighted sums (full, not halved for the causal
    mask), MLPs, cross-attention keys/values over the patches, logits.
    With `captions_per_image=k`, the encoder and the cross-attention
    key/value projections run once per image, for k examples.
    """
    patches = (c.image_size // c.patch_size) ** 2
    d, t = c.encoder_dim, patches
    encoder = t * c.patch_size**2 * 3 * d  # patch embedding
    encoder += c.encoder_layers * t * (4 * d * d + 2 * d * c.encoder_mlp_dim + 2 * t * d)
    d, n = c.decoder_dim, c.sequence_length
    kv_dim = d * (c.num_key_value_heads or c.decoder_heads) // c.decoder_heads
    per_layer = n * (4 * d * d + 2 * n * d)  # self attention
    per_layer += n * 2 * d * d + n * 2 * t * d  # cross: query, output, attention
    per_layer += n * 2 * d * c.decoder_mlp_dim
    cross_key_value = c.decoder_layers * t * 2 * c.encoder_dim * kv_dim
    decoder = c.decoder_layers * per_layer + n * d * vocabulary_size
    return 6 * ((encoder + cross_key_value) / captions_per_image + decoder)


def vocabulary(size):
    from vlm.data.tokenizer import SPECIAL_TOKENS

    return list(SPECIAL_TOKENS) + [f"w{i}" for i in range(size - len(SPECIAL_TOKENS))]


def step_timer(warmup):
    """A Keras callback that times `fit` steps after the first `warmup`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.cpu_times = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

        def seconds_per_step(self, times=None):
            times = self.times if times is None else times
            return (times[-1] - times[warmup - 1]) / (len(times) - warmup)

    return StepTimer()


def training_batch(c, vocabulary_size, batch=TRAIN_BATCH):
    import numpy as np

    rng = np.random.default_rng(0)
    images = (rng.random((batch, c.image_size, c.image_size, 3)) * 255).astype("float32")
    tokens = rng.integers(4, vocabulary_size, (batch, c.sequence_length + 1)).astype("int32")
    return {"images": images, "tokens": tokens[:, :-1]}, tokens[:, 1:]


def build_trainer(which, c, vocabulary_size, jit_compile, dtype="float32"):
    """Ours or the baseline, compiled, under the dtype policy `dtype`."""
    import keras

    from benchmarks.baseline import build_baseline
    from benchmarks.baseline import compile_baseline
    from vlm.models.captioner import build_captioner

    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        if which == "baseline":
            model = build_baseline(c, vocabulary_size)
            return compile_baseline(model, jit_compile=jit_compile)
        model = build_captioner(c, vocabulary_size)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=jit_compile)
        return model
    finally:
        keras.config.set_dtype_policy(previous)


# (jit_compile, dtype policy) pairs measured by default on each backend.
# PyTorch's jit_compile=True is torch.compile: only with --torch-compile.
MODES = {
    "tensorflow": ["jit:float32", "nojit:float32", "jit:mixed_bfloat16",
                   "nojit:mixed_bfloat16"],
    "jax": ["jit:float32", "nojit:float32", "jit:mixed_bfloat16"],
    "torch": ["nojit:float32", "nojit:mixed_bfloat16"],
}


def fit_seconds_per_step(model, dataset, steps, warmup=2):
    timer = step_timer(warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0,
              callbacks=[timer])
    return timer.seconds_per_step(), timer.seconds_per_step(timer.cpu_times)


def measure_training(c, vocabulary_size, steps, rounds, modes):
    import tensorflow as tf

    x, y = training_batch(c, vocabulary_size)
    k = CAPTIONS_PER_IMAGE
    shared = dict(x, images=x["images"][:: k])  # 16 images, each for 4 captions
    datasets = {w: tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
                for w in ("ours", "baseline")}
    datasets[f"ours_{k}_per_image"] = (
        tf.data.Dataset.from_tensors((shared, y)).repeat().prefetch(2))
    flops = {w: training_flops_per_example(c, vocabulary_size) for w in datasets}
    flops[f"ours_{k}_per_image"] = training_flops_per_example(c, vocabulary_size, k)
    results = {}
    for mode in modes:
        jit, dtype = mode.split(":")
        models = {w: build_trainer(w.split("_")[0], c, vocabulary_size, jit == "jit", dtype)
                  for w in datasets}
        for which, model in models.items():  # compile and warm up
            fit_seconds_per_step(model, datasets[which], 1)
        rates = {w: [] for w in models}
        cpu_rates = {w: [] for w in models}
        for _ in range(rounds):  # alternate, so drift hits all alike
            for which, model in models.items():
                seconds, cpu_seconds = fit_seconds_per_step(model, datasets[which], steps)
                rates[which].append(TRAIN_BATCH / seconds)
                cpu_rates[which].append(TRAIN_BATCH / cpu_seconds)
        entry = {}
        for which, values in rates.items():
            rate = statistics.median(values)
            entry[which] = {"examples_per_s": round(rate, 1),
                            "gflops": round(rate * flops[which] / 1e9, 1),
                            "all_examples_per_s": [round(v, 1) for v in values],
                            # Less sensitive to other processes on the machine.
                            "examples_per_cpu_s": round(statistics.median(cpu_rates[which]), 1)}
        base = entry["baseline"]["examples_per_s"]
        entry["speedup"] = round(entry["ours"]["examples_per_s"] / base, 2)
        entry[f"speedup_{k}_per_image"] = round(
            entry[f"ours_{k}_per_image"]["examples_per_s"] / base, 2)
        results[mode] = entry
    return results


def best_seconds(candidates, repeats):
    """`{name: fastest seconds}` of no-argument functions, timed in alternation.

    Each runs once first (compile and warm-up); then every round times each
    of them once, so drift on a shared machine hits all alike.
    """
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def measure_generation(c, vocabulary_size, repeats):
    import keras
    import numpy as np

    from benchmarks.baseline import build_baseline
    from benchmarks.baseline import make_greedy_generate
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.models.captioner import build_captioner
    from vlm.samplers.reference import naive_greedy

    keras.utils.set_random_seed(0)
    tokenizer = CaptionTokenizer(vocabulary=vocabulary(vocabulary_size))
    ours = build_captioner(c, vocabulary_size, tokenizer=tokenizer)
    tokenizer.end_token_id = -1  # never stop early: always NEW_TOKENS steps
    baseline_generate = make_greedy_generate(build_baseline(c, vocabulary_size), NEW_TOKENS)
    candidates = {
        "ours_cached": lambda x: ours.generate(x, max_length=NEW_TOKENS),
        "ours_naive": lambda x: naive_greedy(ours, x, max_length=NEW_TOKENS),
        "baseline_cached": lambda x: keras.ops.convert_to_numpy(baseline_generate(x)),
    }
    rng = np.random.default_rng(0)
    results = {}
    for batch in GENERATION_BATCHES:
        images = (rng.random((batch, c.image_size, c.image_size, 3)) * 255).astype("float32")
        seconds = best_seconds({k: (lambda f=f: f(images)) for k, f in candidates.items()},
                               repeats)
        entry = {f"{name}_ms": round(t / batch * 1000.0, 2) for name, t in seconds.items()}
        entry["vs_baseline"] = round(entry["baseline_cached_ms"] / entry["ours_cached_ms"], 2)
        entry["vs_naive"] = round(entry["ours_naive_ms"] / entry["ours_cached_ms"], 2)
        results[f"batch_{batch}"] = entry
    return results


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def memory_child(kind, steps):
    """Peak resident memory of a process that only trains or only generates."""
    import keras
    import numpy as np

    c = ref_config()
    size = c.vocabulary_size
    if kind == "train":
        import tensorflow as tf

        model = build_trainer("ours", c, size, "auto")
        dataset = tf.data.Dataset.from_tensors(training_batch(c, size)).repeat()
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    else:
        from vlm.data.tokenizer import CaptionTokenizer
        from vlm.models.captioner import build_captioner

        keras.utils.set_random_seed(0)
        model = build_captioner(c, size, tokenizer=CaptionTokenizer(vocabulary=vocabulary(size)))
        images = np.zeros((32, c.image_size, c.image_size, 3), "float32")
        for _ in range(steps):
            model.generate(images, max_length=NEW_TOKENS)
    return {f"{kind}_peak_rss_mb": peak_rss_mb()}


def measure_backend(args):
    import keras

    c = ref_config()
    size = c.vocabulary_size
    modes = args.modes.split(",") if args.modes else list(MODES[keras.config.backend()])
    if keras.config.backend() == "torch" and args.torch_compile:
        modes.append("jit:float32")
    peak = matmul_peak_gflops()
    log(f"  matmul peak {peak:.0f} GFLOP/s")
    training = measure_training(c, size, args.steps, args.rounds, modes)
    log(f"  training {json.dumps(training)}")
    peak = max(peak, matmul_peak_gflops())  # again, after: the best of both
    for entry in training.values():
        for which in ("ours", "baseline", f"ours_{CAPTIONS_PER_IMAGE}_per_image"):
            entry[which]["fraction_of_peak"] = round(entry[which]["gflops"] / peak, 3)
    generation = measure_generation(c, size, args.repeats)
    log(f"  generation {json.dumps(generation)}")
    return {
        "backend": keras.config.backend(),
        "matmul_peak_gflops": round(peak, 1),
        "training_gflop_per_example": round(training_flops_per_example(c, size) / 1e9, 3),
        "training": training,
        "generation": generation,
    }


def log(message):
    print(message, file=sys.stderr, flush=True)


def child(args, *extra):
    env = dict(os.environ, KERAS_BACKEND=args.backend_name, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "benchmarks.run", "--child", *extra,
               "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--repeats", str(args.repeats)]
    if args.torch_compile:
        command.append("--torch-compile")
    if args.modes:
        command += ["--modes", args.modes]
    out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def serving(repeats):
    from benchmarks.serving import measure_serving

    return measure_serving("saved_models/shapes.keras", repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--steps", type=int, default=6, help="timed fit steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round, 2 repeats")
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--modes", help="comma-separated jit|nojit:POLICY, e.g. "
                        "jit:float32,nojit:mixed_bfloat16 (default: per backend)")
    parser.add_argument("--no-serving", action="store_true")
    parser.add_argument("--time-to-quality", action="store_true",
                        help="also run the default `train.py` per backend until validation "
                             "relation accuracy >= 0.97 (minutes each: "
                             "benchmarks/time_to_quality.py)")
    parser.add_argument("--output", default="benchmarks/results/benchmarks.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", choices=("train", "generate"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.repeats = 2, 1, 2
    if args.child:  # KERAS_BACKEND is already set
        result = memory_child(args.memory, 3) if args.memory else measure_backend(args)
        print(json.dumps(result))
        return 0
    results = {"command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
               "machine": machine(), "date": time.strftime("%Y-%m-%d"), "backends": []}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; choose from {BACKENDS}")
        log(f"... {backend}")
        args.backend_name = backend
        entry = child(args)
        entry["memory"] = {**child(args, "--memory", "train"),
                           **child(args, "--memory", "generate")}
        results["backends"].append(entry)
    if not args.no_serving:
        log("... serving (TensorFlow SavedModel)")
        results["serving"] = serving(args.repeats)
    if args.time_to_quality:
        from benchmarks.time_to_quality import TARGET
        from benchmarks.time_to_quality import time_to_quality

        results["time_to_quality"] = {}
        for entry in results["backends"]:
            log(f"... time to quality, {entry['backend']}")
            results["time_to_quality"][entry["backend"]] = time_to_quality(
                entry["backend"], "configs/shapes.py", TARGET)
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
