"""Milliseconds per caption: cached + compiled decoding vs naive decoding.

    python -m benchmarks.generation              # every backend, one subprocess each
    python -m benchmarks.generation --backend jax --repeats 5

The model has the benchmark issue's "ref" size (64x64 images, patch 8, 4+4
layers of width 256, vocabulary 1000) with random weights, and its end token
is switched off so that every caption runs the full 24 new tokens. Cached
decoding projects each image's keys/values once and keeps a fixed-shape
self-attention cache (`Captioner.generate`); naive decoding re-runs the whole
model over the padded prefix each step (`vlm.generation.naive`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.report import markdown

NEW_TOKENS = 24
BATCHES = (1, 32)


def measure(repeats):
    import keras
    import numpy as np

    from vlm.config import ModelConfig
    from vlm.data.tokenizer import SPECIAL_TOKENS
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.generation.naive import naive_greedy
    from vlm.models.captioner import build_captioner

    keras.utils.set_random_seed(0)
    vocabulary = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(1000 - len(SPECIAL_TOKENS))]
    tokenizer = CaptionTokenizer(vocabulary=vocabulary)
    config = ModelConfig(image_size=64, patch_size=8, encoder_layers=4, encoder_heads=4,
                         encoder_dim=256, encoder_mlp_dim=1024, decoder_layers=4,
                         decoder_heads=4, decoder_dim=256, decoder_mlp_dim=1024,
                         sequence_length=NEW_TOKENS + 1, dropout=0.0)
    model = build_captioner(config, len(vocabulary), tokenizer=tokenizer)
    tokenizer.end_token_id = -1  # never stop early: always NEW_TOKENS steps

    def timed(fn, images):
        fn(images)  # compile / warm up
        start = time.perf_counter()
        for _ in range(repeats):
            fn(images)
        return (time.perf_counter() - start) / repeats / len(images) * 1000.0

    results = {"backend": keras.config.backend(), "new_tokens": NEW_TOKENS}
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        images = (rng.random((batch, 64, 64, 3)) * 255).astype("float32")
        cached = timed(lambda x: model.generate(x, max_length=NEW_TOKENS), images)
        naive = timed(lambda x: naive_greedy(model, x, max_length=NEW_TOKENS), images)
        results[f"batch_{batch}"] = {
            "cached_ms_per_caption": round(cached, 2),
            "naive_ms_per_caption": round(naive, 2),
            "speedup": round(naive / cached, 2),
        }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/generation.json")
    args = parser.parse_args(argv)
    if args.backend:  # the child: KERAS_BACKEND is already set
        print(json.dumps(measure(args.repeats)))
        return 0
    results = []
    for backend in ("tensorflow", "jax", "torch"):
        print(f"... {backend}", file=sys.stderr, flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.generation", "--backend", backend,
             "--repeats", str(args.repeats)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(markdown(results))
    print(f"\nWrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
