"""COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D) as the official COCO evaluation computes them.

The numbers follow pycocoevalcap line for line: BLEU from
`pycocoevalcap/bleu/bleu_scorer.py` (corpus-level, "closest" reference length,
its 1e-15 / 1e-9 smoothing), ROUGE-L from `pycocoevalcap/rouge/rouge.py`
(beta 1.2, best precision and best recall taken over the references
separately) and CIDEr-D from `pyciderevalcap/ciderD/ciderD_scorer.py` with
`df="corpus"` (document frequencies from the evaluated split's references,
clipped n-gram weights, Gaussian length penalty, sigma 6, times 10).

One thing differs on purpose: text is not run through the Stanford PTB
tokenizer (Java). `normalize` lowercases, deletes apostrophes and turns other
punctuation into spaces, the project's caption normalisation, so "man's" is
one token "mans" where PTB would give "man 's".

Pure Python and NumPy: no TensorFlow, Keras or Java, so it runs beside any backend.

Example:

```python
score_captions(
    ["a dog runs on the grass", "a cat sleeps"],
    [["a dog runs on the grass", "a brown dog running"], ["a cat is sleeping"]],
)
# {"bleu_1": ..., "bleu_2": ..., "bleu_3": ..., "bleu_4": ..., "rouge_l": ...,
#  "cider_d": ..., "per_image": [{"bleu_4": ..., "rouge_l": ..., "cider_d": ...}, ...]}
```
"""

import math
from collections import Counter

import numpy as np

from vlm.utils.argument_checks import check_positive_int
from vlm.utils.caption_text import caption_words

# pycocoevalcap's BLEU smoothing: every modified precision is
# (correct + 1e-15) / (guess + 1e-9), so a candidate with no n-grams of some
# order gets precision 1e-6 there instead of a division by zero.
_TINY = 1e-15
_SMALL = 1e-9
_CIDER_MAX_N = 4


def normalize(text):
    """Splits a caption into the tokens every metric here scores.

    The project's one normalisation (`vlm.utils.caption_text.normalize_caption`: lowercase,
    apostrophes deleted, other punctuation to spaces), split on whitespace.

    Args:
        text: `str`, or UTF-8 `bytes`.

    Returns:
        list of `str` tokens, empty for a caption with no words.

    Example:

    >>> normalize("A Dog, running!")
    ['a', 'dog', 'running']
    """
    return caption_words(text)


def _tokenize_inputs(candidates, references):
    """Checks one candidate and at least one reference per image; returns their tokens."""
    for name, value in (("candidates", candidates), ("references", references)):
        if isinstance(value, (str, bytes)):
            raise TypeError(
                f"`{name}` must be a list with one entry per image, not one string. "
                f"Received: {name}={value!r}"
            )
    candidates, references = list(candidates), list(references)
    if len(candidates) != len(references):
        raise ValueError(
            "`candidates` and `references` must have one entry per image each. "
            f"Received: len(candidates)={len(candidates)}, len(references)={len(references)}"
        )
    if not candidates:
        raise ValueError("No images to score: `candidates` and `references` are empty.")
    candidate_tokens = [normalize(candidate) for candidate in candidates]
    reference_tokens = []
    for index, refs in enumerate(references):
        if isinstance(refs, (str, bytes)):
            raise TypeError(
                f"references[{index}] must be a list of reference captions, not one string. "
                f"Received: references[{index}]={refs!r}"
            )
        refs = list(refs)
        if not refs:
            raise ValueError(
                f"Every image needs at least one reference caption. "
                f"Received: references[{index}]=[] (image {index})"
            )
        reference_tokens.append([normalize(ref) for ref in refs])
    return candidate_tokens, reference_tokens


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def _ngram_counts(tokens, max_n):
    """Counts of every n-gram (as a tuple of tokens) for n = 1..max_n."""
    counts = Counter()
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start:start + n])] += 1
    return counts


# ---------------------------------------------------------------------------
# BLEU


