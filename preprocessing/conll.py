#!/usr/bin/env python3
"""Build the CoNLL-2000 chunking dataset (SEARNN paper, Section 4 and appendix B) for fairseq.

Input: files in the CoNLL-2000 format (``train.txt``, ``test.txt`` or their ``.gz``; any file
with the same layout works): one token per line, three space-separated columns ``word POS tag``
(chunk tags in IOB2: ``B-NP``, ``I-NP``, ..., ``O``), a blank line after each sentence.

The model reads two aligned source streams per sentence, the words and their POS tags, and
predicts the chunk tags (``--task factored_translation -s words -t chunk --source-factor pos``).

- Words are lower-cased and every number (a token made of digits and ``. , : / % + -``, with at
  least one digit) becomes ``<NUM>``, as appendix B does before looking words up in SENNA's
  dictionary.
- Word dictionary: appendix B starts from the SENNA embeddings' dictionary, which cannot be
  obtained here, so the dictionary is the training words seen at least ``--min-count`` times
  (default 2: on CoNLL-2000, 7,855 of the 14,749 words of the training part, the rarer ones
  teaching the model an ``<unk>`` embedding; ``--min-count 1`` keeps them all; the whole training
  file has 15,502, the paper's dictionary 15,222).
  ``--pretrained-embeddings FILE`` (a text file of ``word v1 v2 ...`` lines, e.g. SENNA's or
  GloVe's, words looked up lower-cased, an optional ``count dim`` header line) also keeps every
  training word that has a vector and writes the vectors of the dictionary to
  ``embeddings.words.txt`` (with a header line, as fairseq reads it), for the model's
  ``--encoder-embed-path``; with ``--all-pretrained-words`` every word of the file joins the
  dictionary, so that a test word training lacks is read through its vector, not as ``<unk>``.
  Without SENNA or GloVe, preprocessing/word_vectors.py makes vectors from the English text in
  ``../shared/data/english_text``.
- POS and chunk dictionaries: the tags of the training file. A test tag the training file lacks
  (CoNLL-2000's test has ``I-LST``, which its training file does not) becomes ``<unk>``;
  ``meta.json`` counts such tokens.
- Validation: ``--valid-size`` sentences (default 1,000) drawn from the training file with
  ``--split-seed`` (default 1), or ``--valid FILE``. CoNLL-2000 has no official validation set.

Output directory ``DEST`` (built aside and renamed into place, never half-written):

- ``raw/{train,valid,test}.{words,pos,chunk}``: one sentence per line, tokens space-separated, as
  the model sees them (``raw/test.chunk`` holds the test set's original tags);
- ``{split}.words-chunk.{words,chunk}.{bin,idx}``, ``dict.{words,chunk}.txt``: fairseq-preprocess's
  output for ``-s words -t chunk``;
- ``{split}.words-chunk.pos.{bin,idx}``, ``dict.pos.txt``: the POS stream, binarised the same way
  (``fairseq-preprocess --only-source``) and named as the factor beside the source;
- ``meta.json``: inputs, options, sentence and token counts, dictionary sizes.

A malformed line (not three columns, an empty field, a tag that is neither ``O`` nor ``B-X`` /
``I-X``) stops the build with the file and line number, before anything is written.

Usage::

    python preprocessing/conll.py data-bin/conll2000 \\
        --train ../shared/data/conll2000/train.txt.gz --test ../shared/data/conll2000/test.txt.gz
"""

import argparse
import collections
import gzip
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocessing.publish import publish_directory, write_meta  # noqa: E402

SPLITS = ("train", "valid", "test")
STREAMS = ("words", "pos", "chunk")
NUMBER = re.compile(r"^[+-]?[\d.,:/%-]*\d[\d.,:/%-]*$")
NUMBER_TOKEN = "<NUM>"
TAG = re.compile(r"^(O|[BI]-\S+)$")


class ConllFormatError(ValueError):
    """Bad input: the message names the file (and the line)."""


@dataclass
class Sentence:
    words: List[str]
    pos: List[str]
    chunk: List[str]


# ---------------------------------------------------------------- reading


def read_conll(path: str) -> List[Sentence]:
    """The sentences of a three-column file; a malformed line stops with its file and number."""
    if not os.path.isfile(path):
        raise ConllFormatError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    sentences, current = [], Sentence([], [], [])
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split(" ")
                fields[-1] = fields[-1].rstrip("\r\n")
                if fields == [""]:
                    if current.words:
                        sentences.append(current)
                        current = Sentence([], [], [])
                    continue
                check_line(path, number, fields)
                for stream, value in zip((current.words, current.pos, current.chunk), fields):
                    stream.append(value)
    except UnicodeDecodeError as err:
        raise ConllFormatError(f"{path}: not UTF-8 text ({err})") from None
    except (OSError, EOFError) as err:
        raise ConllFormatError(f"{path}: cannot be read ({err})") from None
    if current.words:
        sentences.append(current)
    if not sentences:
        raise ConllFormatError(f"{path}: no sentence")
    return sentences


