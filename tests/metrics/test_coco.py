"""COCO caption metrics against numbers worked out by hand (pycocoevalcap's formulas)."""

import math

import pytest

from vlm.metrics.coco import bleu
from vlm.metrics.coco import cider_d
from vlm.metrics.coco import normalize
from vlm.metrics.coco import rouge_l
from vlm.metrics.coco import score_captions

BLEU_KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
# pycocoevalcap's smoothing (correct + 1e-15) / (guess + 1e-9) moves a
# precision of 1 by ~1e-10; 1e-8 is well above that and well below any real difference.
TOL = 1e-8
L2 = math.log(2.0)


def test_normalize():
    assert normalize("A Dog, running!") == ["a", "dog", "running"]
    assert normalize("  A man's DOG\u2019s\tjumping...\n") == ["a", "mans", "dogs", "jumping"]
    assert normalize("\u201cHi\u201d\u2014there") == ["hi", "there"]
    assert normalize(b"Two cats.") == ["two", "cats"]
    assert normalize("?!") == []


def test_identical_caption_scores_one():
    corpus, per_image = bleu(["A dog runs on the grass."], [["a dog runs on the grass"]])
    for key in BLEU_KEYS:
        assert corpus[key] == pytest.approx(1.0, abs=TOL)
        assert per_image[0][key] == pytest.approx(1.0, abs=TOL)
    mean, per_image = rouge_l(["A dog runs on the grass."], [["a dog runs on the grass"]])
    assert mean == pytest.approx(1.0) and per_image == [pytest.approx(1.0)]


def test_cider_d_of_a_single_image_corpus_is_zero():
    # N = 1 image: every idf is log(1) - log(max(1, 1)) = 0, so every vector is 0.
    mean, per_image = cider_d(["a dog runs on the grass"], [["a dog runs on the grass"]])
    assert mean == 0.0 and per_image == [0.0]


def test_no_overlap_scores_zero():
    candidates = ["red car parked", "blue sky above"]
    references = [["a dog runs"], ["two birds fly"]]
    corpus, per_image = bleu(candidates, references)
    for key in BLEU_KEYS:
        # Only the smoothing is left: about 1e-15 / 6 for BLEU-1.
        assert 0.0 <= corpus[key] < 1e-6
        assert all(0.0 <= image[key] < 1e-6 for image in per_image)
    assert rouge_l(candidates, references) == (0.0, [0.0, 0.0])
    assert cider_d(candidates, references) == (0.0, [0.0, 0.0])


def test_bleu_brevity_penalty():
    # c = 3, r = 6. Candidate n-grams: 3 unigrams, 2 bigrams, 1 trigram, all in
    # the reference, so p1 = p2 = p3 = 1; BP = exp(1 - 6/3) = e^-1 = 0.3678794.
    # BLEU-1 = BLEU-2 = BLEU-3 = e^-1. There is no 4-gram (guess 0): the
    # smoothing makes p4 = 1e-15 / 1e-9 = 1e-6, so
    # BLEU-4 = (1 * 1 * 1 * 1e-6)^(1/4) * e^-1 = 10^-1.5 * e^-1 = 0.0116334.
    corpus, per_image = bleu(["the cat sat"], [["the cat sat on the mat"]])
    for key in ("bleu_1", "bleu_2", "bleu_3"):
        assert corpus[key] == pytest.approx(math.exp(-1.0), abs=TOL)
    assert corpus["bleu_4"] == pytest.approx(10**-1.5 * math.exp(-1.0), abs=TOL)
    assert per_image == [corpus]


def test_bleu_closest_reference_length():
    # c = 5; reference lengths 9, 7, 1 -> distances 4, 2, 4: r = 7 (not the
    # shortest 1, not the average 17/3). Every candidate n-gram is in the first
    # reference ("a" twice there too), so p1..p4 = 1 and
    # BLEU-n = exp(1 - 7/5) = exp(-0.4) = 0.6703200 for every n.
    corpus, _ = bleu(
        ["a man rides a horse"],
        [["a man rides a horse on the beach today", "a man rides a big brown horse", "horse"]],
    )
    for key in BLEU_KEYS:
        assert corpus[key] == pytest.approx(math.exp(-0.4), abs=TOL)


def test_bleu_closest_length_tie_goes_to_the_shorter():
    # c = 5; reference lengths 8 and 2 are both 3 away: r = 2 < c, so BP = 1
    # (taking 8 would give exp(1 - 8/5) = 0.549). p1..p4 = 1 from the first reference.
    corpus, _ = bleu(["a man rides a horse"], [["a man rides a horse on the beach", "a horse"]])
    for key in BLEU_KEYS:
        assert corpus[key] == pytest.approx(1.0, abs=TOL)


