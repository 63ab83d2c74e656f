"""Causal multi-head self-attention with a fixed-shape key/value cache."""

import math

import keras
from keras import ops

from vlm.layers.attention_utils import OUTPUT_EQUATION
from vlm.layers.attention_utils import check_dropout
from vlm.layers.attention_utils import core_dtype
from vlm.layers.attention_utils import finfo_min
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention where position t sees positions <= t.

    For decoding, `call` takes a fixed-shape cache of every earlier position's
    keys and values, writes the new positions into it at `cache_index` with
    `ops.slice_update`, and attends over it. The cache keeps its shape, so a
    compiled decoding loop never retraces.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each head. Defaults to `hidden_dim // num_heads`.
        dropout: float. Dropout rate on the attention probabilities.
        use_bias: bool. Whether the projections have biases.
        kernel_initializer: Initializer for the projection kernels.
        bias_initializer: Initializer for the projection biases.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, hidden_dim)` tensor.
        cache: optional `(batch, 2, num_heads, max_length, key_dim)` tensor
            of cached keys (index 0) and values (index 1), heads first: the
            layout the attention matmuls read, so a decoding loop does not
            transpose the cache at every step.
        cache_index: int or scalar tensor, the position of `inputs[:, 0]` in
            the sequence; required with `cache`.
        training: bool. Whether attention dropout is active.

    Returns:
        `(batch, length, hidden_dim)` tensor, or `(output, updated_cache)`
        when a cache is given.

    Example:

    >>> layer = CausalSelfAttention(num_heads=2)
    >>> layer(keras.random.normal((2, 5, 16))).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim, allow_none=True)
        check_dropout(dropout)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if self.key_dim is None and hidden_dim % self.num_heads:
            raise ValueError(
                "Without `key_dim`, `num_heads` must divide the hidden width. "
                f"Received: num_heads={self.num_heads}, hidden_dim={hidden_dim}"
            )
        self._key_dim = self.key_dim or hidden_dim // self.num_heads
        heads, dim = self.num_heads, self._key_dim
        common = dict(
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        # One fused projection for query, key and value, with a 2-D kernel,
        # (hidden, heads * 3 * key_dim), heads outermost:
        # - at batch 1, XLA on the CPU compiles a matrix-vector product whose
        #   kernel is first reshaped from 4-D into an unvectorised loop that
        #   also recomputes the layer norm before it, for every output (a
        #   TensorFlow decoding step took 3 times as long);
        # - splitting the last axis splits whole heads (model parallelism).
        self.qkv_dense = keras.layers.EinsumDense(
            "btd,de->bte",
            output_shape=(None, heads * 3 * dim),
            bias_axes="e" if self.use_bias else None,
            name="qkv",
            **common,
        )
        self.qkv_dense.build(inputs_shape)
        self.output_dense = keras.layers.EinsumDense(
            OUTPUT_EQUATION,
            output_shape=(None, hidden_dim),
            bias_axes="o" if self.use_bias else None,
            name="output",
            **common,
        )
        self.output_dense.build(
            (inputs_shape[0], inputs_shape[1], self.num_heads, self._key_dim)
        )
        self.dropout_layer = keras.layers.Dropout(
            self.dropout,
            name="attention_dropout",
            dtype=core_dtype(self.compute_dtype),
        )

    def call(self, inputs, cache=None, cache_index=None, training=None):
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = ops.reshape(
            self.qkv_dense(inputs), (batch, length, self.num_heads, 3, self._key_dim)
        )
        query, key, value = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        if cache is not None:
            if cache_index is None:
                raise ValueError("`cache_index` is required with `cache`.")
            # (batch, 2, heads, length, key_dim)
            new = ops.transpose(ops.stack([key, value], axis=1), (0, 1, 3, 2, 4))
            start = [0, 0, 0, cache_index, 0]
            cache = ops.slice_update(cache, start, ops.cast(new, cache.dtype))
            key, value = cache[:, 0], cache[:, 1]  # (batch, heads, max_length, key_dim)
            # Query i sits at position cache_index + i; it sees keys <= that.
            key_positions = ops.arange(ops.shape(cache)[3])
            query_positions = ops.arange(length) + cache_index
            mask = key_positions[None, :] <= query_positions[:, None]
            mask = mask[None, None]  # (1, 1, length, max_length)
        else:
            mask = None

        attention_dtype = core_dtype(self.compute_dtype)
        query, key, value = (ops.cast(t, attention_dtype) for t in (query, key, value))
        scale = 1.0 / math.sqrt(self._key_dim)
        if cache is not None:
            attended = self._explicit_attention(query, key, value, mask, scale, training)
        elif bool(training) and self.dropout > 0.0:
            key, value = (ops.transpose(t, (0, 2, 1, 3)) for t in (key, value))
            attended = self._explicit_attention(query, key, value, mask, scale, training)
        else:
            attended = ops.dot_product_attention(
                query, key, value, scale=scale, is_causal=True
            )
        output = self.output_dense(ops.cast(attended, self.compute_dtype))
        if cache is not None:
            return output, cache
        return output

    def _explicit_attention(self, query, key, value, mask, scale, training):
        """Written-out causal softmax attention, for the cache and dropout.

        query: `(batch, q_len, heads, key_dim)`; key and value heads first,
        `(batch, heads, k_len, key_dim)`.
        """
        logits = ops.einsum("bqnh,bnkh->bnqk", query * scale, key)
        if mask is None:
            q_len, k_len = ops.shape(query)[1], ops.shape(key)[2]
            mask = ops.tril(ops.ones((q_len, k_len), dtype="bool"))[None, None]
        logits = ops.where(mask, logits, finfo_min(logits.dtype))
        probs = self.dropout_layer(ops.softmax(logits, axis=-1), training=training)
        return ops.einsum("bnqk,bnkh->bqnh", probs, value)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
