"""CoNLL-2000 chunking (the SEARNN paper's third task, Table 1 and appendix B): SEARNN vs MLE.

    python examples/conll/run.py                  # MLE, LL and LLCAS learned/mixed, 3 seeds
    python examples/conll/run.py --grid table1    # + the other roll-in/roll-out pairs, seed 1
    python examples/conll/run.py --grid table2    # + LL and LLCAS with policy sampling (5 tokens), seed 1
    python examples/conll/run.py --grid finetune  # MLE, then LL or more MLE from its best checkpoint
    python examples/conll/run.py --report         # the tables and the plot (with --grid finetune: its own)
    python examples/conll/run.py --paper-decoder  # any of the above with appendix B's decoder, results apart
    python examples/conll/run.py --word-vectors   # any of the above reading word vectors, results apart

Data: ``--data-root``/conll2000/{train,test}.txt.gz (or $SEARNN_DATA), made once into
``--work-dir``/data by preprocessing/conll.py: lower-cased words with numbers as ``<NUM>`` (the
training words seen at least twice: SENNA's embeddings are not available here), POS tags as the
source factor, 1,000 training sentences (seed 1) held out for validation. Model: searnn_gru_conll
(appendix B: 50-d words + 44-d POS tags, 2-layer bidirectional GRU 172 encoder, 2-layer GRU 172
decoder, attention, input feeding, dropout 0.3), whose decoder also reads the encoder output at its
own position (``--decoder-aligned-input``, see ALIGNED_DECODER); ``--paper-decoder`` drops that
input and records into conll-paper-decoder*.jsonl, with runs in runs/conll-paper-decoder.
``--word-vectors [FILE]`` initialises the word embeddings from FILE (SENNA's, as appendix B does, or
any ``word v1 ... v50`` file; alone, vectors made from ``--data-root``/english_text by
preprocessing/word_vectors.py), every word with a vector in the dictionary; recorded in
conll-vectors*.jsonl (conll-paper-decoder-vectors*.jsonl with both options), runs in runs/KEY.

Optimisation, the same for every run: Adam with learning rate 1e-3, batch 64, at most ``MAX_EPOCH``
epochs, early stop after ``PATIENCE`` epochs without a better validation error (normalized Hamming,
greedy, decoding at most source length + 5 tags; fairseq-generate's cap is the batch's longest
source + 5). Not the paper's Adadelta: examples/README.md (Chunking) has the measurement. SEARNN
rows search with SEARCH (sampled tokens and cells: see below why). Test: ``fairseq-generate --beam 1
--scoring hamming`` on the best checkpoint (the paper's normalized Hamming error, in percent), and
chunk F1 (conlleval's figure) of the same hypotheses against the original test tags, computed twice:
by the plugin's ``chunk_f1`` scorer and by ``seqeval`` (an independent implementation of conlleval),
on hypotheses cut or padded with ``O`` to the reference length as conlleval needs them. Resumable;
results go to examples/results/conll.jsonl (``--grid finetune``: conll-finetune.jsonl).
"""

import json
import os
import subprocess
import sys
from typing import Callable, List, Optional, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import finetuning, runner  # noqa: E402
from examples.ocr.run import DECAYING_MLE_TERM, FINETUNE_BUDGET  # noqa: E402
from preprocessing import conll as conll_data  # noqa: E402

