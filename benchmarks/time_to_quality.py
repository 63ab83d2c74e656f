"""Time to quality: how long the default `python train.py` takes to be right, per backend.

    python -m benchmarks.time_to_quality --backends jax,tensorflow,torch \
        --output benchmarks/results/cpu_time_to_quality_DATE.json
    python -m benchmarks.time_to_quality --history saved_models/shapes.history.json \
        --wall-seconds 1150   # a default run already made, timed by `time python train.py`

Runs `train.py` (the default config unless `--config`) once per backend in a
subprocess, as a new user's first run: a fresh cache (the dataset is prepared
inside the timed run) and a fresh output folder, with `train.stop_at` set to
the target. From the run's history it reads the first epoch whose
validation scores meet the target, the training time until then
(`elapsed_seconds`: without the validation passes) and the process' wall
time (preparation, compilation, validation and the test report included).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.report import write_results
from vlm.config import parse_targets
from vlm.config import targets_met
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
TARGET = "relation_accuracy>=0.97"


def first_epoch_meeting(history, targets):
    """1-based index of the first epoch whose `val_` scores meet `targets`, or None."""
    epochs = len(history.get("loss", []))
    for epoch in range(epochs):
        scores = {name: history.get(f"val_{name}", [None] * epochs)[epoch] for name in targets}
        if targets_met(scores, targets):
            return epoch + 1
    return None


def time_to_quality(backend, config, target, overrides=()):
    """Runs `train.py` under `backend`; returns what it took to meet `target`."""
    with tempfile.TemporaryDirectory(prefix="vlm_ttq_") as tmp:
        command = [sys.executable, "train.py", "--config", config,
                   "--set", f"train.output_dir={tmp}/out", "--set", f"train.log_dir={tmp}/logs",
                   "--set", f"train.stop_at={target}", *overrides]
        env = dict(os.environ, KERAS_BACKEND=backend, VLM_CACHE_DIR=f"{tmp}/cache",
                   TF_CPP_MIN_LOG_LEVEL="3")
        start = time.time()
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.time() - start
        if result.returncode:
            raise RuntimeError(f"{backend}: train.py exited {result.returncode}:\n"
                               + result.stderr[-3000:])
        name = next(f for f in os.listdir(f"{tmp}/out") if f.endswith(".history.json"))
        return entry_of_run(f"{tmp}/out/{name}", wall, target)


def entry_of_run(history_path, wall_seconds, target):
    """The row of a finished run: its `.history.json` and the `.report.json` beside it."""
    with open(history_path) as f:
        record = json.load(f)
    with open(history_path.replace(".history.json", ".report.json")) as f:
        test_scores = json.load(f).get("grounded", {})
    history = record["history"]
    epoch = first_epoch_meeting(history, parse_targets(target))
    at = (epoch or len(history["loss"])) - 1
    return {
        "backend": record["backend"],
        "target": target,
        "reached": epoch is not None,
        "epochs": epoch or len(history["loss"]),
        "train_seconds_to_target": round(history["elapsed_seconds"][at], 1),
        "wall_seconds": round(wall_seconds, 1),
        "validation": {k[4:]: round(v[at], 4) for k, v in history.items()
                       if k.startswith("val_") and k[4:] in (
                           "object_accuracy", "relation_accuracy", "hallucination_rate",
                           "exact_scene_accuracy")},
        "test": {k: round(v, 4) for k, v in test_scores.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.time_to_quality",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--config", default="configs/shapes.py")
    parser.add_argument("--target", default=TARGET,
                        help=f"validation scores to meet (default: {TARGET})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="more train.py overrides, e.g. train.report_images=0")
    parser.add_argument("--output", default="benchmarks/results/time_to_quality.json")
    parser.add_argument("--history", metavar="PATH", help="record a finished run instead: its "
                        ".history.json (the .report.json beside it; the backend it names)")
    parser.add_argument("--wall-seconds", type=float,
                        help="with --history: the run's wall time, as `time` measured it")
    args = parser.parse_args(argv)
    parse_targets(args.target)  # a bad target fails before any run
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    overrides = [item for o in args.overrides for item in ("--set", o)]
    results = {"command": "python -m benchmarks.time_to_quality "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": dict(machine(), matmul_peak_gflops=round(matmul_peak_gflops(), 1)),
               "date": time.strftime("%Y-%m-%d"), "backends": [], "time_to_quality": {}}
    if args.history:
        if args.wall_seconds is None:
            parser.error("--history needs --wall-seconds (the run's wall time)")
        entry = entry_of_run(args.history, args.wall_seconds, args.target)
        results["time_to_quality"][entry["backend"]] = entry
    else:
        for backend in backends:
            print(f"... {backend}: python train.py --config {args.config} until {args.target}",
                  flush=True)
            entry = time_to_quality(backend, args.config, args.target, overrides)
            results["time_to_quality"][backend] = entry
            print(json.dumps(entry), flush=True)
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
