"""Multi-head cross attention: queries from one sequence, keys/values from another."""

import math
import numbers

import keras
from keras import ops

from vlm.layers.attention_utils import OUTPUT_EQUATION
from vlm.layers.attention_utils import check_dropout
from vlm.layers.attention_utils import core_dtype
from vlm.layers.attention_utils import finfo_min
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class CrossAttention(keras.layers.Layer):
    """Multi-head attention of a query sequence over a separate context sequence.

    Computes `softmax(Q K^T / sqrt(key_dim)) V` per head, where `Q` is projected
    from `query` (for example text decoder states) and `K`, `V` from `context`
    (for example ViT patch embeddings), then projects the concatenated heads to
    `output_dim`. The query and context widths may differ.

    The attention logits and softmax always run in float32, also under the
    `mixed_float16` and `mixed_bfloat16` policies. Masked context positions get
    exactly zero weight, and a query row with no visible context position
    (or a position masked out by Keras' implicit query mask) returns zeros.

    Attention runs through `keras.ops.dot_product_attention` (a fused kernel
    where the backend has one) unless scores are requested, attention dropout
    is active, or `value_dim != key_dim`; then it runs written out. Both paths
    give the same numbers.

    Args:
        num_heads: int. Number of query heads.
        key_dim: int. Size of each query/key head. Defaults to
            `query_dim // num_heads`.
        value_dim: int. Size of each value head. Defaults to `key_dim`.
        num_key_value_heads: int. Number of key/value heads. Fewer than
            `num_heads` gives grouped-query attention: each key/value head is
            shared by `num_heads // num_key_value_heads` query heads, which
            shrinks the context cache. Defaults to `num_heads`.
        output_dim: int. Width of the output. Defaults to the query width.
        dropout: float. Dropout rate on the attention probabilities.
        use_bias: bool. Whether the projections have biases.
        gated: bool. If True, the output is multiplied by
            `tanh(gate_scale * gate)`, a learned gate initialised at 0
            (Flamingo), so a newly inserted layer starts as a no-op on its
            residual branch.
        gate_type: str. With `gated`, "scalar" (one gate, weight shape `()`)
            or "vector" (one gate per output channel, shape `(output_dim,)`,
            IDEFICS' `alpha_type="vector"`).
        gate_scale: float. With `gated`, the gate's multiplier inside the
            tanh. Adam's steps on the weight are about the learning rate
            whatever the gradient's size, so this multiplies the gate's
            learning rate alone. Positive.
        kernel_initializer: Initializer for the projection kernels.
        bias_initializer: Initializer for the projection biases.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, q_len, query_dim)` tensor.
        context: `(contexts, k_len, context_dim)` tensor. May be None when
            `context_cache` is given. Usually `contexts == batch`; when
            `contexts` divides `batch`, each context is shared by
            `batch // contexts` consecutive query rows (several captions of
            one image): their queries read it as one longer sequence, so the
            keys and values are projected once per context, never copied.
        context_mask: optional `(contexts, k_len)` boolean tensor, True where
            the context position may be attended to. Defaults to the
            context's Keras mask.
        attention_mask: optional `(batch, q_len, k_len)` boolean tensor, True
            where query position `i` may attend to context position `j`
            (Keras `MultiHeadAttention`'s convention), for example which
            image each text token sees (`media_attention_mask`). Combined
            with `context_mask` and `query_mask`; one row per query row, also
            when several rows share a context.
        context_cache: optional `(key, value)` tuple from
            `compute_context_cache(context)`. Skips the key/value projections.
        attention_bias: optional `(batch, num_heads, q_len, k_len)` float
            tensor added to the attention logits (before the softmax), for
            example `FocusShift`'s.
        return_attention_scores: bool. Also return the attention
            probabilities, `(batch, num_heads, q_len, k_len)`.
        training: bool. Whether attention dropout is active.
        query_mask: optional `(batch, q_len)` boolean tensor. Filled in by
            Keras from the query's implicit mask; masked query rows return
            zeros, and the mask is propagated to the output.

    Returns:
        `(batch, q_len, output_dim)` tensor, or `(output, scores)` when
        `return_attention_scores=True`.

    Example:

    >>> layer = CrossAttention(num_heads=4, key_dim=16)
    >>> text = keras.random.normal((2, 10, 64))
    >>> patches = keras.random.normal((2, 49, 128))
    >>> layer(text, patches).shape
    (2, 10, 64)
    >>> cache = layer.compute_context_cache(patches)  # once per image
    >>> layer(text, None, context_cache=cache).shape
    (2, 10, 64)
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        value_dim=None,
        num_key_value_heads=None,
        output_dim=None,
        dropout=0.0,
        use_bias=True,
        gated=False,
        gate_type="scalar",
        gate_scale=1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim, allow_none=True)
        check_positive_int("value_dim", value_dim, allow_none=True)
        check_positive_int(
            "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        check_positive_int("output_dim", output_dim, allow_none=True)
        if num_key_value_heads is not None and num_heads % num_key_value_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. Received: "
                f"num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
            )
        check_dropout(dropout)
        check_gate(gate_type, gate_scale)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.num_key_value_heads = num_key_value_heads
        self.output_dim = output_dim
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self.gated = gated
        self.gate_type = gate_type
        self.gate_scale = float(gate_scale)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    @property
    def _kv_heads(self):
        return self.num_key_value_heads or self.num_heads

    def _dense(self, name, equation, output_shape, bias_axes):
        dense = keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            name=name,
            dtype=self.dtype_policy,
        )
        # This layer applies the Keras masks of its inputs itself; the
        # projections only pass them along (and so don't warn about them).
        dense.supports_masking = True
        return dense

    def build(self, query_shape, context_shape=None):
        _check_rank("query", query_shape)
        if context_shape is None:
            raise ValueError(
                "CrossAttention must be built with the context shape before a "
                "`context_cache` can be used: call it once with a context, or "
                "call `build(query_shape, context_shape)`."
            )
        _check_rank("context", context_shape)
        query_dim, context_dim = query_shape[-1], context_shape[-1]
        if query_dim is None or context_dim is None:
            raise ValueError(
                "The last dimension of `query` and `context` must be known. "
                f"Received: query_shape={query_shape}, context_shape={context_shape}"
            )
        if self.key_dim is None and query_dim % self.num_heads:
            raise ValueError(
                "Without `key_dim`, `num_heads` must divide the query width. "
                f"Received: num_heads={self.num_heads}, query_dim={query_dim}"
            )
        self._key_dim = self.key_dim or query_dim // self.num_heads
        self._value_dim = self.value_dim or self._key_dim
        self._output_dim = self.output_dim or query_dim
        heads, kv_heads = self.num_heads, self._kv_heads

        # The query projection runs at every decoding step, so its kernel is
        # 2-D, (query_dim, heads * key_dim), heads outermost: at batch 1, XLA
        # on the CPU compiles a matrix-vector product whose kernel is first
        # reshaped from 3-D into an unvectorised loop (see
        # `CausalSelfAttention`). Keys and values are projected once per
        # context and keep Keras' (context_dim, heads, dim) layout.
        self.query_dense = self._dense(
            "query", "btd,de->bte", (None, heads * self._key_dim), "e"
        )
        self.query_dense.build(query_shape)
        self.key_dense = self._dense(
            "key", "bsd,dnh->bsnh", (None, kv_heads, self._key_dim), "nh"
        )
        self.key_dense.build(context_shape)
        self.value_dense = self._dense(
            "value", "bsd,dnh->bsnh", (None, kv_heads, self._value_dim), "nh"
        )
        self.value_dense.build(context_shape)
        self.output_dense = self._dense(
            "output", OUTPUT_EQUATION, (None, self._output_dim), "o"
        )
        self.output_dense.build(
            (query_shape[0], query_shape[1], heads, self._value_dim)
        )
        # Dropout acts on the float32 probabilities, so it runs in float32.
        self.dropout_layer = keras.layers.Dropout(
            self.dropout,
            name="attention_dropout",
            dtype=core_dtype(self.compute_dtype),
        )
        if self.gated:
            self.gate = self.add_weight(
                name="gate",
                shape=gate_shape(self.gate_type, self._output_dim),
                initializer="zeros",
                trainable=True,
            )

    def compute_context_cache(self, context):
        """Projects `context` to this layer's keys and values, once.

        Args:
            context: `(contexts, k_len, context_dim)` tensor.

        Returns:
            `(key, value)`: `(contexts, num_key_value_heads, k_len, key_dim)`
            and `(contexts, num_key_value_heads, k_len, value_dim)` tensors,
            heads first (the layout a one-token decoding step reads without a
            transpose), to pass as `context_cache=` to every later call over
            the same context.
        """
        key, value = self._project_context(context)
        return ops.transpose(key, (0, 2, 1, 3)), ops.transpose(value, (0, 2, 1, 3))

    def _project_context(self, context):
        """Keys and values `(contexts, k_len, kv_heads, dim)` of `context`."""
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' is not built. Call it once (or call "
                "`build(query_shape, context_shape)`) before "
                "`compute_context_cache`."
            )
        _check_rank("context", ops.shape(context))
        return self.key_dense(context), self.value_dense(context)

    def call(
        self,
        query,
        context,
        context_mask=None,
        context_cache=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        query_mask=None,
        attention_bias=None,
    ):
        _check_rank("query", ops.shape(query))
        if context_cache is None:
            if context is None:
                raise ValueError(
                    "CrossAttention needs a `context` or a `context_cache`. "
                    "Received neither."
                )
            # (contexts, k_len, kv_heads, key_dim), (..., value_dim)
            key, value = self._project_context(context)
            heads_first = False
        else:
            # (contexts, kv_heads, k_len, key_dim), (..., value_dim)
            key, value = context_cache
            heads_first = True
        _check_groups(query, key)
        batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
        query_heads = ops.reshape(
            self.query_dense(query), (batch, q_len, self.num_heads, self._key_dim)
        )
        contexts, k_len = ops.shape(key)[0], ops.shape(key)[2 if heads_first else 1]
        # The queries of the `batch // contexts` consecutive rows that share a
        # context read it as one longer query sequence: the keys and values
        # are not copied, and their gradients sum over the group.
        grouped = not (
            isinstance(batch, int) and isinstance(contexts, int) and batch == contexts
        )
        if grouped:
            if isinstance(batch, int) and isinstance(contexts, int):
                group = batch // max(contexts, 1)
            else:
                group = batch // ops.maximum(contexts, 1)
            query_heads = ops.reshape(
                query_heads,
                (contexts, group * q_len, self.num_heads, self._key_dim),
            )
            if query_mask is not None:
                query_mask = ops.convert_to_tensor(query_mask)
                _check_mask("query_mask", query_mask, tuple(query.shape[:2]), "q_len")
                query_mask = ops.reshape(query_mask, (contexts, group * q_len))
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
            static_k_len = key.shape[2 if heads_first else 1]
            _check_attention_mask(attention_mask, query.shape[:2], static_k_len)
            if grouped:
                attention_mask = ops.reshape(attention_mask, (contexts, group * q_len, k_len))
        if attention_bias is not None:
            attention_bias = ops.cast(attention_bias, core_dtype(self.compute_dtype))
            if grouped:
                # (batch, heads, q, k) -> (contexts, heads, group * q, k), as the queries.
                attention_bias = ops.reshape(
                    attention_bias, (contexts, group, self.num_heads, q_len, k_len))
                attention_bias = ops.reshape(ops.transpose(attention_bias, (0, 2, 1, 3, 4)),
                                             (contexts, self.num_heads, group * q_len, k_len))

        mask = _attention_mask(query_mask, context_mask, query_heads, (contexts, k_len))
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")[:, None]  # (contexts, 1, q, k)
            mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
        # Attention runs in float32 whatever the compute dtype: fp16 logits
        # overflow, and the softmax needs the range (keras#17571).
        attention_dtype = core_dtype(self.compute_dtype)
        query_heads = ops.cast(query_heads, attention_dtype)
        key = ops.cast(key, attention_dtype)
        value = ops.cast(value, attention_dtype)
        scale = 1.0 / math.sqrt(self._key_dim)

        use_dropout = bool(training) and self.dropout > 0.0
        # The fused kernels (jax.nn.dot_product_attention among them) need
        # value heads as wide as key heads, and take keys and values sequence
        # first; a heads-first cache is read by the written-out einsums.
        fused = (
            not heads_first
            and not return_attention_scores
            and not use_dropout
            and self._value_dim == self._key_dim
        )
        if fused:
            attended = self._fused_attention(query_heads, key, value, mask, scale,
                                             attention_bias)
        else:
            attended, scores = self._explicit_attention(
                query_heads, key, value, mask, scale, training, heads_first, attention_bias
            )
        if grouped:
            # (contexts, group * q_len, heads, value_dim) -> (batch, q_len, ...)
            attended = ops.reshape(
                attended, (batch, q_len, self.num_heads, self._value_dim)
            )
        output = self.output_dense(ops.cast(attended, self.compute_dtype))
        if mask is not None:
            # Rows that see nothing return zeros (not the output bias).
            row_visible = ops.reshape(ops.any(mask, axis=(1, 3)), (batch, q_len))
            output = output * ops.cast(
                ops.expand_dims(row_visible, -1), output.dtype
            )
        if return_attention_scores and grouped:
            # (contexts, heads, group * q_len, k_len) -> (batch, heads, q_len, k_len)
            scores = ops.reshape(
                scores, (contexts, self.num_heads, group, q_len, k_len)
            )
            scores = ops.reshape(
                ops.transpose(scores, (0, 2, 1, 3, 4)),
                (batch, self.num_heads, q_len, k_len),
            )
        if self.gated:
            output = output * tanh_gate(self.gate, self.gate_scale, output.dtype)
        if return_attention_scores:
            return output, scores
        return output

    def _fused_attention(self, query, key, value, mask, scale, bias=None):
        """`ops.dot_product_attention`: a fused kernel where the backend has one."""
        if mask is not None:
            # An all-False row would make the kernel's softmax NaN on some
            # backends; let such rows attend everywhere, `call` zeroes them.
            row_visible = ops.any(mask, axis=-1, keepdims=True)
            mask = ops.logical_or(mask, ops.logical_not(row_visible))
        if bias is not None and mask is not None:
            # PyTorch's kernel takes a bias or a mask, not both: fold the mask in.
            bias = ops.where(mask, bias, finfo_min(bias.dtype))
            mask = None
        if self._kv_heads == 1 and self.num_heads > 1:
            # Keras' TF kernel repeats key/value heads only when there are
            # several of them and relies on broadcasting otherwise, which its
            # einsum lacks: give multi-query attention its heads explicitly.
            key = ops.repeat(key, self.num_heads, axis=2)
            value = ops.repeat(value, self.num_heads, axis=2)
        return ops.dot_product_attention(
            query, key, value, bias=bias, mask=mask, scale=scale
        )

    def _explicit_attention(
        self, query, key, value, mask, scale, training, heads_first=False, bias=None
    ):
        """Softmax attention written out: scores, attention dropout, cached keys.

        `key` and `value` are `(batch, k_len, kv_heads, dim)`, or with
        `heads_first` `(batch, kv_heads, k_len, dim)`.
        """
        heads, kv_heads = self.num_heads, self._kv_heads
        groups = heads // kv_heads
        kv = "bnkd" if heads_first else "bknd"
        q_len, k_len = ops.shape(query)[1], ops.shape(key)[2 if heads_first else 1]
        # Query head h reads key/value head h // groups.
        query = ops.reshape(query, (-1, q_len, kv_heads, groups, self._key_dim))
        logits = ops.einsum(f"bqngd,{kv}->bngqk", query * scale, key)
        logits = ops.reshape(logits, (-1, heads, q_len, k_len))
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            # mask: (batch, 1, q_len, k_len)
            logits = ops.where(mask, logits, finfo_min(logits.dtype))
        probs = ops.softmax(logits, axis=-1)
        if mask is not None:
            # Exact zeros on masked positions, and on rows that see nothing
            # (whose softmax over all-minimum logits is uniform).
            probs = ops.where(mask, probs, ops.zeros_like(probs))
        dropped = self.dropout_layer(probs, training=training)
        dropped = ops.reshape(dropped, (-1, kv_heads, groups, q_len, k_len))
        attended = ops.einsum(f"bngqk,{kv}->bqngd", dropped, value)
        attended = ops.reshape(
            attended, (-1, q_len, heads, ops.shape(value)[-1])
        )
        return attended, probs

    def compute_output_shape(
        self,
        query_shape,
        context_shape=None,
        context_mask_shape=None,
        context_cache_shape=None,
        return_attention_scores=False,
    ):
        output_dim = self.output_dim or query_shape[-1]
        output_shape = tuple(query_shape[:-1]) + (output_dim,)
        if not return_attention_scores:
            return output_shape
        if context_shape is not None:
            k_len = context_shape[1]
        else:
            k_len = context_cache_shape[0][2]  # heads first
        return output_shape, (
            query_shape[0],
            self.num_heads,
            query_shape[1],
            k_len,
        )

    def compute_output_spec(
        self,
        query,
        context,
        context_mask=None,
        context_cache=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        query_mask=None,
        attention_bias=None,
    ):
        cache_shape = None
        if context_cache is not None:
            cache_shape = tuple(tuple(t.shape) for t in context_cache)
        shapes = self.compute_output_shape(
            query.shape,
            None if context is None else context.shape,
            context_cache_shape=cache_shape,
            return_attention_scores=return_attention_scores,
        )
        if not return_attention_scores:
            return keras.KerasTensor(shapes, dtype=self.compute_dtype)
        return (
            keras.KerasTensor(shapes[0], dtype=self.compute_dtype),
            keras.KerasTensor(shapes[1], dtype=core_dtype(self.compute_dtype)),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "gated": self.gated,
                "gate_type": self.gate_type,
                "gate_scale": self.gate_scale,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config


GATE_TYPES = ("scalar", "vector")


def check_gate(gate_type, gate_scale):
    """Raises a ValueError naming `gate_type` or `gate_scale` unless it is usable."""
    if gate_type not in GATE_TYPES:
        raise ValueError(
            f"`gate_type` must be one of {GATE_TYPES}. Received: gate_type={gate_type!r}"
        )
    if (
        isinstance(gate_scale, bool)
        or not isinstance(gate_scale, numbers.Real)
        or not math.isfinite(gate_scale)
        or gate_scale <= 0
    ):
        raise ValueError(
            "`gate_scale` must be a positive finite number. "
            f"Received: gate_scale={gate_scale!r}"
        )


def gate_shape(gate_type, width):
    """The gate weight's shape: `()` for one gate, `(width,)` for one per channel."""
    return () if gate_type == "scalar" else (width,)