TASK = ["--task", "factored_translation", "--source-lang", "words", "--target-lang", "chunk", "--source-factor", "pos"]
MAX_EPOCH, PATIENCE = 60, 5
# Decoding stops at EOS or after source length + 5 tags, in validation and in test: a tagger's
# output is as long as its input, and an untrained model must not decode 200 tags per sentence.
LENGTH_CAP = ["--max-len-a", "1", "--max-len-b", "5"]
COMMON = [
    *TASK, "--arch", "searnn_gru_conll", "--cost", "normalized_hamming",
    "--optimizer", "adam", "--lr", "0.001", "--batch-size", "64",
    "--valid-max-len-a", "1", "--valid-max-len-b", "5",
    "--max-epoch", str(MAX_EPOCH), "--patience", str(PATIENCE), "--log-interval", "50",
]
GENERATE = [*TASK, *LENGTH_CAP]
# Appendix B's decoder finds each tag's word by attention alone; a tagger is given it. With attention
# alone MLE's test error was 5.87-7.20% over 3 seeds (47 outputs of the wrong length on seed 1) and
# LL from scratch collapsed to 15.96% (439); with the encoder output at the decoder's own position
# as well, MLE is at 4.58-4.91% with none and LL at 4.55-4.77% (examples/README.md, Chunking).
# Every grid row has it; ``--paper-decoder`` runs the same grids without it, recorded apart.
ALIGNED_DECODER = ["--decoder-aligned-input"]
# ``--word-vectors``: appendix B starts from SENNA's embeddings, not available here; without a file,
# vectors made from the English text at hand (BUILT_VECTORS, preprocessing/word_vectors.py). Every
# word with a vector is in the dictionary, so that a test word training lacks is not <unk>.
BUILT_VECTORS = "brown-abc"
VECTORS_FLAG = "--encoder-embed-path"
# All tokens and cells would roll out 22 tags x ~24 cells per sentence (benchmarks/step_time.py,
# configs 6 and 7): too slow for a run of about 2.5 hours on one core, so the SEARNN rows sample
# tokens from the model's policy and cells uniformly.
SEARCH = ["--token-sampling", "policy", "--sampled-tokens", "5", "--sampled-cells", "8"]
ROLLINS = (("learned", "mixed"), ("reference", "learned"), ("learned", "learned"))
# LL normalises over all 22 tags (--full-softmax, the target among the sampled tokens); LLCAS has no
# such form (it needs every tag's cost) and normalises over the sampled tokens.
SOFTMAX = {"ll": ["--full-softmax"], "llcas": []}
TABLE1 = [("MLE", ["--criterion", "searnn_mle"])] + [
    (f"{loss.upper()} {rollin}/{rollout}", ["--criterion", f"searnn_{loss}", "--rollin", rollin, "--rollout", rollout,
                                            *SOFTMAX[loss], *SEARCH])
    for loss in ("ll", "llcas") for rollin, rollout in ROLLINS
]
TABLE1_MAIN = [row for row in TABLE1 if row[0] in ("MLE", "LL learned/mixed", "LLCAS learned/mixed")]
TABLE2 = [
    (f"{name} policy", ["--criterion", criterion, "--rollin", "learned", "--rollout", "mixed",
                        "--token-sampling", "policy", "--sampled-tokens", "5"])
    for name, criterion in (("sLL", "searnn_ll"), ("sLLCAS", "searnn_llcas"))
]
# Fine-tuning (``--grid finetune``, its own results file): from each seed's best MLE checkpoint, LL
# learned/mixed with the recipe chosen on OCR (examples/ocr/run.py: an MLE term of weight 1 decayed
# to 0 over 300 updates), against MLE continued from the same checkpoint under the same budget.
FINETUNE = [
    ("MLE continued", ["--criterion", "searnn_mle", *FINETUNE_BUDGET]),
    ("LL learned/mixed from MLE", [*dict(TABLE1)["LL learned/mixed"], *FINETUNE_BUDGET, *DECAYING_MLE_TERM]),
]
FINETUNE_TABLE = ["MLE", *(config for config, _ in FINETUNE)]
# benchmarks/step_time.py times this row (config 7)
CONLL_SAMPLED_SEARCH = [*dict(TABLE1)["LL learned/mixed"], "--cost", "normalized_hamming"]


