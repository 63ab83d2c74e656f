"""One pre-LayerNorm decoder block: causal self-attention, cross attention, MLP."""

import keras
import numpy as np
from keras import ops

from vlm.layers.attention_utils import check_dropout
from vlm.layers.causal_self_attention import CausalSelfAttention
from vlm.layers.cross_attention import CrossAttention
from vlm.layers.focus_shift import FocusShift
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class DecoderBlock(keras.layers.Layer):
    """A text decoder block that reads an image through cross attention.

    `x + SelfAttention(LN(x))`, then `x + CrossAttention(LN(x), context)`,
    then `x + MLP(LN(x))`, each branch with dropout (pre-LayerNorm, as in
    GPT-2 and ViT).

    With `sources`, the block reads several named contexts (for example the
    "before" and "after" image of a pair), one cross attention each, one
    after the other: `x + CrossAttention_s(LN_s(x), context[s])` for each
    source `s` in order.

    Args:
        num_heads: int. Attention heads, in both attentions.
        mlp_dim: int. Width of the feed-forward hidden layer.
        num_key_value_heads: int. Key/value heads of the cross attention
            (grouped-query attention when fewer than `num_heads`).
        dropout: float. Dropout on each residual branch and on attention.
        layer_norm_epsilon: float. Epsilon of the LayerNorms.
        sources: optional tuple of context names, one cross attention each;
            None reads one context.
        gated_mlp: bool. A GeGLU feed-forward, `down(gelu(gate(x)) * up(x))`
            (Shazeer, 2020), instead of `down(gelu(up(x)))`: its product
            lets a word (say a relation) switch which features pass on.
        grid_size: optional int, the side of the context's row-major patch
            grid, for `focus_shift` and `position_readout` (one context only).
        focus_shift: bool. Add `FocusShift`'s bias to the cross attention:
            the previous block's attention map (`focus`), moved by kernels
            its queries pick.
        position_readout: bool. Also add, projected, where each cross
            attention head looked: the `(x, y)` in [-1, 1] its probabilities
            average to, so the next layers read the attended object's
            coordinates as numbers rather than from a position code.
        focus_shifts: int. `FocusShift`'s number of kernels.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, hidden_dim)` text states.
        context: `(batch, patches, context_dim)` image patch embeddings, or
            None with `context_cache`; with `sources`, a dict of them by
            source name.
        context_cache: optional `(key, value)` from `compute_context_cache`
            (with `sources`, a dict of them).
        attention_mask: optional `(batch, length, patches)` boolean mask of
            the context positions each text position may attend to (one
            context only).
        self_attention_cache: optional `(batch, 2, heads, max_length, dim)`
            self-attention cache; `cache_index` is then required.
        cache_index: position of `inputs[:, 0]` in the sequence.
        focus: optional `(batch, heads, length, patches)` cross-attention
            probabilities of the previous block, for `focus_shift`.
        return_attention_scores: bool. Also return the cross-attention
            probabilities `(batch, heads, length, patches)`.
        training: bool.

    Returns:
        `(batch, length, hidden_dim)`; with a self-attention cache, the
        updated cache follows it, and with `return_attention_scores` the
        cross-attention scores come last.

    Example:

    >>> block = DecoderBlock(num_heads=2, mlp_dim=64)
    >>> block(keras.random.normal((2, 5, 16)), keras.random.normal((2, 9, 32))).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        num_key_value_heads=None,
        dropout=0.0,
        layer_norm_epsilon=1e-6,
        sources=None,
        gated_mlp=False,
        grid_size=None,
        focus_shift=False,
        position_readout=False,
        focus_shifts=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        self.gated_mlp = bool(gated_mlp)
        self.focus_shift_enabled = bool(focus_shift)
        self.position_readout_enabled = bool(position_readout)
        if self.focus_shift_enabled or self.position_readout_enabled:
            check_positive_int("grid_size", grid_size)
            if sources is not None:
                raise ValueError(
                    "`focus_shift` and `position_readout` read one attention map over one "
                    f"image's grid; they do not take `sources`. Received: sources={sources!r}")
        self.grid_size = grid_size
        self.focus_shifts = check_positive_int("focus_shifts", focus_shifts)
        self.sources = check_sources(sources)
        check_positive_int("mlp_dim", mlp_dim)
        check_dropout(dropout)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = float(dropout)
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, inputs_shape, context_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the hidden width. Received: "
                f"num_heads={self.num_heads}, hidden_dim={hidden_dim}"
            )

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name=name, dtype=self.dtype_policy
            )
            layer.build(inputs_shape)
            return layer

        self.self_attention_norm = norm("self_attention_norm")
        self.self_attention = CausalSelfAttention(
            self.num_heads, dropout=self.dropout, name="self_attention",
            dtype=self.dtype_policy,
        )
        self.self_attention.build(inputs_shape)
        # One source keeps the names `cross_attention(_norm)` (checkpoint keys).
        self._cross_attentions = []
        for source in self.sources or (None,):
            suffix = "" if source is None else f"_{source}"
            shape = context_shape if source is None else context_shape[source]
            layer_norm = norm(f"cross_attention_norm{suffix}")
            attention = CrossAttention(
                self.num_heads,
                num_key_value_heads=self.num_key_value_heads,
                dropout=self.dropout,
                name=f"cross_attention{suffix}",
                dtype=self.dtype_policy,
            )
            attention.build(inputs_shape, shape)
            setattr(self, f"cross_attention_norm{suffix}", layer_norm)
            setattr(self, f"cross_attention{suffix}", attention)
            self._cross_attentions.append((source, layer_norm, attention))
        self.focus_shift = None
        if self.focus_shift_enabled:
            self.focus_shift = FocusShift(self.grid_size, self.num_heads, self.focus_shifts,
                                          name="focus_shift", dtype=self.dtype_policy)
            self.focus_shift.build(
                (inputs_shape[0], self.num_heads, inputs_shape[1], self.grid_size**2),
                inputs_shape)
        self.position_readout = None
        if self.position_readout_enabled:
            # Starts at zero: the block begins as one without it.
            self.position_readout = keras.layers.Dense(
                hidden_dim, kernel_initializer="zeros", name="position_readout",
                dtype=self.dtype_policy)
            self.position_readout.build(tuple(inputs_shape[:-1]) + (2 * self.num_heads,))
            cells = np.arange(self.grid_size**2)
            rows, cols = np.divmod(cells, self.grid_size)
            scale = 2.0 / max(self.grid_size - 1, 1)
            self._cell_xy = np.stack([cols * scale - 1.0, rows * scale - 1.0], -1).astype(
                "float32")  # (cells, 2)
        self.mlp_norm = norm("mlp_norm")
        self.mlp_up = keras.layers.Dense(
            self.mlp_dim, activation=None if self.gated_mlp else "gelu", name="mlp_up",
            dtype=self.dtype_policy
        )
        self.mlp_up.build(inputs_shape)
        self.mlp_gate = None
        if self.gated_mlp:
            self.mlp_gate = keras.layers.Dense(
                self.mlp_dim, activation="gelu", name="mlp_gate", dtype=self.dtype_policy)
            self.mlp_gate.build(inputs_shape)
        self.mlp_down = keras.layers.Dense(
            hidden_dim, name="mlp_down", dtype=self.dtype_policy
        )
        self.mlp_down.build(tuple(inputs_shape[:-1]) + (self.mlp_dim,))
        self.residual_dropout = keras.layers.Dropout(
            self.dropout, name="residual_dropout", dtype=self.dtype_policy
        )

    def _read_positions(self, probs):
        """The projected `(x, y)` that each head's `(batch, heads, length, cells)` averages to."""
        cell_xy = ops.convert_to_tensor(self._cell_xy, dtype=probs.dtype)
        where = ops.einsum("bhtc,cd->bthd", probs, cell_xy)  # (batch, length, heads, 2)
        batch, length = ops.shape(where)[0], ops.shape(where)[1]
        where = ops.reshape(where, (batch, length, 2 * self.num_heads))
        return self.position_readout(ops.cast(where, self.compute_dtype))

    def compute_context_cache(self, context):
        """The cross-attention `(key, value)` of `context` (a dict with `sources`)."""
        if self.sources is None:
            return self.cross_attention.compute_context_cache(context)
        return {source: attention.compute_context_cache(context[source])
                for source, _, attention in self._cross_attentions}

    def call(
        self,
        inputs,
        context,
        context_cache=None,
        attention_mask=None,
        self_attention_cache=None,
        cache_index=None,
        focus=None,
        return_attention_scores=False,
        training=None,
    ):
        x = inputs
        attended = self.self_attention(
            self.self_attention_norm(x),
            cache=self_attention_cache,
            cache_index=cache_index,
            training=training,
        )
        if self_attention_cache is not None:
            attended, self_attention_cache = attended
        x = x + self.residual_dropout(attended, training=training)
        scores = {}
        for source, layer_norm, attention in self._cross_attentions:
            def pick(value):
                return value if source is None or value is None else value[source]

            query = layer_norm(x)
            bias = None
            if self.focus_shift is not None and focus is not None:
                bias = self.focus_shift(focus, query)
            needs_scores = return_attention_scores or self.position_readout is not None
            attended = attention(
                query,
                pick(context),
                context_cache=pick(context_cache),
                attention_mask=attention_mask,
                attention_bias=bias,
                return_attention_scores=needs_scores,
                training=training,
            )
            if needs_scores:
                attended, scores[source] = attended
            if self.position_readout is not None:
                attended = attended + self._read_positions(scores[source])
            x = x + self.residual_dropout(attended, training=training)
        if self.sources is None:
            scores = scores.get(None)
        normed = self.mlp_norm(x)
        hidden = self.mlp_up(normed)
        if self.mlp_gate is not None:
            hidden = hidden * self.mlp_gate(normed)
        hidden = self.mlp_down(hidden)
        x = x + self.residual_dropout(hidden, training=training)
        outputs = (x,)
        if self_attention_cache is not None:
            outputs += (self_attention_cache,)
        if return_attention_scores:
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "sources": None if self.sources is None else list(self.sources),
                "gated_mlp": self.gated_mlp,
                "grid_size": self.grid_size,
                "focus_shift": self.focus_shift_enabled,
                "position_readout": self.position_readout_enabled,
                "focus_shifts": self.focus_shifts,
            }
        )
        return config


def check_sources(sources):
    """`sources` as a tuple of distinct names, or None; a ValueError names a bad one."""
    if sources is None:
        return None
    sources = tuple(sources) if isinstance(sources, (list, tuple)) else (sources,)
    if not sources or len(set(sources)) != len(sources) or not all(
            isinstance(s, str) and s.isidentifier() for s in sources):
        raise ValueError(
            "`sources` must be None or distinct names (letters, digits, _). "
            f"Received: sources={sources!r}")
    return sources
