"""Samplers on a toy second-order Markov chain, against NumPy references."""

import itertools

import numpy as np
import pytest
from keras import ops

from vlm import samplers
from vlm.samplers import BeamSampler
from vlm.samplers import GreedySampler
from vlm.samplers import TopKSampler
from vlm.samplers import TopPSampler

PAD, START, END = 0, 1, 2
VOCAB = 5


def log_softmax(x):
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
        -1, keepdims=True)


# log p(next | previous, current): depends on the cache (previous token) too,
# so a beam search that reorders its cache wrongly gives other sequences.
TABLE = log_softmax(np.random.default_rng(4).normal(size=(VOCAB, VOCAB, VOCAB)))
TABLE[..., PAD] = -30.0  # never chosen while live
TABLE[..., START] = -30.0
TABLE = log_softmax(TABLE).astype("float32")


def next_fn(tokens, cache, index):
    current = ops.take(tokens, ops.expand_dims(index, 0), axis=1)[:, 0]
    rows = cache * VOCAB + current
    log_probs = ops.take(ops.reshape(ops.convert_to_tensor(TABLE), (VOCAB * VOCAB, VOCAB)),
                         rows, axis=0)
    return log_probs, current


def decode(sampler, inputs, max_length, noise=None):
    rows = inputs * sampler.rows_per_input
    tokens = np.full((rows, max_length + 1), PAD, "int32")
    tokens[:, 0] = START
    cache = np.full((rows,), START, "int32")
    if noise is None:
        noise = sampler.noise(max_length, rows, VOCAB)
    ids, scores = sampler(next_fn, ops.convert_to_tensor(tokens), ops.convert_to_tensor(cache),
                          ops.convert_to_tensor(noise), max_length, END, PAD)
    return ops.convert_to_numpy(ids), ops.convert_to_numpy(scores)


def score(sequence):
    """Summed log-prob of `sequence` up to and including END (PAD after it)."""
    previous, current, total = START, START, 0.0
    for token in sequence:
        if previous == END or current == END:
            assert token == PAD
            continue
        total += TABLE[previous, current, token]
        previous, current = current, token
    return total


def reference_greedy(max_length):
    previous, current, out = START, START, []
    for _ in range(max_length):
        if current == END:
            out.append(PAD)
            continue
        token = int(np.argmax(TABLE[previous, current]))
        out.append(token)
        previous, current = current, token
    return out


def test_greedy_follows_the_argmax_chain():
    ids, total = decode(GreedySampler(), 1, 6)
    assert ids[0].tolist() == reference_greedy(6)
    np.testing.assert_allclose(total[0], score(ids[0]), atol=1e-5)


def test_a_beam_wide_enough_finds_the_best_sequence():
    max_length = 3
    candidates = []
    for sequence in itertools.product(range(VOCAB), repeat=max_length):
        seq = list(sequence)
        if END in seq:  # padding after the end, live tokens before it
            stop = seq.index(END)
            if any(t != PAD for t in seq[stop + 1:]) or PAD in seq[:stop]:
                continue
        elif PAD in seq:
            continue
        candidates.append((score(seq), seq))
    best_score, best = max(candidates)
    ids, total = decode(BeamSampler(num_beams=VOCAB ** max_length), 2, max_length)
    assert ids.tolist() == [best, best]
    np.testing.assert_allclose(total, best_score, atol=1e-5)
    # One beam is greedy, and more beams never score worse.
    greedy_ids, greedy_total = decode(GreedySampler(), 1, max_length)
    one_ids, one_total = decode(BeamSampler(num_beams=1), 1, max_length)
    np.testing.assert_array_equal(one_ids, greedy_ids)
    np.testing.assert_allclose(one_total, greedy_total, atol=1e-5)
    assert best_score >= greedy_total[0] - 1e-5
    assert best_score > greedy_total[0] + 1e-3  # the chain is one where greedy is not best


def test_top_k_and_top_p_sample_only_inside_their_sets():
    log_probs = log_softmax(np.random.default_rng(1).normal(size=(4, 50)) * 3).astype("float32")
    ranked = np.argsort(-log_probs, axis=-1)
    tensor = ops.convert_to_tensor(log_probs)
    for seed in range(20):
        noise = TopKSampler(seed=seed).noise(1, 4, 50)[0]
        chosen = ops.convert_to_numpy(TopKSampler(k=3).select(tensor, noise))
        assert all(c in ranked[i, :3] for i, c in enumerate(chosen))
        chosen = ops.convert_to_numpy(TopPSampler(p=0.6).select(tensor, noise))
        probs = np.exp(log_probs)
        for i, c in enumerate(chosen):
            ordered = probs[i, ranked[i]]
            nucleus = ranked[i, :int(np.searchsorted(np.cumsum(ordered), 0.6) + 1)]
            assert c in nucleus
    # A very low temperature is greedy; seeds give the same noise on every backend.
    cold = TopKSampler(k=50, temperature=1e-4, seed=0)
    chosen = ops.convert_to_numpy(cold.select(tensor, cold.noise(1, 4, 50)[0]))
    np.testing.assert_array_equal(chosen, ranked[:, 0])
    np.testing.assert_array_equal(TopPSampler(seed=5).noise(2, 1, 3),
                                  TopKSampler(seed=5).noise(2, 1, 3))


@pytest.mark.parametrize("sampler", [GreedySampler(), BeamSampler(num_beams=3),
                                     TopKSampler(k=4, temperature=0.5, seed=2),
                                     TopPSampler(p=0.5, temperature=2.0, seed=1)])
def test_config_round_trips_and_get_resolves(sampler):
    assert type(sampler).from_config(sampler.get_config()) == sampler
    assert samplers.get(samplers.serialize(sampler)) == sampler
    assert samplers.get(sampler) is sampler
    # The seed is an input of the compiled loop, not part of its key.
    if "seed" in sampler.get_config():
        other = type(sampler)(**dict(sampler.get_config(), seed=99))
        assert other.trace_key() == sampler.trace_key() and other != sampler


def test_names_resolve_with_their_defaults_and_arguments():
    assert samplers.get("greedy") == GreedySampler()
    assert samplers.get("beam") == BeamSampler(num_beams=4)
    assert samplers.get("top_k", k=5) == TopKSampler(k=5, temperature=1.0, seed=0)
    assert samplers.get("top_p") == TopPSampler(p=0.9, temperature=1.0, seed=0)


@pytest.mark.parametrize("make, message", [
    (lambda: samplers.get("sample"), "sampler.*Received: sampler='sample'"),
    (lambda: samplers.get("beam", k=3), r"takes \['num_beams'\].*Received: k=3"),
    (lambda: BeamSampler(num_beams=0), "num_beams.*Received: num_beams=0"),
    (lambda: TopKSampler(k=True), "k.*Received: k=True"),
    (lambda: TopPSampler(p=1.5), r"p.*\(0, 1\].*Received: p=1.5"),
    (lambda: TopKSampler(temperature=0.0), "temperature.*Received: temperature=0.0"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
