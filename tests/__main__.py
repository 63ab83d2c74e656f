"""Runs the whole test suite once per Keras backend and prints a summary.

    python -m tests                 # TensorFlow, JAX and PyTorch
    python -m tests --fast          # the same without the tests marked `slow`
    python -m tests --backends jax  # one backend
    python -m tests --workers 1     # one pytest worker per backend (default: 2)
    python -m tests -- -k cross     # extra arguments go to pytest
    python -m tests -- tests/layers # paths given replace the whole suite

`KERAS_BACKEND` is fixed once per process, so each backend gets its own
pytest run. Most tests keep one core busy, so the run uses two pytest-xdist
workers where there are two cores, each taking whole test files (a module's
fixtures are built once). The exit code is non-zero if any backend failed.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

BACKENDS = ("tensorflow", "jax", "torch")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m tests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of: " + ", ".join(BACKENDS))
    parser.add_argument("--fast", action="store_true",
                        help="deselect the tests marked `slow` (CI runs them all)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="pytest-xdist workers per backend, each taking whole "
                             "test files; 1 runs in one process (default: %(default)s)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and importlib.util.find_spec("xdist") is None:
        parser.error(f"--workers {args.workers} needs pytest-xdist "
                     "(pip install -e \".[dev]\"), or pass --workers 1")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    return backends, args.pytest_args, args.fast, args.workers


def run_backend(backend, pytest_args, report_dir, fast=False, workers=1):
    report = os.path.join(report_dir, f"{backend}.xml")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    # Paths among the extra arguments replace the whole `tests` folder.
    paths = [a for a in pytest_args if not a.startswith("-") and os.path.exists(a.split("::")[0])]
    command = [sys.executable, "-m", "pytest", *([] if paths else ["tests"]), "-q",
               "-p", "no:cacheprovider", f"--junitxml={report}",
               *(["-m", "not slow"] if fast else []),
               *(["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []),
               *pytest_args]
    print(f"\n=== KERAS_BACKEND={backend}: {' '.join(command[1:])}", flush=True)
    start = time.time()
    returncode = subprocess.call(command, env=env)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if os.path.exists(report):
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts = {"passed": total - failed - skipped, "failed": failed,
                  "skipped": skipped}
    elif returncode:
        counts["failed"] = 1  # pytest died before writing its report
    # pytest exits 5 when it collected nothing: that is a failure here.
    ok = returncode == 0 and counts["passed"] > 0
    return ok, counts, time.time() - start


def minutes(seconds):
    """`seconds` as minutes:seconds, e.g. 754 -> "12:34"."""
    return "{}:{:02d}".format(*divmod(round(seconds), 60))


def main(argv=None):
    backends, pytest_args, fast, workers = parse_args(sys.argv[1:] if argv is None else argv)
    results = {}
    with tempfile.TemporaryDirectory() as report_dir:
        for backend in backends:
            results[backend] = run_backend(backend, pytest_args, report_dir, fast, workers)
    print("\n=== Summary")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for backend, (ok, counts, seconds) in results.items():
        for key in totals:
            totals[key] += counts[key]
        print(f"{backend:>10}: {'OK  ' if ok else 'FAIL'} {counts['passed']} passed, "
              f"{counts['failed']} failed, {counts['skipped']} skipped "
              f"in {minutes(seconds)}")
    print(f"Time: {minutes(sum(r[2] for r in results.values()))} (minutes:seconds)")
    # Alone on its line: the closing line CI reads.
    print(f"Total: {totals['passed']} passed, {totals['failed']} failed, "
          f"{totals['skipped']} skipped")
    return 0 if all(ok for ok, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
