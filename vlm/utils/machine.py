"""What machine a run is on: the CPU, its vector extensions and its measured matmul peak.

Training times on CPUs of one name differ by 2x and more with the vector
extensions they expose (AVX-512 and its BF16 instructions, or AVX2 only), so
`train.py` and every benchmark result say which they had.
"""

import os
import platform
import time


def _cpuinfo(*keys):
    """The value of the first /proc/cpuinfo line starting with one of `keys`, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith(keys)), None)
    except OSError:
        return None


def vector_extensions(flags=None):
    """The widest SIMD of this CPU in words: "AVX-512 + BF16", "AVX-512", "AVX2 only", ...

    Args:
        flags: CPU flags as in /proc/cpuinfo (default: this machine's).
    """
    flags = set((_cpuinfo("flags", "Features") or "").split() if flags is None else flags)
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_bf16", "BF16"), ("amx_bf16", "AMX"))
                  if flag in flags]
        return " + ".join(["AVX-512", *extras])
    if "avx2" in flags:
        return "AVX2 only"
    if "asimd" in flags:
        return "NEON"
    return "no AVX2"


def matmul_peak_gflops(size=2048, repeats=10):
    """Best float32 GFLOP/s of a square matmul through the Keras backend's own op."""
    import keras
    import numpy as np

    backend = keras.config.backend()
    a = np.random.default_rng(0).standard_normal((size, size)).astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(a)
        run = lambda: tf.matmul(x, x).numpy()  # noqa: E731
    elif backend == "jax":
        import jax

        x = jax.device_put(a)
        f = jax.jit(lambda m: m @ m)
        run = lambda: f(x).block_until_ready()  # noqa: E731
    else:
        import torch

        x = torch.from_numpy(a)
        run = lambda: torch.matmul(x, x)  # noqa: E731
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine():
    """`{"cpu", "cores", "vector_extensions", "python"}` of this machine."""
    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "vector_extensions": vector_extensions(),
            "python": platform.python_version()}


def describe_machine(peak_gflops=None):
    """One line: CPU, cores, vector extensions and (measured here if not given) matmul peak."""
    info = machine()
    peak = matmul_peak_gflops(size=1024, repeats=5) if peak_gflops is None else peak_gflops
    return (f"{info['cpu']}, {info['cores']} cores, {info['vector_extensions']}; "
            f"float32 matmul peak {peak:.0f} GFLOP/s")
