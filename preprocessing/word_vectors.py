#!/usr/bin/env python3
"""Word vectors from raw English text, for ``preprocessing/conll.py --pretrained-embeddings``
where no pretrained set (SENNA's, GloVe's) is at hand.

    python preprocessing/word_vectors.py vectors.txt --brown brown.zip --abc abc.zip [--text FILE ...]

The classic count-based recipe (Levy, Goldberg and Dagan 2015, "Improving distributional
similarity with lessons learned from word embeddings"): co-occurrence counts within ``--window``
words on either side, positive pointwise mutual information with the context distribution raised
to ``--context-smoothing`` (0.75), truncated SVD to ``--dim`` dimensions, each word the row of
U·sqrt(S). A small window (2) gives vectors that group words by their syntactic role, the
information a chunker needs about a word its training data lacks.

Text: brown.zip (NLTK's Brown corpus, tags stripped), abc.zip (NLTK's ABC news) and any UTF-8
file of one sentence per line (``--text FILE ...``), tokenised the Penn Treebank's way as far
as a regular expression goes (``don't`` -> ``do n't``, ``dog's`` -> ``dog 's``, punctuation apart)
and normalised as preprocessing/conll.py normalises CoNLL's words (lower case, numbers as
``<NUM>``), so that the vectors are found under the words the chunker reads. The words kept are
the ``--max-words`` most frequent of those seen at least ``--min-count`` times.

Output: a ``count dim`` header line, then ``word v1 ... vdim`` per word, most frequent first,
scaled so that the values have the standard deviation of the model's random initialisation
(uniform in [-0.1, 0.1]: 0.0577), written atomically.
"""

import argparse
import collections
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocessing.conll import normalise_word  # noqa: E402
from preprocessing.spelling import add_text_arguments, read_sources  # noqa: E402

# Penn Treebank splits: abbreviations (u.s.) whole, "n't" and the clitics apart, words with inner
# - . , / : whole (numbers, co-op).
TOKEN = re.compile(r"(?:\w\.){2,}|\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.,/:]\w+)*|\S")
UNIFORM_INIT_STD = 0.1 / np.sqrt(3)  # the std of uniform(-0.1, 0.1), the models' embedding initialisation


def tokenise(line: str) -> List[str]:
    return [normalise_word(token) for token in TOKEN.findall(line.lower())]


def vocabulary(sentences: Sequence[List[str]], min_count: int, max_words: int) -> Dict[str, int]:
    """word -> index, most frequent first (ties alphabetical)."""
    counts = collections.Counter(word for sentence in sentences for word in sentence)
    kept = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    return {word: index for index, (word, _) in enumerate(kept[:max_words])}


def cooccurrences(sentences: Iterable[List[str]], index: Dict[str, int], window: int):
    """Symmetric counts of word pairs at most ``window`` positions apart (words outside ``index``
    keep their positions), as a sparse matrix."""
    from scipy import sparse

    rows, columns = [], []
    for sentence in sentences:
        ids = np.array([index.get(word, -1) for word in sentence])
        for offset in range(1, window + 1):
            left, right = ids[:-offset], ids[offset:]
            both = (left >= 0) & (right >= 0)
            rows += [left[both], right[both]]
            columns += [right[both], left[both]]
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
    columns = np.concatenate(columns) if columns else np.zeros(0, dtype=int)
    size = len(index)
    return sparse.coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(size, size)).tocsr()


def ppmi(counts, context_smoothing: float):
    """max(0, log P(w, c) / (P(w) P_a(c))), P_a(c) proportional to count(c) ** a, on the nonzero cells."""
    from scipy import sparse

    counts = counts.tocoo()
    total = counts.sum()
    word = np.asarray(counts.sum(axis=1)).ravel() / total
    context = np.asarray(counts.sum(axis=0)).ravel() ** context_smoothing
    context /= context.sum()
    pmi = np.log(counts.data / total) - np.log(word[counts.row]) - np.log(context[counts.col])
    keep = pmi > 0
    return sparse.coo_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape).tocsr()


def svd_vectors(matrix, dim: int, seed: int) -> np.ndarray:
    """Rows of U sqrt(S) for the ``dim`` largest singular values, signs fixed (each column's
    largest entry positive) so that the output does not depend on the solver's."""
    from scipy.sparse.linalg import svds

    if dim >= min(matrix.shape):
        raise ValueError(f"{dim} dimensions need more than {min(matrix.shape)} words")
    start = np.random.default_rng(seed).standard_normal(min(matrix.shape))
    u, s, _ = svds(matrix, k=dim, v0=start)
    order = np.argsort(-s)
    vectors = u[:, order] * np.sqrt(s[order])
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    return vectors * signs


def write_vectors(path: str, words: Sequence[str], vectors: np.ndarray) -> None:
    scaled = vectors * (UNIFORM_INIT_STD / vectors.std())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # e.g. a runner's work dir not made yet
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(f"{len(words)} {vectors.shape[1]}\n")
        for word, row in zip(words, scaled):
            out.write(word + " " + " ".join(f"{value:.6f}" for value in row) + "\n")
    os.replace(tmp, path)


def read_corpora(brown: Optional[str], abc: Optional[str], texts: Sequence[str]) -> List[List[str]]:
    sentences = [tokenise(line) for _, lines in read_sources(brown, abc, texts) for line in lines]
    if not sentences:
        raise SystemExit("no text: give --brown, --abc or --text")
    return sentences


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the vector file to write")
    add_text_arguments(parser)
    parser.add_argument("--dim", type=int, default=50, help="vector size (default 50, searnn_gru_conll's word embedding)")
    parser.add_argument("--window", type=int, default=2, help="words on either side that count as context (default 2)")
    parser.add_argument("--min-count", type=int, default=2, help="keep words seen at least this often (default 2)")
    parser.add_argument("--max-words", type=int, default=50000, help="and at most this many (default 50,000)")
    parser.add_argument("--context-smoothing", type=float, default=0.75, help="exponent of the context counts (0.75)")
    parser.add_argument("--seed", type=int, default=1, help="the SVD solver's start vector")
    args = parser.parse_args(argv)
    if args.window < 1 or args.dim < 1 or args.min_count < 1:
        parser.error("--window, --dim and --min-count must be at least 1")

    sentences = read_corpora(args.brown, args.abc, args.text)
    index = vocabulary(sentences, args.min_count, args.max_words)
    vectors = svd_vectors(ppmi(cooccurrences(sentences, index, args.window), args.context_smoothing),
                          args.dim, args.seed)
    write_vectors(args.output, list(index), vectors)
    print(f"{args.output}: {len(index)} words, {args.dim} dimensions, from {len(sentences)} sentences "
          f"({sum(map(len, sentences))} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
