"""--scoring hamming / edit: corpus error rates (total errors / total reference length, %)."""

import random

import pytest
from fairseq import scoring

import searnn_fairseq.scoring as searnn_scoring
import textbook
from searnn_fairseq.scoring import EditScorer, HammingScorer


def score(cls, pairs):
    scorer = cls()
    for ref, pred in pairs:
        scorer.add_string(ref, pred)
    return scorer


# (ref, pred, hamming errors, edit errors), computed by hand.
PAIRS = [
    ("a b c", "a b c", 0, 0),
    ("a b c", "a b d", 1, 1),  # one substitution
    ("a b c d", "a b", 2, 2),  # two missing positions / deletions
    ("a b", "b a b", 3, 1),  # every position shifted, plus one extra / one insertion
    ("k i t t e n", "s i t t i n g", 3, 3),  # the classic kitten -> sitting
    ("a", "", 1, 1),
    ("c o m m a n d i n g", "o m m a n d i n g", 9, 1),  # m = m at position 2
]


@pytest.mark.parametrize("ref, pred, hamming, edit", PAIRS)
def test_pairs_by_hand(ref, pred, hamming, edit):
    n = len(ref.split())
    assert score(HammingScorer, [(ref, pred)]).score() == pytest.approx(100.0 * hamming / n)
    assert score(EditScorer, [(ref, pred)]).score() == pytest.approx(100.0 * edit / n)


def test_corpus_normalisation_is_total_errors_over_total_reference_length():
    pairs = [(r, p) for r, p, _, _ in PAIRS]
    total = sum(len(r.split()) for r, _ in pairs)  # 3+3+4+2+6+1+10 = 29
    assert total == 29
    h = score(HammingScorer, pairs)
    e = score(EditScorer, pairs)
    assert (h.errors, e.errors) == (19, 9)
    assert h.score() == pytest.approx(100 * 19 / 29)
    assert e.score() == pytest.approx(100 * 9 / 29)
    # Not the mean of per-sentence rates.
    assert h.score() != pytest.approx(100 * sum(x / len(r.split()) for r, _, x, _ in PAIRS) / len(PAIRS))
    assert h.result_string().startswith("HAMMING = 65.52 (19 errors / 29 reference tokens, 7 sentences)")
    assert e.result_string().startswith("EDIT = 31.03")


def test_tokens_are_whitespace_separated_symbols():
    # Multi-character tokens count as one; extra whitespace does not matter.
    assert score(HammingScorer, [("ab  cd", " ab ce ")]).errors == 1
    assert score(EditScorer, [("B-NP I-NP O", "B-NP O")]).errors == 1


def test_many_pairs_match_a_plain_python_reference():
    # More pairs than one scoring chunk, so buffering across chunks is exercised.
    rng = random.Random(0)
    pairs = []
    for _ in range(searnn_scoring._CHUNK + 321):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 9))]
        pred = [rng.choice("abcd") for _ in range(rng.randint(0, 9))]
        pairs.append((" ".join(ref), " ".join(pred)))
    h, e = score(HammingScorer, pairs), score(EditScorer, pairs)
    total = sum(len(r.split()) for r, _ in pairs)
    assert h.errors == 0 or h.score() > 0  # flushes the last chunk
    assert h.errors == sum(textbook.hamming(r.split(), p.split()) for r, p in pairs)
    assert e.errors == sum(textbook.levenshtein(r.split(), p.split()) for r, p in pairs)
    assert h.ref_length == e.ref_length == total


def test_empty_corpus_and_empty_references():
    assert HammingScorer().score() == 0.0
    assert score(EditScorer, [("", "")]).score() == 0.0
    assert score(EditScorer, [("", "a")]).score() == float("inf")


def test_registered_with_fairseq():
    assert isinstance(scoring.build_scorer("hamming", None), HammingScorer)
    assert isinstance(scoring.build_scorer("edit", None), EditScorer)
    assert scoring.SCORER_REGISTRY["hamming"] is HammingScorer
