#!/usr/bin/env python3
"""Build the Spelling-correction dataset (Bahdanau et al., 2017; SEARNN paper, Section 4).

The paper's task: take sentences of a text corpus, clip them to T = 10
characters, and corrupt the source by replacing each character with some fixed
probability p (0.3 or 0.5) by a random one; the model must output the clean
text. The One Billion Word corpus they used is not available here, so the text
is the Brown corpus and the ABC news sentences (NLTK's ``brown.zip`` and
``abc.zip``; see ``shared/data/english_text/PROVENANCE.md``), or any plain text
given with ``--text`` (besides or instead of them).

Text extraction:

- ``brown.zip``: the 500 text members ``brown/c[a-r]NN`` (not README, CONTENTS,
  cats.txt), one sentence per non-empty line, tokens ``word/tag``; the final
  ``/tag`` is stripped (``1-1/2/cd`` -> ``1-1/2``) and the words are joined with
  single spaces (so punctuation stands apart, as in the tokenized 1B corpus).
- ``abc.zip``: ``abc/rural.txt`` (UTF-8) and ``abc/science.txt`` (Latin-1, CRLF
  line ends); one sentence (or headline) per non-empty line.
- ``--text FILE [FILE ...]``: plain UTF-8 text (a leading byte-order mark is
  ignored; LF or CRLF line ends), one sentence per non-empty line, taken as it
  is: the same normalisation, clipping, split and corruption as the zips'
  sentences. A file that is missing, not valid UTF-8 (the message gives the
  line) or has no non-empty line stops the build with a message naming it.

Sentences are taken in that order (brown members sorted by name, then rural,
then science, then the ``--text`` files in the order given).

Alphabet: the character set of Bahdanau et al.'s code (``lvsr/datasets/text.py``
in ``rizar/actor-critic-public``) minus its BOS/EOS markers, 42 text symbols:

    a-z (26)  0-9 (10)  , . ! ? (4)  space (1)  # (1, "any other character")

Normalisation: lowercase; every run of whitespace becomes one space and the
text is stripped; every other character outside the alphabet (apostrophes,
quotes, hyphens, accented letters, ...) becomes ``#``, as their code maps
unknown characters to ``#``. Together with the end-of-sequence token the model
predicts one of **43 tokens**: the 42 text symbols + EOS (the paper's A = 43).
The fairseq dictionary additionally holds fairseq's unused specials <s>, <pad>,
<unk> (46 entries). In the token files the space is written ``_``.

Clipping: each normalised text is clipped to its first ``--max-chars`` (10)
characters (a trailing space is kept); texts empty after normalisation are
dropped. Clipped texts repeat (many sentences start "the presid..."); no
de-duplication is done, so the same clipped text can occur in several splits.

Split: the sentences are shuffled with ``numpy.random.default_rng(--seed)``
(default 1) and split into valid (``--valid-fraction``, default 5%), test
(``--test-fraction``, 5%) and train (the rest).

Corruption (the source side only; target = the clean text): each character is,
independently with probability ``--p`` (default 0.3), replaced by a character
drawn uniformly from the *other* 41 text symbols, so a corrupted position always
differs from the original and the expected fraction of changed characters is
exactly p. (Bahdanau et al.'s code draws from its whole 44-symbol map, BOS/EOS
included, and skips EOS draws, so there a character changes with probability
p * 42/44; ``--allow-same`` gives the closest variant here: a uniform draw from
all 42 text symbols, the original included, change rate p * 41/42.)
The corruption is drawn once, with a seed derived from ``--seed`` and the split
name, and written to disk (their code re-corrupts on the fly each epoch; so does
``--task spelling_correction --train-noise P`` for the training split). The
realised rates are printed and saved in ``meta.json``.

Output directory ``DEST``:

- ``raw/{train,valid,test}.{src,tgt}``: one example per line, space-separated
  characters (``t h e _ p r e s i d``);
- ``raw/dict.txt``: the 42 symbols with their train counts (source + target);
- ``{split}.src-tgt.{src,tgt}.{bin,idx}``, ``dict.src.txt``, ``dict.tgt.txt``:
  fairseq-preprocess output with a joined dictionary (``--srcdict raw/dict.txt
  --joined-dictionary``), for ``--task translation -s src -t tgt``;
- ``meta.json``: the inputs (paths; for ``--text`` files also their size and
  SHA-256), counts per input, alphabet, p and the realised corruption rates.

Everything is built in a temporary directory beside ``DEST`` and renamed into
place at the end. Missing, truncated or malformed inputs stop with a message
naming the file (and zip member and line number).

Usage::

    python preprocessing/spelling.py --brown .../brown.zip --abc .../abc.zip --p 0.3 data-bin/spelling_p0.3
    python preprocessing/spelling.py --text my_sentences.txt --p 0.3 data-bin/spelling_mine
"""

