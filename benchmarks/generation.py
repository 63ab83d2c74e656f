"""Decoding speed per backend: cached against naive, and PyTorch compiled against eager.

    python -m benchmarks.generation                     # every backend, one subprocess each
    python -m benchmarks.generation --backends jax,torch --repeats 5

Each backend runs in its own process; PyTorch runs twice, compiled (the
default, `vlm.compilation.compiled_inference`) and eager (`VLM_TORCH_INFERENCE=eager`,
the loop before it was compiled). Rows:

1. the benchmark issue's "ref" size (64x64 images, patch 8, 4+4 layers of
   width 256, vocabulary 1000) with random weights and the end token off,
   so that every caption runs all 24 new tokens: ms per caption of cached
   decoding (`Captioner.generate`) and of naive decoding, which re-runs the
   whole model over the padded prefix each step (`vlm.samplers.reference`),
   at batch 1 and 32, and the first call's seconds (tracing, compiling);
2. the shipped model (`saved_models/shapes.keras`), batch 1: ms per caption
   for greedy, beam (4) and top-k sampling (seed 0), averaged over 4 scenes;
3. the ratio of each to JAX's in the same run, and whether PyTorch's
   compiled tokens equal its eager tokens and the naive decoder's
   (greedy, beam and sampling on 8 scenes; log-probabilities to 1e-4).

Best of `--repeats` timings after one warm-up call. Results go to
`--output` with a markdown table (`benchmarks/report.py`).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from benchmarks.report import write_results
from vlm.utils.machine import machine

NEW_TOKENS = 24
BATCHES = (1, 32)
MODEL = "saved_models/shapes.keras"
SAMPLERS = ("greedy", "beam", "top_k")
# (label, KERAS_BACKEND, VLM_TORCH_INFERENCE)
RUNS = {"tensorflow": ("tensorflow", None), "jax": ("jax", None), "torch": ("torch", None),
        "torch (eager)": ("torch", "eager")}


def timed(fn, repeats):
    """(first call's seconds, best of `repeats` later calls' seconds)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def ref_rows(repeats):
    import keras
    import numpy as np

    from vlm.config import ModelConfig
    from vlm.data.tokenizer import SPECIAL_TOKENS
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.models.captioner import build_captioner
    from vlm.samplers.reference import naive_greedy

    keras.utils.set_random_seed(0)
    vocabulary = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(1000 - len(SPECIAL_TOKENS))]
    tokenizer = CaptionTokenizer(vocabulary=vocabulary)
    config = ModelConfig(image_size=64, patch_size=8, encoder_layers=4, encoder_heads=4,
                         encoder_dim=256, encoder_mlp_dim=1024, decoder_layers=4,
                         decoder_heads=4, decoder_dim=256, decoder_mlp_dim=1024,
                         sequence_length=NEW_TOKENS + 1, dropout=0.0)
    model = build_captioner(config, len(vocabulary), tokenizer=tokenizer)
    tokenizer.end_token_id = -1  # never stop early: always NEW_TOKENS steps
    rng = np.random.default_rng(0)
    rows, first_calls = {}, {}
    for batch in BATCHES:
        images = (rng.random((batch, 64, 64, 3)) * 255).astype("float32")
        first, cached = timed(lambda: model.generate(images, max_length=NEW_TOKENS), repeats)
        _, naive = timed(lambda: naive_greedy(model, images, max_length=NEW_TOKENS), repeats)
        rows[f"batch_{batch}"] = {"ours_cached_ms": round(cached / batch * 1000, 2),
                                  "ours_naive_ms": round(naive / batch * 1000, 2),
                                  "vs_naive": round(naive / cached, 2)}
        first_calls[f"ref_batch_{batch}"] = round(first, 1)
    return rows, first_calls