def _bleu_statistics(candidate, refs, max_n):
    """One image's BLEU sufficient statistics, as pycocoevalcap's `cook_test`.

    Returns:
        `(test_len, ref_len, correct, guess)`: candidate length, the closest
        reference length (a tie goes to the shorter), clipped n-gram matches
        and candidate n-gram totals per order.
    """
    max_ref_counts = {}
    for ref in refs:
        for ngram, count in _ngram_counts(ref, max_n).items():
            max_ref_counts[ngram] = max(max_ref_counts.get(ngram, 0), count)
    correct = [0] * max_n
    for ngram, count in _ngram_counts(candidate, max_n).items():
        correct[len(ngram) - 1] += min(max_ref_counts.get(ngram, 0), count)
    guess = [max(0, len(candidate) - k) for k in range(max_n)]
    # Sorting on (distance, length) is what breaks ties toward the shorter reference.
    ref_len = min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
    return len(candidate), ref_len, correct, guess


def _bleu_from_statistics(test_len, ref_len, correct, guess):
    """BLEU-1..N from (summed) statistics: running geometric mean times the brevity penalty."""
    scores = []
    product = 1.0
    for k, (matched, total) in enumerate(zip(correct, guess)):
        product *= (matched + _TINY) / (total + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    # exp(1 - r / c) when c < r, with the same smoothing keeping c = 0 finite
    # (the penalty then underflows to 0).
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [score * penalty for score in scores]
    return scores


def _bleu_tokens(candidate_tokens, reference_tokens, max_n):
    statistics = [
        _bleu_statistics(candidate, refs, max_n)
        for candidate, refs in zip(candidate_tokens, reference_tokens)
    ]
    keys = [f"bleu_{n}" for n in range(1, max_n + 1)]
    per_image = [dict(zip(keys, _bleu_from_statistics(*stats))) for stats in statistics]
    corpus = _bleu_from_statistics(
        sum(stats[0] for stats in statistics),
        sum(stats[1] for stats in statistics),
        [sum(stats[2][k] for stats in statistics) for k in range(max_n)],
        [sum(stats[3][k] for stats in statistics) for k in range(max_n)],
    )
    return dict(zip(keys, corpus)), per_image


def bleu(candidates, references, max_n=4):
    """Corpus BLEU-1..max_n as pycocoevalcap's `Bleu` scorer computes it.

    Clipped n-gram matches, candidate n-gram totals, candidate lengths and
    reference lengths are summed over the corpus before the precisions are
    formed; each image's reference length is the one closest to its
    candidate's (ties go to the shorter). BLEU-n is the geometric mean of the
    precisions for orders 1..n times the corpus brevity penalty
    `exp(1 - r / c)` (1 when c >= r). Precisions carry pycocoevalcap's
    smoothing `(correct + 1e-15) / (guess + 1e-9)`, so a candidate shorter
    than n words scores a precision of 1e-6, not 0, at order n.

    Args:
        candidates: list of `str`, one generated caption per image.
        references: list of lists of `str`, the reference captions of each image.
        max_n: int >= 1, the highest n-gram order (pycocoevalcap uses 4).

    Returns:
        `(corpus, per_image)`: `corpus` is a dict `{"bleu_1": float, ...,
        f"bleu_{max_n}": float}`; `per_image` a list with one dict of the same
        keys per image: sentence-level BLEU with the same smoothing and that
        image's own brevity penalty (pycocoevalcap's per-image list).

    Example:

    >>> corpus, _ = bleu(["the cat sat"], [["the cat sat on the mat"]])
    >>> round(corpus["bleu_1"], 6)  # precision 1, brevity penalty exp(1 - 6/3)
    0.367879
    """
    max_n = check_positive_int("max_n", max_n)
    return _bleu_tokens(*_tokenize_inputs(candidates, references), max_n)


# ---------------------------------------------------------------------------
# ROUGE-L


def _lcs_length(a, b):
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            if token_a == token_b:
                current.append(previous[j] + 1)
            else:
                current.append(max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l_image(candidate, refs, beta):
    if not candidate:
        return 0.0
    best_precision, best_recall = 0.0, 0.0
    for ref in refs:
        lcs = _lcs_length(candidate, ref)
        best_precision = max(best_precision, lcs / len(candidate))
        # An empty reference has recall 0 (pycocoevalcap splits "" into [""],
        # one token no candidate word equals).
        if ref:
            best_recall = max(best_recall, lcs / len(ref))
    if best_precision == 0 or best_recall == 0:
        return 0.0
    return ((1 + beta**2) * best_precision * best_recall) / (best_recall + beta**2 * best_precision)


def _rouge_l_tokens(candidate_tokens, reference_tokens, beta):
    per_image = [
        _rouge_l_image(candidate, refs, beta)
        for candidate, refs in zip(candidate_tokens, reference_tokens)
    ]
    return float(np.mean(per_image)), per_image


def rouge_l(candidates, references, beta=1.2):
    """ROUGE-L as pycocoevalcap's `Rouge` scorer computes it, averaged over images.

    For each image, P = max over references of LCS / len(candidate) and
    R = max over references of LCS / len(reference), each maximum taken on its
    own (they may come from different references); then
    `F = (1 + beta^2) P R / (R + beta^2 P)`, or 0 when P or R is 0.

    Args:
        candidates: list of `str`, one generated caption per image.
        references: list of lists of `str`, the reference captions of each image.
        beta: positive float, the weight of recall over precision (1.2 in COCO).

    Returns:
        `(mean, per_image)`: the mean F over images (float) and the list of
        per-image F values. An empty candidate scores 0.

    Example:

    >>> mean, per_image = rouge_l(["a dog runs"], [["a dog runs"]])
    >>> mean
    1.0
    """
    _check_positive("beta", beta)
    return _rouge_l_tokens(*_tokenize_inputs(candidates, references), beta)


# ---------------------------------------------------------------------------
# CIDEr-D


def _cider_d_tokens(candidate_tokens, reference_tokens, sigma):
    candidate_counts = [_ngram_counts(tokens, _CIDER_MAX_N) for tokens in candidate_tokens]
    reference_counts = [
        [_ngram_counts(tokens, _CIDER_MAX_N) for tokens in refs] for refs in reference_tokens
    ]
    # Document frequency: the number of images whose reference set holds the n-gram.
    document_frequency = Counter()
    for refs in reference_counts:
        document_frequency.update(set().union(*refs))
    log_num_images = math.log(float(len(reference_counts)))

    def tf_idf(counts, tokens):
        vectors = [{} for _ in range(_CIDER_MAX_N)]
        norms = [0.0] * _CIDER_MAX_N
        for ngram, term_freq in counts.items():
            # An n-gram in no reference counts as df 1, so its idf is log(N).
            idf = log_num_images - math.log(max(1.0, document_frequency[ngram]))
            vectors[len(ngram) - 1][ngram] = term_freq * idf
            norms[len(ngram) - 1] += (term_freq * idf) ** 2
        # ciderD_scorer measures length in bigrams (its `if n == 1` is the
        # bigram order): words - 1. The difference of two lengths is the same
        # in words unless a caption is empty, where the score is 0 anyway.
        return vectors, [math.sqrt(norm) for norm in norms], max(len(tokens) - 1, 0)

    def similarity(hyp, ref):
        (hyp_vectors, hyp_norms, hyp_length), (ref_vectors, ref_norms, ref_length) = hyp, ref
        penalty = math.exp(-float(hyp_length - ref_length) ** 2 / (2 * sigma**2))
        values = []
        for n in range(_CIDER_MAX_N):
            # The min() clips a candidate n-gram repeated more than in the reference.
            value = sum(
                min(weight, ref_vectors[n].get(ngram, 0.0)) * ref_vectors[n].get(ngram, 0.0)
                for ngram, weight in hyp_vectors[n].items()
            )
            if hyp_norms[n] != 0 and ref_norms[n] != 0:
                value /= hyp_norms[n] * ref_norms[n]
            values.append(value * penalty)
        return values

    per_image = []
    for counts, tokens, refs_counts, refs_tokens in zip(
        candidate_counts, candidate_tokens, reference_counts, reference_tokens
    ):
        hyp = tf_idf(counts, tokens)
        per_order = np.zeros(_CIDER_MAX_N)
        for ref_counts, ref_tokens in zip(refs_counts, refs_tokens):
            per_order += similarity(hyp, tf_idf(ref_counts, ref_tokens))
        # Mean over orders, mean over references, times 10, in ciderD_scorer's order.
        per_image.append(float(np.mean(per_order) / len(refs_counts) * 10.0))
    return float(np.mean(per_image)), per_image


def cider_d(candidates, references, sigma=6.0):
    """CIDEr-D as pyciderevalcap's `CiderD(df="corpus")` computes it.

    Each caption becomes one TF-IDF vector per n-gram order n = 1..4 with
    weight `count * (log(N) - log(max(1, df)))`, N the number of images and
    df the number of images whose references contain the n-gram. An image's
    score per order is, averaged over its references,
    `sum(min(w_hyp, w_ref) * w_ref) / (|hyp| |ref|) * exp(-delta^2 / (2 sigma^2))`
    with delta the length difference; the orders are averaged and the result
    multiplied by 10. Document frequencies come from the references passed in,
    so a corpus of one image scores 0 (every idf is log 1 - log 1).

    Args:
        candidates: list of `str`, one generated caption per image.
        references: list of lists of `str`, the reference captions of each image.
        sigma: positive float, the width of the Gaussian length penalty (6 in CIDEr-D).

    Returns:
        `(mean, per_image)`: the corpus mean (float) and the list of per-image scores.

    Example:

    >>> mean, per_image = cider_d(["a cat sleeps", "a dog"], [["a cat sleeps"], ["a dog runs"]])
    >>> round(per_image[0], 6)  # orders 1-3 match exactly, order 4 has no n-grams
    7.5
    """
    _check_positive("sigma", sigma)
    return _cider_d_tokens(*_tokenize_inputs(candidates, references), float(sigma))


# ---------------------------------------------------------------------------


def score_captions(candidates, references):
    """BLEU-1..4, ROUGE-L and CIDEr-D of a set of captions, with per-image scores.

    Args:
        candidates: list of `str`, one generated caption per image. An empty
            caption scores 0 on every metric.
        references: list of lists of `str`, the reference captions of each
            image (at least one per image).

    Returns:
        dict with the corpus-level floats `"bleu_1"`, `"bleu_2"`, `"bleu_3"`,
        `"bleu_4"`, `"rouge_l"`, `"cider_d"`, and `"per_image"`: one dict per
        image with its sentence-level `"bleu_4"`, `"rouge_l"` and `"cider_d"`,
        for ranking the worst images.

    Raises:
        ValueError: if the two lists differ in length, or an image has no references.

    Example:

    >>> scores = score_captions(["a dog runs", "a cat"], [["a dog runs"], ["a cat sleeps"]])
    >>> sorted(scores)
    ['bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'cider_d', 'per_image', 'rouge_l']
    """
    candidate_tokens, reference_tokens = _tokenize_inputs(candidates, references)
    bleu_corpus, bleu_per_image = _bleu_tokens(candidate_tokens, reference_tokens, 4)
    rouge_mean, rouge_per_image = _rouge_l_tokens(candidate_tokens, reference_tokens, 1.2)
    cider_mean, cider_per_image = _cider_d_tokens(candidate_tokens, reference_tokens, 6.0)
    per_image = [
        {"bleu_4": bleu_scores["bleu_4"], "rouge_l": rouge, "cider_d": cider}
        for bleu_scores, rouge, cider in zip(bleu_per_image, rouge_per_image, cider_per_image)
    ]
    return {**bleu_corpus, "rouge_l": rouge_mean, "cider_d": cider_mean, "per_image": per_image}