def prepare(data_root: str, work_dir: str, word_vectors: Optional[str] = None) -> str:
    """The binarised data in ``work_dir``/data, made once; with ``word_vectors``, a dictionary of
    every word that has a vector and the vectors for --encoder-embed-path (VECTORS_FLAG)."""
    data = os.path.join(work_dir, "data")
    meta = os.path.join(data, "meta.json")
    vectors = word_vectors and vectors_file(data_root, work_dir, word_vectors)
    if not os.path.exists(meta):
        source = os.path.join(data_root, "conll2000")
        subprocess.run([sys.executable, os.path.join(runner.REPO, "preprocessing", "conll.py"), data,
                        "--train", os.path.join(source, "train.txt.gz"), "--test", os.path.join(source, "test.txt.gz"),
                        *(["--pretrained-embeddings", vectors, "--all-pretrained-words"] if vectors else [])],
                       check=True)
    with open(meta, encoding="utf-8") as f:
        made_with = json.load(f)["words"].get("pretrained_embeddings")
    if made_with != (os.path.abspath(vectors) if vectors else None):
        raise SystemExit(f"{data} was made with word vectors {made_with}, not {vectors}: "
                         "give another --work-dir, or remove it to make it again")
    return data


def vectors_file(data_root: str, work_dir: str, word_vectors: str) -> str:
    """``word_vectors``, or for BUILT_VECTORS the vectors preprocessing/word_vectors.py makes (once)
    from the Brown and ABC text of ``data_root``/english_text."""
    if word_vectors != BUILT_VECTORS:
        return word_vectors
    path = os.path.join(work_dir, "brown-abc-50d.txt")
    if not os.path.exists(path):
        text = os.path.join(data_root, "english_text")
        subprocess.run([sys.executable, os.path.join(runner.REPO, "preprocessing", "word_vectors.py"), path,
                        "--brown", os.path.join(text, "brown.zip"), "--abc", os.path.join(text, "abc.zip")], check=True)
    return path


def with_model(rows: List[Tuple[str, List[str]]], model: List[str]) -> List[Tuple[str, List[str]]]:
    """Each (config, flags) row with the model's flags after its own (the order recorded rows match)."""
    return [(config, [*flags, *model]) for config, flags in rows]


def finetune_runs(seeds: Optional[List[int]] = None, model: List[str] = ALIGNED_DECODER) -> List[runner.Run]:
    """MLE (Table 1's runs, tested again into the fine-tuning file), then each FINETUNE row from its
    best checkpoint, per seed (default 1-3)."""
    return finetuning.mle_then(with_model(FINETUNE, model), seeds or [1, 2, 3], [*dict(TABLE1)["MLE"], *model])


def runs(grid: str, seeds: Optional[List[int]] = None, model: List[str] = ALIGNED_DECODER) -> List[runner.Run]:
    """A grid's runs, each row's flags followed by the model's (model_flags: the decoder's input,
    the word vectors): Table 1's main rows on ``seeds`` (default 1-3), the other tables' rows on
    ``seeds`` (default 1)."""
    if grid == "finetune":
        return finetune_runs(seeds, model)
    main_seeds, rest_seeds = (seeds, seeds) if seeds else ([1, 2, 3], [1])
    tables = [(TABLE1_MAIN, main_seeds, "table1")]
    if grid in ("table1", "all"):
        tables.append(([row for row in TABLE1 if row not in TABLE1_MAIN], rest_seeds, "table1"))
    if grid in ("table2", "all"):
        tables.append((TABLE2, rest_seeds, "table2"))
    return [runner.Run(config, seed, flags, group=group)
            for rows, table_seeds, group in tables
            for config, flags in with_model(rows, model) for seed in table_seeds]


def results_key(args) -> str:
    """Where a model's runs are recorded (results/KEY*.jsonl), snapshotted and, by default, trained
    (runs/KEY): conll, conll-paper-decoder, conll-vectors or conll-paper-decoder-vectors."""
    return "conll" + ("-paper-decoder" if args.paper_decoder else "") + ("-vectors" if args.word_vectors else "")


def model_flags(args) -> List[str]:
    """The flags every row adds for the model: the decoder's input, and the word vectors' file."""
    decoder = [] if args.paper_decoder else ALIGNED_DECODER
    vectors = [VECTORS_FLAG, os.path.join(args.work_dir, "data", conll_data.EMBEDDINGS)] if args.word_vectors else []
    return [*decoder, *vectors]