def test_bleu_sums_counts_over_the_corpus():
    # Image 1: "the cat sat" vs "the cat sat on the mat" (c 3, r 6, all n-grams match).
    # Image 2: "a dog" vs "a dog" (c 2, r 2).
    # Corpus: unigrams 5/5, bigrams 3/3, trigrams 1/1, 4-grams 0/0 -> 1e-6;
    # c = 5, r = 8: BP = exp(1 - 8/5) = exp(-0.6) = 0.5488116.
    # BLEU-1..3 = exp(-0.6); BLEU-4 = 10^-1.5 * exp(-0.6) = 0.0173549.
    # Not the mean of the sentence scores: image 1 alone has BLEU-1 = e^-1,
    # image 2 has BLEU-1 = 1 and BLEU-4 = (1 * 1 * 1e-6 * 1e-6)^(1/4) = 1e-3.
    corpus, per_image = bleu(["the cat sat", "a dog"], [["the cat sat on the mat"], ["a dog"]])
    for key in ("bleu_1", "bleu_2", "bleu_3"):
        assert corpus[key] == pytest.approx(math.exp(-0.6), abs=TOL)
    assert corpus["bleu_4"] == pytest.approx(10**-1.5 * math.exp(-0.6), abs=TOL)
    assert per_image[0]["bleu_1"] == pytest.approx(math.exp(-1.0), abs=TOL)
    assert per_image[1]["bleu_1"] == pytest.approx(1.0, abs=TOL)
    assert per_image[1]["bleu_4"] == pytest.approx(1e-3, abs=TOL)


def test_bleu_max_n():
    corpus, per_image = bleu(["the cat sat"], [["the cat sat on the mat"]], max_n=2)
    assert sorted(corpus) == ["bleu_1", "bleu_2"] and sorted(per_image[0]) == ["bleu_1", "bleu_2"]
    with pytest.raises(ValueError, match="max_n=0"):
        bleu(["a"], [["a"]], max_n=0)


def test_rouge_l_hand_example():
    # Candidate "the cat is on the mat" (6 tokens).
    # R1 "there is a cat on the mat" (7): LCS = 4 ("cat on the mat"), P = 4/6, R = 4/7.
    # R2 "the cat" (2): LCS = 2, P = 2/6, R = 2/2 = 1.
    # pycocoevalcap takes each maximum on its own: P = 2/3 (R1), R = 1 (R2).
    # F = (1 + 1.44) * (2/3) * 1 / (1 + 1.44 * 2/3) = 1.6266667 / 1.96 = 0.8299320.
    # With R1 alone: F = 2.44 * (2/3) * (4/7) / (4/7 + 0.96) = 0.9295238 / 1.5314286 = 0.6069652.
    candidate = ["the cat is on the mat"]
    mean, per_image = rouge_l(candidate, [["there is a cat on the mat", "the cat"]])
    assert mean == pytest.approx(2.44 * (2 / 3) / 1.96, abs=1e-9)
    assert mean == pytest.approx(0.8299320, abs=1e-7)
    assert per_image == [pytest.approx(mean)]
    mean, _ = rouge_l(candidate, [["there is a cat on the mat"]])
    assert mean == pytest.approx(0.6069652, abs=1e-7)
    # beta = 1 is the plain harmonic mean of P = 2/3 and R = 4/7: 8/13.
    mean, _ = rouge_l(candidate, [["there is a cat on the mat"]], beta=1.0)
    assert mean == pytest.approx(8 / 13, abs=1e-12)


