"""`BeamSampler`: beam search with the beams in the batch dimension."""

import keras
from keras import ops

from vlm.compilation import while_loop
from vlm.samplers.sampler import NEG_INF
from vlm.samplers.sampler import Sampler
from vlm.samplers.sampler import keep_going
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class BeamSampler(Sampler):
    """Keeps the `num_beams` most likely sequences; returns each input's best.

    Each step extends every live beam by every token, keeps the `num_beams`
    best sums of log-probabilities per input, and reorders the rows of the
    cache by the surviving beams' parents. A finished beam extends only by
    padding, at no cost. The rows of input `i` are `i * num_beams ...`: a
    model reads its image's context once for all of them.

    Args:
        num_beams: int, beams per input (1 is greedy).

    Example:

    >>> model.generate(images, sampler=BeamSampler(num_beams=4))
    """

    def __init__(self, num_beams=4):
        self.num_beams = check_positive_int("num_beams", num_beams)

    @property
    def rows_per_input(self):
        return self.num_beams

    def __call__(self, next, tokens, cache, noise, max_length, end_token_id, pad_token_id):
        """Beam search; `tokens` has `num_beams` rows per input (see `Sampler`).

        Returns:
            `(ids, log_probs)` of each input's best beam: `(inputs,
            max_length)` and `(inputs,)`.
        """
        beams = self.num_beams
        rows = ops.shape(tokens)[0]
        batch = rows // beams
        done = ops.zeros((rows,), "bool")
        # Only the first beam is live at the start, so beams do not duplicate.
        first = ops.concatenate([ops.zeros((1,)), ops.full((beams - 1,), NEG_INF)])
        scores = ops.tile(first[None], (batch, 1))  # (batch, beams)

        def body(index, tokens, cache, done, scores):
            log_probs, cache = next(tokens, cache, index)
            vocabulary = ops.shape(log_probs)[-1]
            pad_only = ops.where(ops.arange(vocabulary) == pad_token_id, 0.0, NEG_INF)
            log_probs = ops.where(done[:, None], pad_only[None], log_probs)
            totals = ops.reshape(scores, (-1, 1)) + log_probs  # (batch * beams, vocab)
            totals = ops.reshape(totals, (-1, beams * vocabulary))
            scores, flat_choice = ops.top_k(totals, beams)  # (batch, beams)
            parent = flat_choice // vocabulary
            token = ops.reshape(ops.cast(flat_choice % vocabulary, "int32"), (-1, 1))
            kept = ops.reshape(parent + ops.arange(batch)[:, None] * beams, (-1,))
            tokens = ops.take(tokens, kept, axis=0)
            cache = keras.tree.map_structure(lambda c: ops.take(c, kept, axis=0), cache)
            done = ops.take(done, kept, axis=0)
            tokens = ops.slice_update(tokens, [0, index + 1], token)
            done = ops.logical_or(done, ops.equal(token[:, 0], end_token_id))
            return index + 1, tokens, cache, done, scores

        start = ops.convert_to_tensor(0, "int32")
        _, tokens, _, _, scores = while_loop(
            keep_going(max_length), body, (start, tokens, cache, done, scores))
        # top_k sorts, so beam 0 is each input's best.
        best = ops.reshape(tokens, (-1, beams, max_length + 1))[:, 0, 1:]
        return best, scores[:, 0]

    def get_config(self):
        return {"num_beams": self.num_beams}