# ---------------------------------------------------------------- chunk F1 of the test hypotheses


def fitted(hypothesis: List[str], length: int) -> List[str]:
    """The hypothesis cut or padded with O to ``length`` tags: conlleval reads tags token by token."""
    return (hypothesis + ["O"] * length)[:length]


def tag_errors_by_dictionary(gold: List[List[str]], hyps: List[List[str]], words: List[List[str]],
                             dictionary: Set[str]) -> dict:
    """Tag error (%) of fitted hypotheses on the words in the model's dictionary and on the others,
    which it reads as <unk>, and the others' share of the tokens."""
    wrong, total = {True: 0, False: 0}, {True: 0, False: 0}
    for sentence, tags, hyp in zip(words, gold, hyps):
        if len(sentence) != len(tags):
            raise ValueError(f"a sentence of {len(sentence)} words has {len(tags)} tags")
        for word, tag, predicted in zip(sentence, tags, hyp):
            wrong[word in dictionary] += tag != predicted
            total[word in dictionary] += 1
    percent = lambda a, b: round(100 * a / b, 2) if b else float("nan")  # noqa: E731
    return {"tag_error_known_words": percent(wrong[True], total[True]),
            "tag_error_unknown_words": percent(wrong[False], total[False]),
            "unknown_word_share": percent(total[False], total[True] + total[False])}


def chunk_scores(output: str, references: List[str], words: Optional[List[str]] = None,
                 dictionary: Optional[Set[str]] = None) -> dict:
    """Chunk F1 of fairseq-generate's hypotheses against the original tags, by the plugin's scorer
    (as they are, and fitted to the reference length) and by seqeval (fitted, as conlleval needs);
    with the source ``words`` and the model's ``dictionary``, the tag error on known and unknown words."""
    from seqeval.metrics import f1_score

    from searnn_fairseq.scoring import ChunkF1Scorer

    hyps = runner.generated_hypotheses(output)
    if sorted(hyps) != list(range(len(references))):
        raise RuntimeError(f"fairseq-generate gave {len(hyps)} hypotheses for {len(references)} references")
    as_is, fitted_scorer = ChunkF1Scorer(), ChunkF1Scorer()
    gold, fitted_hyps = [], []
    for i, reference in enumerate(references):
        tags, hyp = reference.split(), hyps[i].split()
        as_is.add_string(reference, hyps[i])
        fitted_scorer.add_string(reference, " ".join(fitted(hyp, len(tags))))
        gold.append(tags)
        fitted_hyps.append(fitted(hyp, len(tags)))
    by_dictionary = {} if words is None else tag_errors_by_dictionary(
        gold, fitted_hyps, [sentence.split() for sentence in words], dictionary)
    return {
        **by_dictionary,
        "chunk_f1": round(as_is.score(), 2),
        "chunk_precision": round(as_is.precision(), 2),
        "chunk_recall": round(as_is.recall(), 2),
        "chunk_f1_fitted": round(fitted_scorer.score(), 2),
        "seqeval_f1_fitted": round(100 * f1_score(gold, fitted_hyps), 2),
        "length_mismatches": sum(len(hyps[i].split()) != len(r.split()) for i, r in enumerate(references)),
    }


