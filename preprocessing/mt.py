#!/usr/bin/env python3
"""Build a translation dataset for fairseq from raw parallel text, with sentencepiece.

Steps, each on the user's own files (Multi30k is one example, see ``examples/mt``):

1. read the raw parallel text ``{train,valid,test}PREF.{SRC,TGT}`` (plain UTF-8, or gzip when the
   name ends in ``.gz``; ``PREF.LANG`` is tried first, then ``PREF.LANG.gz``), one sentence per line;
2. train one joint sentencepiece model on the **training** side only (both languages;
   ``--vocab-size`` pieces, default 8,000; ``--model-type`` unigram, bpe, char or word);
3. encode every split into pieces;
4. binarise with ``fairseq-preprocess --joined-dictionary`` (the dictionary is built from the
   encoded training text), for ``--task translation -s SRC -t TGT``.

Output directory ``DEST``:

- ``spm.model``, ``spm.vocab``: the sentencepiece model (``--post-process sentencepiece`` in
  fairseq-generate undoes its pieces);
- ``raw/{train,valid,test}.{SRC,TGT}``: the raw text, as read (the references sacreBLEU scores
  against);
- ``spm/{train,valid,test}.{SRC,TGT}``: the encoded text;
- ``{split}.SRC-TGT.{SRC,TGT}.{bin,idx}``, ``dict.SRC.txt``, ``dict.TGT.txt``: fairseq's binary data;
- ``meta.json``: inputs, options, line and piece counts, and how many references the
  sentencepiece round trip does not give back byte for byte (sentencepiece normalises text with
  NFKC and collapses whitespace; ``examples/mt`` scores against ``raw/`` either way).

Errors stop before anything is written and name the file: a missing, empty or non-UTF-8 file, and
a split whose two sides have different line counts (both counts given). Everything is built in a temporary directory beside ``DEST`` and renamed into place at the
end, so ``DEST`` is never half-written.

Usage::

    python preprocessing/mt.py data-bin/multi30k.en-de \\
        --trainpref ../shared/data/multi30k/train --validpref ../shared/data/multi30k/val \\
        --testpref ../shared/data/multi30k/test_2016_flickr --source-lang en --target-lang de
"""

import argparse
import gzip
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocessing.publish import publish_directory, write_meta  # noqa: E402

SPLITS = ("train", "valid", "test")
MODEL_TYPES = ("unigram", "bpe", "char", "word")


class ParallelDataError(ValueError):
    """Bad raw input: the message names the file."""


# ---------------------------------------------------------------- reading


def find_file(prefix: str, lang: str) -> str:
    for path in (f"{prefix}.{lang}", f"{prefix}.{lang}.gz"):
        if os.path.isfile(path):
            return path
    raise ParallelDataError(f"{prefix}.{lang}: no such file (nor {prefix}.{lang}.gz)")


def read_lines(path: str) -> List[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as err:
        raise ParallelDataError(f"{path}: not UTF-8 text ({err})") from None
    except (OSError, EOFError) as err:
        raise ParallelDataError(f"{path}: cannot be read ({err})") from None
    lines = text.splitlines()
    if not lines:
        raise ParallelDataError(f"{path}: empty file")
    return [line.strip() for line in lines]


def read_parallel(prefix: str, src: str, tgt: str) -> Tuple[List[str], List[str], Tuple[str, str]]:
    src_path, tgt_path = find_file(prefix, src), find_file(prefix, tgt)
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise ParallelDataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: "
            "the two sides of a split must be aligned line by line"
        )
    return src_lines, tgt_lines, (src_path, tgt_path)


# ---------------------------------------------------------------- sentencepiece


def train_sentencepiece(text_file: str, model_prefix: str, vocab_size: int, model_type: str,
                        character_coverage: float) -> None:
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=text_file,
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            # every training sentence, no sampling: the model is a function of the text alone
            input_sentence_size=0,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        message = str(err)
        if "Vocabulary size" in message or "vocab_size" in message:
            raise ParallelDataError(
                f"sentencepiece cannot make {vocab_size} pieces from the training text ({message.strip()}); "
                "pass a smaller --vocab-size"
            ) from None
        raise


def encode(model_file: str, lines: Sequence[str]) -> List[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=model_file)
    return [" ".join(pieces) for pieces in processor.encode(list(lines), out_type=str)]


def decode(model_file: str, encoded: Sequence[str]) -> List[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=model_file)
    return [processor.decode(line.split()) for line in encoded]


# ---------------------------------------------------------------- writing


def write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")


