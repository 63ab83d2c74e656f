"""The two ways to read several images, side by side: quality, speed, parameters.

    python -m benchmarks.multi_image \
        --model interleaved=saved_models/shapes_change.keras \
        --model sources=path/to/shapes_change_sources.keras \
        --output benchmarks/results/cpu_multi_image_2026-11-30.json

For each trained change captioner: its parameters, its training time and
the test-split change scores from the report beside the model
(`<name>.report.json`, `<name>.history.json`), and greedy decoding of image
pairs in ms per caption (batch 1 and 32, after a warm-up call, best of
`--repeats`) on the current backend.
"""

import argparse
import json
import os
import sys
import time

from benchmarks.report import markdown
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops

BATCHES = (1, 32)


def ms_per_caption(model, batch, repeats):
    import numpy as np

    pairs = np.random.default_rng(0).integers(
        0, 256, (batch, model.num_images, model.image_size, model.image_size, 3)).astype("uint8")
    model.generate(pairs)  # compiles
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(pairs)
        best = min(best, time.perf_counter() - start)
    return round(best / batch * 1000, 2)


def measure(path, repeats):
    import keras

    from vlm import load_captioner

    model = load_captioner(path)
    root = path[:-len(".keras")]
    row = {"parameters": model.count_params(),
           "design": "sources" if model.sources else f"interleaved ({model.mode})"}
    if os.path.exists(root + ".history.json"):
        with open(root + ".history.json") as f:
            history = json.load(f)
        row["train_minutes"] = round(history["train_seconds"] / 60, 1)
        row["train_backend"] = history["backend"]
        row["val_loss"] = round(history["history"]["val_loss"][-1], 4)
    if os.path.exists(root + ".report.json"):
        with open(root + ".report.json") as f:
            report = json.load(f)
        for key, value in report.get("change", {}).items():
            if key != "num_examples":
                row[key] = round(value, 4)
    for batch in BATCHES:
        row[f"batch_{batch}_ms_per_caption"] = ms_per_caption(model, batch, repeats)
    row["decode_backend"] = keras.config.backend()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multi_image",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="results JSON to write")
    args = parser.parse_args(argv)
    results = {"command": "python -m benchmarks.multi_image " + " ".join(
                   f"--model {m}" for m in args.model),
               "machine": dict(machine(), matmul_peak_gflops=round(matmul_peak_gflops(), 1)),
               "date": time.strftime("%Y-%m-%d"),
               "designs": {}}
    for entry in args.model:
        name, path = entry.split("=", 1)
        print(f"{name}: {path}", file=sys.stderr)
        results["designs"][name] = measure(path, args.repeats)
    print(markdown(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