def test_lines(data: str, stream: str) -> List[str]:
    """The test set's tags ("chunk", the original ones) or words ("words", as the model reads them)."""
    with open(os.path.join(data, "raw", f"test.{stream}"), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def word_dictionary(data: str) -> Set[str]:
    with open(os.path.join(data, "dict.words.txt"), encoding="utf-8") as f:
        return {line.split()[0] for line in f}


def test_metrics(data: str) -> Callable[[str], dict]:
    return lambda output: chunk_scores(output, test_lines(data, "chunk"), test_lines(data, "words"),
                                       word_dictionary(data))


def experiment(args, data: str) -> runner.Experiment:
    return runner.Experiment(
        task=results_key(args), data=data, work_dir=args.work_dir, common=runner.capped(COMMON, args.stop_time_hours),
        scoring="hamming", generate_flags=GENERATE, device=args.device,
        results=runner.results_file(args, results_key(args), grids_apart=["finetune"]),
        budget_hours=args.budget_hours, snapshots=args.snapshot_dir,
        test_metrics=test_metrics(data) if data else None,
    )


def report(args) -> None:
    rows = list(runner.recorded(experiment(args, "")).values())
    print(runner.format_tables(rows, "normalized Hamming", [
        ("table1", "Table 1 (CoNLL-2000, test normalized Hamming error %)", [c for c, _ in TABLE1]),
        ("table2", "Table 2 (CoNLL-2000, 5 tokens per cell)", [c for c, _ in TABLE2]),
        ("finetune", "Fine-tuning from MLE (CoNLL-2000, test normalized Hamming error %)", FINETUNE_TABLE),
        ("diagnostic", "Diagnostics (--extra-flags)", None),
    ]))
    if args.grid != "finetune":
        runner.report_paired(rows, [c for c, _ in TABLE1_MAIN if c != "MLE"])
        runner.report_diagnostics(results_key(args))
    if rows:
        print("\n| run | test normalized Hamming % | chunk F1 | chunk F1 (fitted) | seqeval F1 (fitted) | "
              "length mismatches | tag error %, known / unknown words |\n|---|---|---|---|---|---|---|")
        for row in sorted(rows, key=lambda r: (r["config"], r["seed"])):
            print(f"| {row['run']} | {row['test_error']:.2f} | {row.get('chunk_f1', float('nan')):.2f} | "
                  f"{row.get('chunk_f1_fitted', float('nan')):.2f} | {row.get('seqeval_f1_fitted', float('nan')):.2f} | "
                  f"{row.get('length_mismatches', '')} | {row.get('tag_error_known_words', float('nan')):.2f} / "
                  f"{row.get('tag_error_unknown_words', float('nan')):.2f} |")
        plot = runner.plot_results(experiment(args, ""), rows, "CoNLL-2000: validation normalized Hamming error",
                                   configs=FINETUNE_TABLE if args.grid == "finetune"
                                   else [c for c, _ in TABLE1_MAIN])
        print(f"\nplot: {plot}")


def arguments(argv: Optional[List[str]] = None):
    parser = runner.common_arguments(__doc__)
    parser.add_argument("--work-dir", help="data and runs (default: runs/conll, with --paper-decoder runs/conll-paper-decoder)")
    parser.add_argument("--grid", choices=["main", "table1", "table2", "all", "finetune"], default="main")
    parser.add_argument("--paper-decoder", action="store_true",
                        help="appendix B's decoder, attention alone (without --decoder-aligned-input); "
                             "results in examples/results/conll-paper-decoder*.jsonl")
    parser.add_argument("--word-vectors", nargs="?", const=BUILT_VECTORS, metavar="FILE",
                        help="every run reads word vectors ('word v1 ... v50' lines, e.g. SENNA's; alone: made from "
                             "the Brown and ABC text by preprocessing/word_vectors.py), and every word that has one "
                             "is in the dictionary; results in examples/results/conll-vectors*.jsonl")
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the plot")
    args = runner.parse_arguments(parser, argv)
    args.work_dir = args.work_dir or os.path.join(runner.REPO, "runs", results_key(args))
    return args


def main():
    args = arguments()
    chosen = runner.chosen_runs(args, runs(args.grid, args.seeds, model_flags(args)))
    data = os.path.join(args.work_dir, "data")
    if args.snapshot:
        return runner.take_snapshots(args, experiment(args, data), chosen)
    if args.reevaluate:
        runner.reevaluate(experiment(args, data), chosen)
    elif not args.report:
        prepare(args.data_root, args.work_dir, args.word_vectors)
        runner.run_all(experiment(args, data), chosen, jobs=args.jobs)
    report(args)


if __name__ == "__main__":
    main()
