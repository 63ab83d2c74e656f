"""The text decoder: token + position embeddings, decoder blocks, logits."""

import keras
import keras_hub
from keras import ops

from vlm.layers.decoder_block import DecoderBlock
from vlm.layers.decoder_block import check_sources
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class TextDecoder(keras.layers.Layer):
    """Predicts the next token of a caption from its prefix and the image.

    Args:
        vocabulary_size: int.
        sequence_length: int. The longest token sequence (position table size).
        hidden_dim: int. Width of the text states.
        num_layers: int. Number of `DecoderBlock`s.
        num_heads: int. Attention heads per block.
        mlp_dim: int. Feed-forward width.
        num_key_value_heads: int. Cross-attention key/value heads.
        dropout: float. Dropout rate in the blocks and on the embeddings.
        tie_embeddings: bool. Project to logits with the transposed token
            embedding (fewer parameters) instead of a separate matrix.
        layer_norm_epsilon: float.
        sources: optional tuple of context names: every block then reads each
            named context with its own cross attention (`DecoderBlock`).
        gated_mlp: bool. GeGLU feed-forwards in the blocks (`DecoderBlock`).
        grid_size: optional int, the side of the image's patch grid, for
            `focus_shift` and `position_readout`.
        focus_shift: bool. Every block after the first biases its cross
            attention by where the block before it looked, shifted as its
            queries ask (`vlm.layers.FocusShift`).
        position_readout: bool. Every block adds the coordinates its cross
            attention heads looked at, projected (`DecoderBlock`).
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        tokens: `(batch, length)` int token ids.
        context: `(batch, patches, context_dim)` image patch embeddings (a
            dict of them by name with `sources`), or None when
            `context_caches` is given.
        context_caches: optional list, per block, of `(key, value)` from
            `compute_context_caches`.
        attention_mask: optional boolean `(batch, length, patches)`: which
            context positions each token may attend to (for example
            `vlm.layers.media_attention_mask`).
        self_attention_caches: optional `(layers, batch, 2, heads, max_len,
            dim)` self-attention caches, or a list of one `(batch, 2,
            heads, max_len, dim)` cache per block; `cache_index` is then
            required. A list comes back as a list, which spares a decoding
            loop slicing and restacking every cache at every step.
        cache_index: position of `tokens[:, 0]` in the sequence.
        return_attention_scores: bool. Also return every block's
            cross-attention probabilities, a list of
            `(batch, heads, length, patches)`.
        training: bool.

    Returns:
        `(batch, length, vocabulary_size)` float32 logits; with caches, the
        updated self-attention caches follow, and with
        `return_attention_scores` the list of scores comes last.
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        hidden_dim,
        num_layers,
        num_heads,
        mlp_dim,
        num_key_value_heads=None,
        dropout=0.0,
        tie_embeddings=True,
        layer_norm_epsilon=1e-6,
        sources=None,
        gated_mlp=False,
        grid_size=None,
        focus_shift=False,
        position_readout=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in [
            ("vocabulary_size", vocabulary_size),
            ("sequence_length", sequence_length),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("mlp_dim", mlp_dim),
        ]:
            check_positive_int(name, value)
        if hidden_dim % num_heads:
            raise ValueError(
                "`num_heads` must divide `hidden_dim`. Received: "
                f"num_heads={num_heads}, hidden_dim={hidden_dim}"
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = float(dropout)
        self.tie_embeddings = tie_embeddings
        self.layer_norm_epsilon = layer_norm_epsilon
        self.sources = check_sources(sources)
        self.gated_mlp = bool(gated_mlp)
        self.grid_size = grid_size
        self.focus_shift = bool(focus_shift)
        self.position_readout = bool(position_readout)

        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_embeddings,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            reverse_dtype="float32",  # logits and the loss in float32
            name="token_embedding",
            dtype=self.dtype_policy,
        )
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            sequence_length,
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position_embedding",
            dtype=self.dtype_policy,
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout, name="embedding_dropout", dtype=self.dtype_policy
        )
        self.blocks = [
            DecoderBlock(
                num_heads,
                mlp_dim,
                num_key_value_heads=num_key_value_heads,
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                sources=self.sources,
                gated_mlp=self.gated_mlp,
                grid_size=grid_size,
                focus_shift=self.focus_shift and i > 0,
                position_readout=self.position_readout,
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="final_norm", dtype=self.dtype_policy
        )

    def build(self, tokens_shape, context_shape):
        states_shape = tuple(tokens_shape) + (self.hidden_dim,)
        self.token_embedding.build(tokens_shape)
        self.position_embedding.build(states_shape)
        for block in self.blocks:
            block.build(states_shape, context_shape)
        self.final_norm.build(states_shape)

    def compute_context_caches(self, context):
        """Every block's cross-attention `(key, value)`, computed once."""
        return [block.compute_context_cache(context) for block in self.blocks]

    def empty_caches(self, batch, max_length):
        """Zero self-attention caches for `max_length` positions, one per block.

        Each is `(batch, 2, heads, max_length, head_dim)`, heads first as the
        attention reads it. A list rather than one stacked array, which a
        decoding loop would slice and restack (copy) at every step.
        """
        head_dim = self.hidden_dim // self.num_heads
        shape = (batch, 2, self.num_heads, max_length, head_dim)
        return [ops.zeros(shape, dtype=self.compute_dtype) for _ in range(self.num_layers)]

    def call_with_cache(self, tokens, context_caches, self_attention_caches, cache_index,
                        attention_mask=None):
        """One cached decoding step: the decoder from position `cache_index` on.

        Args:
            tokens: int `(batch, length)`, the tokens at positions
                `cache_index ...` (usually one).
            context_caches: `compute_context_caches(context)`.
            self_attention_caches: `empty_caches(...)` or the caches this
                method returned at the previous step.
            cache_index: int scalar tensor, the position of `tokens[:, 0]`.
            attention_mask: optional `(batch, length, patches)` rows of the
                cross-attention mask for these positions.

        Returns:
            `(logits, self_attention_caches)`: float32 `(batch, length,
            vocabulary_size)` and the caches with these positions written.
        """
        return self(tokens, None, context_caches=context_caches, attention_mask=attention_mask,
                    self_attention_caches=self_attention_caches, cache_index=cache_index,
                    training=False)

    def call(
        self,
        tokens,
        context,
        context_caches=None,
        attention_mask=None,
        self_attention_caches=None,
        cache_index=None,
        return_attention_scores=False,
        training=None,
    ):
        x = self.token_embedding(tokens)
        start = 0 if cache_index is None else cache_index
        x = x + self.position_embedding(x, start_index=start,
                                        positions=positions_from(start, tokens))
        x = self.embedding_dropout(x, training=training)
        updated_caches, scores = [], []
        focus = None
        for i, block in enumerate(self.blocks):
            # A block whose successor shifts its attention map hands it on.
            hand_on = self.focus_shift and i + 1 < len(self.blocks)
            outputs = block(
                x,
                context,
                context_cache=None if context_caches is None else context_caches[i],
                attention_mask=attention_mask,
                self_attention_cache=(
                    None if self_attention_caches is None else self_attention_caches[i]
                ),
                cache_index=cache_index,
                focus=focus,
                return_attention_scores=return_attention_scores or hand_on,
                training=training,
            )
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            x = outputs[0]
            if self_attention_caches is not None:
                updated_caches.append(outputs[1])
            if return_attention_scores:
                scores.append(outputs[-1])
            focus = outputs[-1] if hand_on else None
        logits = self._logits(self.final_norm(x))
        outputs = (logits,)
        if self_attention_caches is not None:
            if not isinstance(self_attention_caches, (list, tuple)):
                updated_caches = ops.stack(updated_caches)
            outputs += (updated_caches,)
        if return_attention_scores:
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _logits(self, x):
        """float32 logits `(batch, length, vocabulary_size)` of final states `x`."""
        if not self.tie_embeddings:
            return self.token_embedding(x, reverse=True)
        # `x @ embeddings^T` with the embedding read as stored, `(vocab,
        # hidden)`, and first. (`reverse=True` transposes it, and at batch 1
        # XLA:CPU fuses that transpose into the matrix-vector product as an
        # unvectorised loop.)
        embeddings = ops.cast(self.token_embedding.embeddings, "float32")
        return ops.einsum("vd,btd->btv", embeddings, ops.cast(x, "float32"))

    def compute_output_shape(self, tokens_shape, context_shape=None):
        return tuple(tokens_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "tie_embeddings": self.tie_embeddings,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "sources": None if self.sources is None else list(self.sources),
                "gated_mlp": self.gated_mlp,
                "grid_size": self.grid_size,
                "focus_shift": self.focus_shift,
                "position_readout": self.position_readout,
            }
        )
        return config


def positions_from(start, tokens):
    """Positions `start, start + 1, ...` of `tokens` for a position table, or None.

    None for a Python int `start` (the table is then sliced). A traced start
    is read by position (a gather) instead: PyTorch's `torch.export` cannot
    trace a slice from it.
    """
    if isinstance(start, int):
        return None
    return ops.arange(ops.shape(tokens)[1], dtype="int32") + ops.cast(start, "int32")
