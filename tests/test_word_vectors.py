"""preprocessing/word_vectors.py: tokens, counts, PPMI and SVD on hand-built cases."""

import os

import numpy as np
import pytest

from preprocessing import word_vectors as wv


def test_tokenise_splits_as_the_penn_treebank_and_normalises_as_conll():
    assert wv.tokenise("I don't see the dog's 1,000.5 bones in the U.S. (said) it's 3/4, co-op.") == [
        "i", "do", "n't", "see", "the", "dog", "'s", "<NUM>", "bones", "in", "the", "u.s.", "(", "said", ")",
        "it", "'s", "<NUM>", ",", "co-op", "."]


def test_vocabulary_keeps_the_most_frequent_words_seen_often_enough():
    sentences = [["a", "b", "a", "c"], ["b", "a", "d", "d"]]
    assert wv.vocabulary(sentences, min_count=2, max_words=10) == {"a": 0, "b": 1, "d": 2}
    assert wv.vocabulary(sentences, min_count=1, max_words=2) == {"a": 0, "b": 1}


def test_cooccurrences_count_pairs_within_the_window_both_ways_and_keep_the_positions_of_dropped_words():
    index = {"a": 0, "b": 1, "c": 2}
    counts = wv.cooccurrences([["a", "x", "b", "c"]], index, window=2).toarray()
    # pairs at distance <= 2: (a, b) across the dropped x, (b, c); (a, c) is 3 apart
    assert counts.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    assert wv.cooccurrences([["a", "b", "a"]], index, window=1).toarray()[0, 1] == 2


def test_ppmi_equals_the_dense_formula():
    from scipy import sparse

    counts = np.array([[0, 4, 1], [4, 0, 2], [1, 2, 6]], dtype=float)
    total = counts.sum()
    word = counts.sum(1) / total
    context = counts.sum(0) ** 0.75 / (counts.sum(0) ** 0.75).sum()
    with np.errstate(divide="ignore"):
        expected = np.maximum(np.log(counts / total / np.outer(word, context)), 0)
    assert np.allclose(wv.ppmi(sparse.csr_matrix(counts), 0.75).toarray(), expected)


def test_svd_vectors_reconstruct_a_low_rank_symmetric_matrix_with_fixed_signs():
    from scipy import sparse

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((8, 2))
    matrix = basis @ basis.T  # rank 2, positive semi-definite
    vectors = wv.svd_vectors(sparse.csr_matrix(matrix), dim=2, seed=1)
    assert np.allclose(vectors @ vectors.T, matrix, atol=1e-8)
    assert (vectors[np.abs(vectors).argmax(0), [0, 1]] > 0).all()
    with pytest.raises(ValueError, match="need more than 8 words"):
        wv.svd_vectors(sparse.csr_matrix(matrix), dim=8, seed=1)


def test_main_writes_a_header_and_vectors_at_the_models_initial_scale(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the cat sat on the mat .", "the dog sat on the rug .", "a cat saw a dog ."] * 5) + "\n")
    out = tmp_path / "vectors.txt"
    assert wv.main([str(out), "--text", str(text), "--dim", "3", "--window", "2"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "10 3" and lines[1].split()[0] == "the"
    values = np.array([[float(v) for v in line.split()[1:]] for line in lines[1:]])
    assert values.shape == (10, 3) and values.std() == pytest.approx(0.1 / np.sqrt(3), rel=1e-4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["text.txt", "vectors.txt"]  # no temporary left


def test_main_makes_the_output_folder(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the cat sat on the mat .", "a dog saw the cat ."] * 5) + "\n")
    out = tmp_path / "runs" / "conll-vectors" / "vectors.txt"
    assert wv.main([str(out), "--text", str(text), "--dim", "2"]) == 0
    assert out.read_text().splitlines()[0] == "9 2" and os.listdir(out.parent) == ["vectors.txt"]