import argparse
import codecs
import hashlib
import os
import re
import sys
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from preprocessing.publish import publish_directory, write_meta  # noqa: E402
from searnn_fairseq.tasks.spelling_correction import substitute  # noqa: E402  (the law the task re-draws each epoch)

TEXT_SYMBOLS = list("abcdefghijklmnopqrstuvwxyz") + list("0123456789") + [",", ".", "!", "?", " ", "#"]
UNKNOWN_CHAR = "#"
SPACE_TOKEN = "_"
NUM_OUTPUT_TOKENS = len(TEXT_SYMBOLS) + 1  # + EOS = 43
SPLITS = ("train", "valid", "test")

_SYMBOL_SET = frozenset(TEXT_SYMBOLS)
_WHITESPACE = re.compile(r"\s+")
_BROWN_MEMBER = re.compile(r"^brown/c[a-r]\d\d$")
_ABC_MEMBERS = (("abc/rural.txt", "utf-8"), ("abc/science.txt", "latin-1"))

assert len(TEXT_SYMBOLS) == 42 and len(_SYMBOL_SET) == 42


class SpellingDataError(ValueError):
    """An input file is missing, truncated or malformed."""


# ---------------------------------------------------------------- reading


def _open_zip(path: str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise SpellingDataError(f"{path}: no such file")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise SpellingDataError(f"{path}: not a readable zip archive (truncated or corrupt?): {err}") from err


def _member_lines(path: str, archive: zipfile.ZipFile, member: str, encoding: str) -> List[Tuple[int, str]]:
    """(1-based line number, text) of a zip member, decoded; errors name file, member and line."""
    try:
        data = archive.read(member)
    except Exception as err:  # BadZipFile (CRC), zlib.error, EOFError, OSError on truncation
        raise SpellingDataError(f"{path}: member {member}: cannot be read (truncated or corrupt?): {err!r}") from err
    lines = []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append((lineno, raw.decode(encoding)))
        except UnicodeDecodeError as err:
            raise SpellingDataError(f"{path}: member {member}: line {lineno}: not valid {encoding} ({err})") from err
    return lines


def read_brown(path: str) -> List[str]:
    """Sentences of brown.zip: tags stripped, words joined with single spaces."""
    with _open_zip(path) as archive:
        members = sorted(n for n in archive.namelist() if _BROWN_MEMBER.match(n))
        if not members:
            raise SpellingDataError(f"{path}: no brown/c[a-r]NN text members (is this NLTK's brown.zip?)")
        sentences = []
        for member in members:
            for lineno, line in _member_lines(path, archive, member, "ascii"):
                tokens = line.split()
                if not tokens:
                    continue
                words = []
                for token in tokens:
                    word, slash, tag = token.rpartition("/")
                    if not slash or not word or not tag:
                        raise SpellingDataError(
                            f"{path}: member {member}: line {lineno}: token {token!r} is not word/tag"
                        )
                    words.append(word)
                sentences.append(" ".join(words))
    return sentences


def read_abc(path: str) -> List[str]:
    """Non-empty lines of abc/rural.txt (UTF-8) then abc/science.txt (Latin-1, CRLF)."""
    with _open_zip(path) as archive:
        names = set(archive.namelist())
        present = [(m, enc) for m, enc in _ABC_MEMBERS if m in names]
        if not present:
            raise SpellingDataError(f"{path}: neither abc/rural.txt nor abc/science.txt is in the archive")
        sentences = []
        for member, encoding in present:
            for _, line in _member_lines(path, archive, member, encoding):
                if line.strip():
                    sentences.append(line)
    return sentences


def read_text(path: str) -> List[str]:
    """Non-empty lines of a plain UTF-8 text file, one sentence each."""
    if not os.path.isfile(path):
        raise SpellingDataError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise SpellingDataError(f"{path}: cannot be read: {err}") from err
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    sentences = []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SpellingDataError(f"{path}: line {lineno}: not valid UTF-8 ({err})") from err
        if line.strip():
            sentences.append(line)
    if not sentences:
        raise SpellingDataError(f"{path}: no non-empty sentence (expected one sentence per line)")
    return sentences


def read_sources(brown: Optional[str], abc: Optional[str], text: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """(name, sentences) of each English text input given (add_text_arguments')."""
    sources = []
    if brown is not None:
        sources.append(("brown", read_brown(brown)))
    if abc is not None:
        sources.append(("abc", read_abc(abc)))
    for path in text:
        sources.append((f"text:{os.path.abspath(path)}", read_text(path)))
    return sources


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """The English text inputs, for read_sources: NLTK's two zips and the user's files."""
    parser.add_argument("--brown", help="path to brown.zip")
    parser.add_argument("--abc", help="path to abc.zip")
    parser.add_argument("--text", nargs="+", metavar="FILE", default=[],
                        help="plain UTF-8 text files, one sentence per line (besides or instead of the zips)")


def describe_text(path: str) -> Dict[str, object]:
    """What meta.json records of a --text input: enough to tell later whether the file changed."""
    with open(path, "rb") as f:
        data = f.read()
    return {"path": os.path.abspath(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------- normalising


def normalise(text: str) -> str:
    """Lowercase, collapse whitespace to single spaces, strip, map non-alphabet characters to '#'."""
    text = _WHITESPACE.sub(" ", text.lower()).strip()
    return "".join(c if c in _SYMBOL_SET else UNKNOWN_CHAR for c in text)


def clip(text: str, max_chars: int) -> str:
    return text[:max_chars]


def to_tokens(text: str) -> str:
    """'the cat' -> 't h e _ c a t'."""
    return " ".join(SPACE_TOKEN if c == " " else c for c in text)


def from_tokens(line: str) -> str:
    return "".join(" " if t == SPACE_TOKEN else t for t in line.split())


# ---------------------------------------------------------------- splitting and corrupting


def split_sentences(
    texts: Sequence[str], valid_fraction: float, test_fraction: float, seed: int
) -> Dict[str, List[str]]:
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise ValueError("--valid-fraction and --test-fraction must be >= 0 and sum to less than 1")
    order = np.random.default_rng(seed).permutation(len(texts))
    n_valid = int(round(valid_fraction * len(texts)))
    n_test = int(round(test_fraction * len(texts)))
    return {
        "valid": [texts[i] for i in order[:n_valid]],
        "test": [texts[i] for i in order[n_valid : n_valid + n_test]],
        "train": [texts[i] for i in order[n_valid + n_test :]],
    }


def corrupt(texts: Sequence[str], p: float, rng: np.random.Generator, allow_same: bool = False) -> List[str]:
    """Replace each character with probability p by a uniformly drawn other symbol
    (any symbol, possibly the same one, with ``allow_same``)."""
    index_of = {c: i for i, c in enumerate(TEXT_SYMBOLS)}
    out = []
    for text in texts:
        ids = substitute(np.array([index_of[c] for c in text], dtype=np.int64), p, rng, len(TEXT_SYMBOLS), allow_same)
        out.append("".join(TEXT_SYMBOLS[i] for i in ids))
    return out


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split) + 1]))