def check_line(path: str, number: int, fields: List[str]) -> None:
    if len(fields) != 3:
        raise ConllFormatError(f"{path}, line {number}: {len(fields)} columns, expected 3 (word POS chunk-tag)")
    if any(not field.strip() for field in fields):
        name = ("word", "POS tag", "chunk tag")[[not f.strip() for f in fields].index(True)]
        raise ConllFormatError(f"{path}, line {number}: empty {name}")
    if not TAG.match(fields[2]):
        raise ConllFormatError(f"{path}, line {number}: chunk tag {fields[2]!r} is not O, B-X or I-X")


# ---------------------------------------------------------------- normalising and splitting


def normalise_word(word: str) -> str:
    word = word.lower()
    return NUMBER_TOKEN if NUMBER.match(word) else word


def normalise(sentence: Sentence) -> Sentence:
    return Sentence([normalise_word(w) for w in sentence.words], sentence.pos, sentence.chunk)


def carve_validation(train: List[Sentence], size: int, seed: int):
    """(train, valid): ``size`` sentences drawn with ``seed``, both kept in file order."""
    if not 0 < size < len(train):
        raise ValueError(f"--valid-size must be between 1 and {len(train) - 1} (the training file has "
                         f"{len(train)} sentences), got {size}")
    chosen = set(random.Random(seed).sample(range(len(train)), size))
    return ([s for i, s in enumerate(train) if i not in chosen], [s for i, s in enumerate(train) if i in chosen])


# ---------------------------------------------------------------- dictionaries

EMBEDDINGS = "embeddings.words.txt"  # the dictionary's vectors, for the model's --encoder-embed-path


def read_embeddings(path: str) -> Dict[str, str]:
    """word (lower-cased) -> the rest of its line, from a ``word v1 v2 ...`` text file."""
    vectors, dim = {}, None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip().split(" ")
            if len(parts) == 2 and number == 1:  # a word2vec-style "count dim" header
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim or dim < 1:
                raise ConllFormatError(f"{path}, line {number}: {len(parts) - 1} values, expected {dim}")
            vectors.setdefault(parts[0].lower(), " ".join(parts[1:]))
    if not vectors:
        raise ConllFormatError(f"{path}: no vector")
    return vectors


def word_dictionary(train: List[Sentence], min_count: int, pretrained: Optional[Dict[str, str]],
                    all_pretrained: bool = False) -> List[tuple]:
    """(word, count) of the dictionary, most frequent first (fairseq's dict.txt order); with
    ``all_pretrained``, every word of ``pretrained`` too (count 0 where training lacks it)."""
    counts = collections.Counter(w for s in train for w in s.words)
    keep = [(w, c) for w, c in counts.items() if c >= min_count or (pretrained is not None and w in pretrained)]
    if all_pretrained:
        keep += [(w, 0) for w in pretrained if w not in counts]
    return sorted(keep, key=lambda item: (-item[1], item[0]))


