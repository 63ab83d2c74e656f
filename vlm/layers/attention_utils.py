"""Small helpers shared by the attention layers."""

import keras
import numpy as np

# The output projection of attention heads, (batch, length, heads, head_dim)
# x (heads, head_dim, output) -> (batch, length, output). The letters matter
# on JAX: jnp.einsum contracts the summed letters in sorted order, so heads
# must sort before head dims ("h" < "v") for XLA to read the kernel as
# stored; "btnh,nho->bto" makes it copy a transposed kernel at every call.
OUTPUT_EQUATION = "bthv,hvo->bto"


def check_dropout(dropout):
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}"
        )


def core_dtype(compute_dtype):
    """float32 under mixed precision: logits and softmax never run in fp16."""
    if compute_dtype in ("float16", "bfloat16"):
        return "float32"
    return compute_dtype


def finfo_min(dtype):
    """The dtype's own minimum: a fixed -1e9 overflows fp16 (keras#17571)."""
    return float(np.finfo(keras.backend.standardize_dtype(dtype)).min)