def tanh_gate(gate, gate_scale, dtype):
    """`tanh(gate_scale * gate)` in `dtype`, the factor on a gated residual branch.

    The multiplication by the default scale 1.0 is exact, so the default
    gives the numbers of an unscaled gate.
    """
    return ops.tanh(ops.cast(gate, dtype) * gate_scale)


def _check_rank(name, shape):
    if len(shape) != 3:
        raise ValueError(
            f"`{name}` must have rank 3, (batch, length, features). "
            f"Received: {name}.shape={tuple(shape)}"
        )


def _check_groups(query, key):
    """Checks, where both are known, that the context batch divides the query batch."""
    batch, contexts = query.shape[0], key.shape[0]
    if batch is None or contexts is None:
        return
    if batch % max(contexts, 1) or (contexts == 0 and batch):
        raise ValueError(
            "The context batch must divide the query batch: each context is "
            "read by `batch // contexts` consecutive query rows. Received: "
            f"query batch={batch}, context batch={contexts}"
        )


def _check_attention_mask(mask, query_shape, k_len):
    """Checks a `(batch, q_len, k_len)` attention mask against the inputs, where known."""
    expected = tuple(query_shape) + (k_len,)
    shape = tuple(mask.shape)
    if len(shape) != 3 or any(
        m is not None and e is not None and m != e for m, e in zip(shape, expected)
    ):
        raise ValueError(
            "`attention_mask` must have shape (batch, q_len, k_len) = "
            f"{expected}. Received: attention_mask.shape={shape}"
        )