def test_cider_d_hand_example():
    # Two images, N = 2, so idf = log(2) - log(max(1, df)) =: L * [df == 1], L = log 2.
    #   image A: candidate "dog dog runs", references "a dog runs", "a dog"
    #   image B: candidate "a cat sleeps", reference "a cat sleeps"
    # df("a") = 2 (both images) -> idf 0; every other reference n-gram has df 1 -> idf L;
    # n-grams in no reference ("dog dog", "dog dog runs") count as df 1 -> idf L.
    #
    # Image A, candidate: 1-grams {dog: 2L, runs: L}, |.| = L sqrt(5);
    #   2-grams {dog dog: L, dog runs: L}, |.| = L sqrt(2); 3-grams {dog dog runs: L}, |.| = L.
    # vs "a dog runs": 1-grams {a: 0, dog: L, runs: L}, |.| = L sqrt(2);
    #   2-grams {a dog: L, dog runs: L}, |.| = L sqrt(2); 3-grams {a dog runs: L}.
    #   n=1: min(2L, L) L + min(L, L) L = 2 L^2 (clipped; 3 L^2 unclipped)
    #        -> 2 L^2 / (L sqrt(5) L sqrt(2)) = 2 / sqrt(10) = 0.6324555
    #   n=2: only "dog runs" shared: L^2 / (L sqrt(2) L sqrt(2)) = 1/2
    #   n=3: nothing shared: 0;  n=4: no 4-grams: 0
    #   lengths in bigrams 2 and 2: delta 0, penalty 1.
    # vs "a dog": 1-grams {a: 0, dog: L}, |.| = L; 2-grams {a dog: L}; no 3-grams.
    #   n=1: min(2L, L) L = L^2 -> L^2 / (L sqrt(5) L) = 1 / sqrt(5) = 0.4472136
    #   n=2, 3, 4: 0
    #   lengths 2 and 1: delta 1, penalty exp(-1 / (2 * 6^2)) = exp(-1/72) = 0.9862071
    # score A = 10 * mean over 4 orders, mean over 2 references
    #         = 10 / 8 * (2 / sqrt(10) + 1/2 + exp(-1/72) / sqrt(5))
    #         = 1.25 * (0.6324555 + 0.5 + 0.4410452) = 1.9668760
    # Image B, identical 3-word caption: orders 1, 2, 3 give cosine 1 ("a" weighs 0
    #   on both sides), order 4 has no n-grams: 10 * (1 + 1 + 1 + 0) / 4 = 7.5.
    # Corpus: (1.9668760 + 7.5) / 2 = 4.7334380.
    score_a = 1.25 * (2 / math.sqrt(10) + 0.5 + math.exp(-1 / 72) / math.sqrt(5))
    assert score_a == pytest.approx(1.9668760, abs=1e-7)
    mean, per_image = cider_d(
        ["dog dog runs", "a cat sleeps"], [["a dog runs", "a dog"], ["a cat sleeps"]]
    )
    assert per_image[0] == pytest.approx(score_a, abs=1e-6)
    assert per_image[1] == pytest.approx(7.5, abs=1e-6)
    assert mean == pytest.approx((score_a + 7.5) / 2, abs=1e-6)
    assert mean == pytest.approx(4.7334380, abs=1e-6)


def test_cider_d_sigma_sets_the_length_penalty():
    # As above with sigma = 1: the "a dog" term gets exp(-1/2) instead of exp(-1/72).
    _, per_image = cider_d(
        ["dog dog runs", "a cat sleeps"], [["a dog runs", "a dog"], ["a cat sleeps"]], sigma=1.0
    )
    expected = 1.25 * (2 / math.sqrt(10) + 0.5 + math.exp(-0.5) / math.sqrt(5))
    assert per_image[0] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="sigma=0"):
        cider_d(["a"], [["a"]], sigma=0)


def test_score_captions_keys_and_consistency():
    candidates = ["dog dog runs", "a cat sleeps"]
    references = [["a dog runs", "a dog"], ["a cat sleeps"]]
    scores = score_captions(candidates, references)
    assert sorted(scores) == sorted(BLEU_KEYS + ["rouge_l", "cider_d", "per_image"])
    corpus_bleu, per_image_bleu = bleu(candidates, references)
    rouge_mean, rouge_per_image = rouge_l(candidates, references)
    cider_mean, cider_per_image = cider_d(candidates, references)
    for key in BLEU_KEYS:
        assert scores[key] == corpus_bleu[key]
    assert scores["rouge_l"] == rouge_mean and scores["cider_d"] == cider_mean
    assert scores["per_image"] == [
        {"bleu_4": b["bleu_4"], "rouge_l": r, "cider_d": c}
        for b, r, c in zip(per_image_bleu, rouge_per_image, cider_per_image)
    ]
    assert scores["per_image"][1]["cider_d"] == pytest.approx(7.5)


def test_empty_candidate_scores_zero():
    scores = score_captions(["", "..."], [["a dog runs"], ["a cat sleeps"]])
    for key in BLEU_KEYS + ["rouge_l", "cider_d"]:
        assert scores[key] == 0.0
    for image in scores["per_image"]:
        assert image == {"bleu_4": 0.0, "rouge_l": 0.0, "cider_d": 0.0}


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"len\(candidates\)=2, len\(references\)=1"):
        score_captions(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[1\]=\[\]"):
        score_captions(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match=r"references\[0\]"):
        score_captions(["a dog"], ["a dog"])
    with pytest.raises(ValueError, match="empty"):
        score_captions([], [])
    with pytest.raises(ValueError, match="beta=-1"):
        rouge_l(["a"], [["a"]], beta=-1)
    with pytest.raises(TypeError, match="str or bytes"):
        score_captions([None], [["a"]])