def shipped_rows(repeats):
    import numpy as np

    from vlm import load_captioner
    from vlm.datasets.shapes.captions import generate_examples
    from vlm.samplers import BeamSampler
    from vlm.samplers import TopKSampler
    from vlm.samplers.reference import naive_greedy

    model = load_captioner(MODEL)
    scenes = np.stack([e["image"] for e in generate_examples(8, seed=12345, image_size=64)])
    ms, first_calls, tokens = {}, {}, {}
    settings = {"greedy": "greedy", "beam": BeamSampler(num_beams=4),
                "top_k": TopKSampler(seed=0)}
    for name in SAMPLERS:
        sampler = settings[name]

        def one_by_one():
            for image in scenes[:4]:
                model.generate(image[None], sampler=sampler)

        first, best = timed(one_by_one, repeats)
        ms[name] = round(best / 4 * 1000, 2)
        first_calls[f"shipped_{name}_batch_1"] = round(first, 1)
        out = model.generate(scenes, sampler=sampler, return_details=True)
        tokens[name] = {"ids": out["token_ids"].tolist(), "log_probs": out["log_probs"].tolist()}
    ids, log_probs = naive_greedy(model, scenes)
    tokens["naive_greedy"] = {"ids": ids.tolist(), "log_probs": log_probs.tolist()}
    return ms, first_calls, tokens


def measure(label, repeats):
    generation, first_calls = ref_rows(repeats)
    shipped, shipped_first, tokens = shipped_rows(repeats)
    return {"backend": label, "new_tokens": NEW_TOKENS, "generation": generation,
            "shipped_ms_per_caption": shipped, "first_call_s": {**first_calls, **shipped_first},
            "tokens": tokens}


def same_tokens(a, b):
    """Equal token ids, and the largest log-probability difference."""
    import numpy as np

    equal = np.array_equal(a["ids"], b["ids"])
    gap = float(np.abs(np.subtract(a["log_probs"], b["log_probs"])).max())
    return {"same_ids": bool(equal), "max_log_prob_diff": float(f"{gap:.2g}")}


def summarize(runs):
    """The file's tables from the children's results (which keep their token ids)."""
    by = {r["backend"]: r for r in runs}
    summary = {}
    if "jax" in by:
        jax = by["jax"]
        summary["vs_jax"] = {
            label: {**{f"ref_{b}": round(r["generation"][b]["ours_cached_ms"]
                                         / jax["generation"][b]["ours_cached_ms"], 2)
                       for b in r["generation"]},
                    **{f"shipped_{s}_batch_1": round(ms / jax["shipped_ms_per_caption"][s], 2)
                       for s, ms in r["shipped_ms_per_caption"].items()}}
            for label, r in by.items() if label != "jax"}
    if "torch" in by:
        torch = by["torch"]["tokens"]
        checks = {"torch vs naive (greedy)": same_tokens(torch["greedy"], torch["naive_greedy"])}
        if "torch (eager)" in by:
            eager = by["torch (eager)"]["tokens"]
            checks.update({f"torch vs torch (eager), {s}": same_tokens(torch[s], eager[s])
                           for s in SAMPLERS})
        summary["same_tokens"] = checks
    summary["shipped_ms_per_caption"] = {label: r["shipped_ms_per_caption"]
                                         for label, r in by.items()}
    summary["first_call_s"] = {label: r["first_call_s"] for label, r in by.items()}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(RUNS),
                        help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(
        "benchmarks", "results", f"cpu_generation_{datetime.date.today()}.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # KERAS_BACKEND and VLM_TORCH_INFERENCE are already set
        print(json.dumps(measure(args.child, args.repeats)))
        return 0
    labels = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in labels if b not in RUNS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {list(RUNS)}")
    runs = []
    for label in labels:
        backend, inference = RUNS[label]
        print(f"... {label}", file=sys.stderr, flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("VLM_TORCH_INFERENCE", None)
        if inference:
            env["VLM_TORCH_INFERENCE"] = inference
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.generation", "--child", label,
             "--repeats", str(args.repeats)],
            env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    results = {"date": str(datetime.date.today()), "machine": machine(),
               "command": "python -m benchmarks.generation " + " ".join(argv or sys.argv[1:]),
               **summarize(runs)}
    results["backends"] = [{k: v for k, v in r.items()
                            if k in ("backend", "new_tokens", "generation")} for r in runs]
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