def binarise(directory: str, src: str, tgt: str) -> None:
    """fairseq-preprocess, in-process, one dictionary for both languages."""
    from fairseq import options
    from fairseq_cli import preprocess

    encoded = os.path.join(directory, "spm")
    parser = options.get_preprocessing_parser()
    args = parser.parse_args([
        "--source-lang", src, "--target-lang", tgt,
        "--trainpref", os.path.join(encoded, "train"),
        "--validpref", os.path.join(encoded, "valid"),
        "--testpref", os.path.join(encoded, "test"),
        "--destdir", directory,
        "--joined-dictionary",
        "--workers", "1",
    ])
    preprocess.main(args)


# ---------------------------------------------------------------- the pipeline


def prepare(
    dest: str,
    prefixes: Dict[str, str],
    src: str,
    tgt: str,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    force: bool = False,
) -> Dict[str, object]:
    if src == tgt:
        raise ValueError(f"--source-lang and --target-lang are both {src!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if vocab_size < 4:
        raise ValueError(f"--vocab-size must be at least 4, got {vocab_size}")
    corpus = {split: read_parallel(prefixes[split], src, tgt) for split in SPLITS}

    def build(tmp: str) -> None:
        raw, encoded = os.path.join(tmp, "raw"), os.path.join(tmp, "spm")
        os.makedirs(raw)
        os.makedirs(encoded)
        for split, (src_lines, tgt_lines, _) in corpus.items():
            write_lines(os.path.join(raw, f"{split}.{src}"), src_lines)
            write_lines(os.path.join(raw, f"{split}.{tgt}"), tgt_lines)
        joint_train = os.path.join(tmp, "spm-train.txt")
        write_lines(joint_train, [line for line in corpus["train"][0] + corpus["train"][1] if line])
        train_sentencepiece(joint_train, os.path.join(tmp, "spm"), vocab_size, model_type, character_coverage)
        os.remove(joint_train)
        model_file = os.path.join(tmp, "spm.model")
        for split, (src_lines, tgt_lines, _) in corpus.items():
            for lang, lines in ((src, src_lines), (tgt, tgt_lines)):
                pieces = encode(model_file, lines)
                write_lines(os.path.join(encoded, f"{split}.{lang}"), pieces)
                stats[split][lang]["pieces"] = sum(len(p.split()) for p in pieces)
                stats[split][lang]["not_round_trip"] = sum(a != b for a, b in zip(decode(model_file, pieces), lines))
        binarise(tmp, src, tgt)
        write_meta(tmp, meta)

    stats = {
        split: {lang: {"file": os.path.abspath(path), "lines": len(lines)}
                for lang, lines, path in ((src, s_lines, paths[0]), (tgt, t_lines, paths[1]))}
        for split, (s_lines, t_lines, paths) in corpus.items()
    }
    meta = {
        "source_lang": src,
        "target_lang": tgt,
        "sentencepiece": {"vocab_size": vocab_size, "model_type": model_type,
                          "character_coverage": character_coverage,
                          "trained_on": "train, both languages"},
        "splits": stats,
    }
    publish_directory(build, dest, force=force)
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Raw parallel text -> joint sentencepiece model (trained on train only) -> "
        "fairseq-preprocess --joined-dictionary, for fairseq --task translation."
    )
    parser.add_argument("dest", help="output directory (must not exist or be empty unless --force)")
    parser.add_argument("--trainpref", required=True, help="training files are TRAINPREF.SRC and TRAINPREF.TGT (or .gz)")
    parser.add_argument("--validpref", required=True, help="validation files prefix")
    parser.add_argument("--testpref", required=True, help="test files prefix")
    parser.add_argument("--source-lang", "-s", required=True, help="source suffix, e.g. en")
    parser.add_argument("--target-lang", "-t", required=True, help="target suffix, e.g. de")
    parser.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece pieces (default 8000)")
    parser.add_argument("--model-type", default="unigram", choices=MODEL_TYPES, help="sentencepiece model (default unigram)")
    parser.add_argument("--character-coverage", type=float, default=1.0,
                        help="share of training characters the pieces must cover (default 1.0)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    prefixes = {"train": args.trainpref, "valid": args.validpref, "test": args.testpref}
    try:
        meta = prepare(args.dest, prefixes, args.source_lang, args.target_lang, vocab_size=args.vocab_size,
                       model_type=args.model_type, character_coverage=args.character_coverage,
                       force=args.force)
    except (ParallelDataError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    splits = meta["splits"]
    print(f"wrote {args.dest}: pairs train/valid/test = "
          + "/".join(str(splits[s][args.source_lang]["lines"]) for s in SPLITS)
          + f"; {args.vocab_size} {args.model_type} pieces; target pieces per sentence (train) "
          + f"{splits['train'][args.target_lang]['pieces'] / splits['train'][args.target_lang]['lines']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
