"""Milliseconds per image through the exported SavedModel, batch 1 and 32.

    python -m benchmarks.serving [--model saved_models/shapes.keras] [--repeats 5]

Exports the model (greedy, in-graph decode + resize + cached XLA decoding +
detokenization) to a temporary folder, loads it with `tf.saved_model.load`
and times `serving_default` on PNG bytes of shapes scenes.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/shapes.keras")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/serving.json")
    args = parser.parse_args(argv)
    results = measure_serving(args.model, args.repeats)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print("| batch | ms per image |\n|---|---|")
    for batch in (1, 32):
        print(f"| {batch} | {results[f'batch_{batch}_ms_per_image']} |")
    print(f"\nWrote {args.output}")
    return 0


def measure_serving(model_path, repeats):
    """ms per image of `serving_default` at batch 1 and 32 (exports to a temp folder)."""
    import PIL.Image
    import tensorflow as tf

    from vlm.datasets.shapes.captions import generate_examples
    from vlm.export.saved_model import export

    blobs = []
    for example in generate_examples(32, seed=99, image_size=64):
        buffer = io.BytesIO()
        PIL.Image.fromarray(example["image"]).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        export(model_path, os.path.join(folder, "serving"))
        serving = tf.saved_model.load(os.path.join(folder, "serving"))
        serve = serving.signatures["serving_default"]
        for batch in (1, 32):
            request = tf.constant(blobs[:batch])
            serve(images=request)  # warm-up: XLA compiles for this batch size
            start = time.perf_counter()
            for _ in range(repeats):
                serve(images=request)
            seconds = (time.perf_counter() - start) / repeats
            results[f"batch_{batch}_ms_per_image"] = round(seconds / batch * 1000.0, 2)
    return results


if __name__ == "__main__":
    sys.exit(main())
