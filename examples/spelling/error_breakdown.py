"""Where a spelling model's test errors come from: corruptions it misses, or clean text it breaks.

    python examples/spelling/error_breakdown.py runs/spelling-0.3/*/generate_test.log

Reads the output of ``fairseq-generate --beam 1 --scoring edit`` (the runner keeps it as
``RUN_DIR/generate_test.log``; each results row holds the command that wrote it) and prints,
per run:

- the corpus edit error (total Levenshtein errors / total reference length), recomputed from
  the S/T/H lines and checked against the figure fairseq-generate printed;
- the share of outputs whose length differs from the reference's;
- over the outputs of the reference's length, aligned position by position with the source
  and the reference: the share of corrupted source characters left wrong (missed corrections)
  and the share of clean source characters made wrong (false corrections), and what share of
  all wrong characters the false corrections are.

The source and the reference always have the same length (corruption substitutes characters),
so copying the source scores 100% missed and 0% false corrections: its error is the noise rate.
"""

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from searnn_fairseq.scoring import EditScorer  # noqa: E402

PRINTED_SCORE = re.compile(r"EDIT = [\d.]+ \((\d+) errors / (\d+) reference tokens")


@dataclass
class Breakdown:
    sentences: int
    reference_tokens: int
    edit_errors: int
    wrong_length: int  # outputs whose length differs from the reference's
    corrupted: int  # corrupted source characters in outputs of the reference's length
    missed: int  # of those, left wrong
    clean: int  # clean source characters in outputs of the reference's length
    broken: int  # of those, made wrong

    @property
    def edit_error(self) -> float:
        return _percent(self.edit_errors, self.reference_tokens)

    @property
    def wrong_length_rate(self) -> float:
        return _percent(self.wrong_length, self.sentences)

    @property
    def missed_rate(self) -> float:
        return _percent(self.missed, self.corrupted)

    @property
    def broken_rate(self) -> float:
        return _percent(self.broken, self.clean)

    @property
    def broken_share(self) -> float:
        """Of the wrong characters (in outputs of the reference's length), those that were clean."""
        return _percent(self.broken, self.missed + self.broken)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / max(whole, 1)


def read_generate_log(path: str) -> Dict[str, Dict[str, List[str]]]:
    """Sentence id -> {'S': source, 'T': reference, 'H': hypothesis}, each a list of symbols."""
    with open(path, encoding="utf-8") as log:
        return read_generate_output(log.read(), path)


def read_generate_output(output: str, origin: str = "fairseq-generate's output") -> Dict[str, Dict[str, List[str]]]:
    sentences: Dict[str, Dict[str, List[str]]] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        kind, _, sentence_id = fields[0].partition("-")
        if kind not in ("S", "T", "H") or not sentence_id.isdigit():
            continue
        # H lines carry the score first: H-id, score, text.
        text_field = 2 if kind == "H" else 1
        text = fields[text_field] if len(fields) > text_field else ""
        sentences.setdefault(sentence_id, {})[kind] = text.split()
    incomplete = [i for i, parts in sentences.items() if len(parts) != 3]
    if incomplete:
        raise ValueError(f"{origin}: sentence(s) {incomplete[:5]} lack an S, T or H line")
    return sentences


# the fields a results row keeps (examples/spelling/run.py records them with every test)
ROW_FIELDS = {"wrong_length_pct": "wrong_length_rate", "corrupted_left_wrong_pct": "missed_rate",
              "clean_made_wrong_pct": "broken_rate", "wrong_chars_clean_pct": "broken_share"}


def row_fields(output: str) -> Dict[str, float]:
    """The breakdown of a test output as results-row fields (percent, 2 decimals)."""
    result = breakdown(read_generate_output(output))
    return {field: round(getattr(result, attribute), 2) for field, attribute in ROW_FIELDS.items()}


def printed_errors(path: str):
    """(errors, reference tokens) as fairseq-generate's edit scorer printed them, or None."""
    with open(path, encoding="utf-8") as log:
        for line in log:
            match = PRINTED_SCORE.search(line)
            if match:
                return int(match.group(1)), int(match.group(2))
    return None


def edit_errors(hypotheses: List[List[str]], references: List[List[str]]) -> int:
    """Total edit errors, counted by the scorer behind fairseq-generate's ``--scoring edit``."""
    scorer = EditScorer()
    for hypothesis, reference in zip(hypotheses, references):
        scorer.add_string(" ".join(reference), " ".join(hypothesis))
    return scorer.errors


def breakdown(sentences: Dict[str, Dict[str, List[str]]]) -> Breakdown:
    parts = list(sentences.values())
    corrupted = missed = clean = broken = wrong_length = 0
    for sentence in parts:
        source, reference, hypothesis = sentence["S"], sentence["T"], sentence["H"]
        if len(source) != len(reference):
            raise ValueError(f"source and reference lengths differ ({source} / {reference}): not a spelling log")
        if len(hypothesis) != len(reference):
            wrong_length += 1
            continue
        for src, ref, hyp in zip(source, reference, hypothesis):
            if src != ref:
                corrupted += 1
                missed += hyp != ref
            else:
                clean += 1
                broken += hyp != ref
    return Breakdown(
        sentences=len(parts),
        reference_tokens=sum(len(s["T"]) for s in parts),
        edit_errors=edit_errors([s["H"] for s in parts], [s["T"] for s in parts]),
        wrong_length=wrong_length,
        corrupted=corrupted,
        missed=missed,
        clean=clean,
        broken=broken,
    )


def run_name(path: str) -> str:
    """runs/spelling-0.3/mle-seed1/generate_test.log -> spelling-0.3/mle-seed1"""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(os.path.basename(os.path.dirname(directory)), os.path.basename(directory))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="fairseq-generate outputs (S/T/H lines and the EDIT score line)")
    args = parser.parse_args(argv)
    print("| run | test edit error (%) | outputs of the wrong length (%) | corrupted characters left wrong (%) "
          "| clean characters made wrong (%) | wrong characters that were clean (%) |")
    print("|---|---|---|---|---|---|")
    for path in args.logs:
        result = breakdown(read_generate_log(path))
        printed = printed_errors(path)
        if printed is not None and printed != (result.edit_errors, result.reference_tokens):
            raise SystemExit(f"{path}: recomputed {result.edit_errors} errors / {result.reference_tokens} tokens, "
                             f"fairseq-generate printed {printed[0]} / {printed[1]}")
        print(f"| {run_name(path)} | {result.edit_error:.2f} | {result.wrong_length_rate:.1f} "
              f"| {result.missed_rate:.1f} | {result.broken_rate:.2f} | {result.broken_share:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