def write_dictionary(path: str, entries: Sequence[tuple]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for word, count in entries:
            out.write(f"{word} {count}\n")


# ---------------------------------------------------------------- binarising


def write_stream(path: str, sentences: Sequence[Sentence], stream: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for sentence in sentences:
            out.write(" ".join(getattr(sentence, stream)) + "\n")


def fairseq_preprocess(arguments: List[str]) -> None:
    from fairseq import options
    from fairseq_cli import preprocess

    preprocess.main(options.get_preprocessing_parser().parse_args([*arguments, "--workers", "1"]))


def binarise(directory: str) -> None:
    """words -> chunk as a language pair (word dictionary given), then the POS stream alone,
    renamed to sit beside the source as its factor."""
    raw = os.path.join(directory, "raw")
    prefixes = [f"--{split}pref" for split in SPLITS]
    paths = [arg for split, flag in zip(SPLITS, prefixes) for arg in (flag, os.path.join(raw, split))]
    fairseq_preprocess(["--source-lang", "words", "--target-lang", "chunk", *paths, "--destdir", directory,
                        "--srcdict", os.path.join(directory, "dict.words.txt")])
    pos_dir = os.path.join(directory, "pos-only")
    fairseq_preprocess(["--source-lang", "pos", "--only-source", *paths, "--destdir", pos_dir])
    for split in SPLITS:
        for ext in ("bin", "idx"):
            os.replace(os.path.join(pos_dir, f"{split}.pos-None.pos.{ext}"),
                       os.path.join(directory, f"{split}.words-chunk.pos.{ext}"))
    os.replace(os.path.join(pos_dir, "dict.pos.txt"), os.path.join(directory, "dict.pos.txt"))
    shutil.rmtree(pos_dir)
    if os.path.exists(os.path.join(directory, "preprocess.log")):
        os.remove(os.path.join(directory, "preprocess.log"))


def unknown_tokens(directory: str, corpus: Dict[str, List[Sentence]]) -> Dict[str, Dict[str, int]]:
    """Per split and stream, the tokens that the dictionary maps to <unk>."""
    known = {}
    for stream in STREAMS:
        with open(os.path.join(directory, f"dict.{stream}.txt"), encoding="utf-8") as handle:
            known[stream] = {line.split(" ")[0] for line in handle}
    return {split: {stream: sum(t not in known[stream] for s in sentences for t in getattr(s, stream))
                    for stream in STREAMS} for split, sentences in corpus.items()}


# ---------------------------------------------------------------- the pipeline


def prepare(
    dest: str,
    train_path: str,
    test_path: str,
    valid_path: Optional[str] = None,
    valid_size: int = 1000,
    split_seed: int = 1,
    min_count: int = 2,
    pretrained_embeddings: Optional[str] = None,
    all_pretrained_words: bool = False,
    force: bool = False,
) -> dict:
    if min_count < 1:
        raise ValueError(f"--min-count must be at least 1, got {min_count}")
    if all_pretrained_words and not pretrained_embeddings:
        raise ValueError("--all-pretrained-words needs --pretrained-embeddings")
    train, test = read_conll(train_path), read_conll(test_path)
    if valid_path:
        valid = read_conll(valid_path)
    else:
        train, valid = carve_validation(train, valid_size, split_seed)
    corpus = {split: [normalise(s) for s in sentences] for split, sentences in
              (("train", train), ("valid", valid), ("test", test))}
    pretrained = read_embeddings(pretrained_embeddings) if pretrained_embeddings else None
    words = word_dictionary(corpus["train"], min_count, pretrained, all_pretrained_words)

    def build(tmp: str) -> None:
        raw = os.path.join(tmp, "raw")
        os.makedirs(raw)
        for split, sentences in corpus.items():
            for stream in STREAMS:
                write_stream(os.path.join(raw, f"{split}.{stream}"), sentences, stream)
        write_dictionary(os.path.join(tmp, "dict.words.txt"), words)
        binarise(tmp)
        if pretrained is not None:
            found = [word for word, _ in words if word in pretrained]
            dim = len(pretrained[found[0]].split(" ")) if found else 0
            with open(os.path.join(tmp, EMBEDDINGS), "w", encoding="utf-8") as out:
                out.write(f"{len(found)} {dim}\n")  # the header fairseq's parse_embedding skips
                for word in found:
                    out.write(f"{word} {pretrained[word]}\n")
            meta["words"]["with_pretrained_vector"] = len(found)
        meta["unknown_tokens"] = unknown_tokens(tmp, corpus)
        write_meta(tmp, meta)

    meta = {
        "inputs": {"train": os.path.abspath(train_path), "test": os.path.abspath(test_path),
                   "valid": os.path.abspath(valid_path) if valid_path else None},
        "validation": ({"from": "valid file"} if valid_path else
                       {"from": "train", "sentences": valid_size, "seed": split_seed}),
        "words": {"lower_cased": True, "numbers": NUMBER_TOKEN, "min_count": min_count,
                  "pretrained_embeddings": os.path.abspath(pretrained_embeddings) if pretrained_embeddings else None,
                  "all_pretrained_words": all_pretrained_words,
                  "dictionary_size": len(words),
                  "training_words": len({w for s in corpus["train"] for w in s.words})},
        "splits": {split: {"sentences": len(s), "tokens": sum(len(x.words) for x in s),
                           "max_length": max(len(x.words) for x in s)} for split, s in corpus.items()},
    }
    publish_directory(build, dest, force=force)
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="CoNLL-2000-format chunking files -> fairseq data for --task factored_translation "
        "(-s words -t chunk --source-factor pos)."
    )
    parser.add_argument("dest", help="output directory (must not exist or be empty unless --force)")
    parser.add_argument("--train", required=True, help="training file (word POS chunk-tag per line; .gz allowed)")
    parser.add_argument("--test", required=True, help="test file, same format")
    parser.add_argument("--valid", help="validation file, same format (default: carved from --train)")
    parser.add_argument("--valid-size", type=int, default=1000, help="sentences carved from train for validation (default 1000)")
    parser.add_argument("--split-seed", type=int, default=1, help="seed of that draw (default 1)")
    parser.add_argument("--min-count", type=int, default=2,
                        help="keep the training words seen at least this many times (default 2)")
    parser.add_argument("--pretrained-embeddings", metavar="FILE",
                        help="'word v1 v2 ...' text file: its training words join the dictionary, and their vectors "
                        "are written to DEST/embeddings.words.txt for --encoder-embed-path")
    parser.add_argument("--all-pretrained-words", action="store_true",
                        help="every word of --pretrained-embeddings joins the dictionary, not only the training "
                        "ones: a test word that training lacks is read through its vector instead of as <unk>")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.dest, args.train, args.test, valid_path=args.valid, valid_size=args.valid_size,
                       split_seed=args.split_seed, min_count=args.min_count,
                       pretrained_embeddings=args.pretrained_embeddings,
                       all_pretrained_words=args.all_pretrained_words, force=args.force)
    except (ConllFormatError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    splits = meta["splits"]
    print(f"wrote {args.dest}: sentences train/valid/test = "
          + "/".join(str(splits[s]["sentences"]) for s in SPLITS)
          + f"; {meta['words']['dictionary_size']} words in the dictionary "
          + f"(of {meta['words']['training_words']} training words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