def _attention_mask(query_mask, context_mask, query, context_shape):
    """Combines the query and context masks into `(contexts, 1, q_len, k_len)`.

    `context_shape` is `(contexts, k_len)`.
    """
    if query_mask is None and context_mask is None:
        return None
    contexts, k_len = context_shape
    if context_mask is not None:
        context_mask = ops.convert_to_tensor(context_mask)
        _check_mask("context_mask", context_mask, context_shape, "k_len")
        context_mask = ops.cast(context_mask, "bool")
    if query_mask is not None:
        query_mask = ops.convert_to_tensor(query_mask)
        _check_mask("query_mask", query_mask, tuple(query.shape[:2]), "q_len")
        query_mask = ops.cast(query_mask, "bool")
    q_len = ops.shape(query)[1]
    if context_mask is None:
        context_mask = ops.ones((contexts, k_len), dtype="bool")
    if query_mask is None:
        query_mask = ops.ones((contexts, q_len), dtype="bool")
    mask = ops.logical_and(
        query_mask[:, None, :, None], context_mask[:, None, None, :]
    )
    return mask


def _check_mask(name, mask, expected, length_name):
    """Checks a (batch, length) mask against the expected shape, where known."""
    mask_shape = tuple(mask.shape)
    expected = tuple(e if isinstance(e, int) else None for e in expected)
    compatible = len(mask_shape) == 2 and all(
        m is None or e is None or m == e for m, e in zip(mask_shape, expected)
    )
    if not compatible:
        raise ValueError(
            f"`{name}` must have shape (batch, {length_name}) = {expected}. "
            f"Received: {name}.shape={mask_shape}"
        )