# ---------------------------------------------------------------- writing


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")


def _binarise(directory: str) -> None:
    """fairseq-preprocess, in-process, joined dictionary fixed to raw/dict.txt."""
    from fairseq import options
    from fairseq_cli import preprocess

    raw = os.path.join(directory, "raw")
    parser = options.get_preprocessing_parser()
    args = parser.parse_args(
        [
            "--source-lang", "src", "--target-lang", "tgt",
            "--trainpref", os.path.join(raw, "train"),
            "--validpref", os.path.join(raw, "valid"),
            "--testpref", os.path.join(raw, "test"),
            "--destdir", directory,
            "--srcdict", os.path.join(raw, "dict.txt"),
            "--joined-dictionary",
            "--workers", "1",
        ]
    )
    preprocess.main(args)


def prepare(
    dest: str,
    brown: Optional[str] = None,
    abc: Optional[str] = None,
    p: float = 0.3,
    max_chars: int = 10,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 1,
    allow_same: bool = False,
    force: bool = False,
    text: Sequence[str] = (),
) -> Dict[str, object]:
    text_files = list(text or ())
    if brown is None and abc is None and not text_files:
        raise ValueError("give at least one of --brown, --abc and --text")
    if max_chars < 1:
        raise ValueError(f"--max-chars must be >= 1, got {max_chars}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"--p must be in [0, 1], got {p}")
    texts, per_source = [], {}
    for name, sentences in read_sources(brown, abc, text_files):
        clipped = [clip(normalise(s), max_chars) for s in sentences]
        kept = [t for t in clipped if t]
        per_source[name] = {"sentences": len(sentences), "kept": len(kept)}
        texts.extend(kept)
    if not texts:
        raise SpellingDataError("no non-empty sentences in the inputs")

    splits = split_sentences(texts, valid_fraction, test_fraction, seed)
    sources_corrupted = {s: corrupt(splits[s], p, _split_seed(seed, s), allow_same) for s in SPLITS}

    counts = {c: 0 for c in TEXT_SYMBOLS}
    for text in splits["train"] + sources_corrupted["train"]:
        for c in text:
            counts[c] += 1
    stats = {}
    for s in SPLITS:
        chars = sum(len(t) for t in splits[s])
        changed = sum(a != b for clean, noisy in zip(splits[s], sources_corrupted[s]) for a, b in zip(clean, noisy))
        stats[s] = {
            "sentences": len(splits[s]),
            "characters": chars,
            "changed_characters": changed,
            "changed_rate": changed / chars if chars else 0.0,
        }
    meta = {
        "inputs": {
            "brown": brown and os.path.abspath(brown),
            "abc": abc and os.path.abspath(abc),
            "text": [describe_text(path) for path in text_files],
        },
        "per_source": per_source,
        "p": p,
        "allow_same": allow_same,
        "max_chars": max_chars,
        "seed": seed,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "text_symbols": TEXT_SYMBOLS,
        "space_token": SPACE_TOKEN,
        "num_output_tokens_with_eos": NUM_OUTPUT_TOKENS,
        "splits": stats,
    }

    def build(tmp: str) -> None:
        raw = os.path.join(tmp, "raw")
        os.makedirs(raw)
        for s in SPLITS:
            _write_lines(os.path.join(raw, f"{s}.src"), [to_tokens(t) for t in sources_corrupted[s]])
            _write_lines(os.path.join(raw, f"{s}.tgt"), [to_tokens(t) for t in splits[s]])
        _write_lines(
            os.path.join(raw, "dict.txt"),
            [f"{SPACE_TOKEN if c == ' ' else c} {counts[c]}" for c in TEXT_SYMBOLS],
        )
        _binarise(tmp)
        write_meta(tmp, meta)

    publish_directory(build, dest, force=force)
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the spelling-correction dataset (clip to 10 characters, corrupt the source) "
        "from NLTK's brown.zip / abc.zip and/or plain UTF-8 text files, and binarise it for fairseq "
        "--task translation -s src -t tgt."
    )
    parser.add_argument("dest", help="output directory (must not exist or be empty unless --force)")
    add_text_arguments(parser)
    parser.add_argument("--p", type=float, default=0.3, help="replacement probability per character (default 0.3)")
    parser.add_argument("--max-chars", type=int, default=10, help="clip texts to this many characters (default 10)")
    parser.add_argument("--valid-fraction", type=float, default=0.05, help="default 0.05")
    parser.add_argument("--test-fraction", type=float, default=0.05, help="default 0.05")
    parser.add_argument("--seed", type=int, default=1, help="seed of the split and the corruption (default 1)")
    parser.add_argument("--allow-same", action="store_true",
                        help="draw the replacement from all 42 symbols (may equal the original), as Bahdanau et al.'s code")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        meta = prepare(
            args.dest, brown=args.brown, abc=args.abc, p=args.p, max_chars=args.max_chars,
            valid_fraction=args.valid_fraction, test_fraction=args.test_fraction, seed=args.seed,
            allow_same=args.allow_same, force=args.force, text=args.text,
        )
    except (SpellingDataError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sp = meta["splits"]
    print(
        f"wrote {args.dest}: sentences train/valid/test = "
        f"{sp['train']['sentences']}/{sp['valid']['sentences']}/{sp['test']['sentences']}; "
        + ", ".join(f"{s} changed {sp[s]['changed_rate']:.4f}" for s in SPLITS)
        + f" (p = {meta['p']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
