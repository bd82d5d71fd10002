"""Spelling correction (Bahdanau et al. 2017's task): SEARNN vs MLE, Tables 1 and 2.

    python examples/spelling/run.py --noise 0.3                 # MLE, LL, LLCAS (learned/mixed), 3 seeds
    python examples/spelling/run.py --noise 0.5 --grid all      # + the rest of Tables 1 and 2, seed 1
    python examples/spelling/run.py --noise 0.3 --report
    python examples/spelling/run.py --noise 0.3 --grid table2 --seeds 2 --configs "sLL policy" \
        --extra-flags "--clip-norm 5"                            # a diagnostic: a row with flags added
    python examples/spelling/run.py --noise 0.5 --grid finetune # MLE, then sLL policy from its best checkpoint
    python examples/spelling/run.py --noise 0.5 --grid finetune --report

Data: the English text of ``--data-root``/english_text (Brown + ABC news; the
One Billion Word benchmark is not obtainable here), built by
preprocessing/spelling.py: 43 tokens (42 characters + EOS), texts clipped to
their first 10 characters, each character replaced by another with
probability ``--noise``, split 90/5/5 by sentence, fixed seeds. Model:
searnn_gru_spelling (GRU 100 + attention). Optimisation, the same for every
run (the paper's): Adam lr 1e-3, batch 128; at most ``--max-epoch`` epochs,
early stop after 3 epochs without a better validation edit error; test with
``fairseq-generate --beam 1 --scoring edit``. Resumable; results go to
examples/results/spelling-NOISE.jsonl (runs with ``--extra-flags``:
spelling-NOISE-diagnostics.jsonl).

``--grid finetune`` (results in spelling-NOISE-finetune.jsonl): MLE on seeds 1-2, then sLL with
policy sampling fine-tuned from each seed's best MLE checkpoint with the OCR grid's fine-tuning
budget and decaying MLE term (examples/ocr/run.py, not tuned again here); its report compares them
with Table 2's sLL policy rows trained from scratch.
"""

import os
import subprocess
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import finetuning, runner  # noqa: E402
from examples.spelling import error_breakdown  # noqa: E402
from examples.ocr.run import DECAYING_MLE_TERM, FINETUNE_BUDGET, TABLE1_MAIN, TABLE1_REST, TABLE2  # noqa: E402
from examples.ocr.run import runs as table_runs  # noqa: E402

GENERATE = ["--task", "translation", "--source-lang", "src", "--target-lang", "tgt"]
# Fine-tuning: sLL with policy sampling keeps most of the all-token gain at a fraction of its cost
SCRATCH_CONFIG = "sLL policy"
FINETUNE_CONFIG = f"{SCRATCH_CONFIG} from MLE, MLE weight 1 decayed over 300"
FINETUNE = [*dict(TABLE2)[SCRATCH_CONFIG], *FINETUNE_BUDGET, *DECAYING_MLE_TERM]


def common(max_epoch: int):
    return [
        *GENERATE, "--arch", "searnn_gru_spelling", "--cost", "edit",
        "--optimizer", "adam", "--lr", "0.001", "--batch-size", "128",
        "--max-epoch", str(max_epoch), "--patience", "3", "--log-interval", "100",
    ]


def prepare(data_root: str, work_dir: str, noise: float) -> str:
    data = os.path.join(work_dir, "data")
    if not os.path.exists(os.path.join(data, "meta.json")):
        text = os.path.join(data_root, "english_text")
        subprocess.run([sys.executable, os.path.join(runner.REPO, "preprocessing", "spelling.py"), data,
                        "--brown", os.path.join(text, "brown.zip"), "--abc", os.path.join(text, "abc.zip"),
                        "--p", str(noise)], check=True)
    return data


def finetune_runs(seeds: Optional[List[int]] = None) -> List[runner.Run]:
    """MLE, then FINETUNE from its best checkpoint, per seed (default 1-2)."""
    return finetuning.mle_then([(FINETUNE_CONFIG, FINETUNE)], seeds or [1, 2], dict(TABLE1_MAIN)["MLE"])


def runs(grid: str, seeds: Optional[List[int]] = None) -> List[runner.Run]:
    return finetune_runs(seeds) if grid == "finetune" else table_runs(grid, seeds)


def report_finetune(experiment: runner.Experiment, task: str) -> None:
    """The three ways per seed; the from-scratch rows are Table 2's (spelling-NOISE.jsonl), timed
    by earlier runs, hence also shown at the fine-tuning's seconds per update."""
    rows = runner.recorded(experiment)
    scratch_rows = runner.read_rows(runner.default_results(task))
    found = finetuning.triples(rows, scratch_rows, SCRATCH_CONFIG, FINETUNE_CONFIG)
    finetuning.report(found, os.path.splitext(experiment.results)[0] + "_validation.png",
                      finetuning.Ways(searnn=SCRATCH_CONFIG, task=task, cost="edit error per character"),
                      rescale_scratch=True)


def format_breakdowns(rows: List[dict]) -> str:
    """Where each run's test errors are (examples/spelling/error_breakdown.py), for the rows that hold it."""
    broken_down = sorted((row for row in rows if "clean_made_wrong_pct" in row), key=lambda r: (r["config"], r["seed"]))
    if not broken_down:
        return ""
    lines = ["\nWhere the test errors are (error_breakdown.py; rows recorded with it)",
             "| config | seed | edit error (%) | outputs of the wrong length (%) | corrupted left wrong (%) | "
             "clean made wrong (%) | of the wrong chars, clean (%) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['config']} | {row['seed']} | {row['test_error']:.2f} | {row['wrong_length_pct']:.1f} | "
              f"{row['corrupted_left_wrong_pct']:.1f} | {row['clean_made_wrong_pct']:.2f} | "
              f"{row['wrong_chars_clean_pct']:.1f} |" for row in broken_down]
    return "\n".join(lines)


def main():
    parser = runner.common_arguments(__doc__)
    parser.add_argument("--noise", type=float, choices=[0.3, 0.5], required=True)
    parser.add_argument("--work-dir", help="default: runs/spelling-NOISE")
    parser.add_argument("--grid", choices=["main", "table1", "table2", "all", "finetune"], default="main")
    parser.add_argument("--max-epoch", type=int, default=30)
    parser.add_argument("--report", action="store_true")
    args = runner.parse_arguments(parser)
    work_dir = args.work_dir or os.path.join(runner.REPO, "runs", f"spelling-{args.noise}")
    task = f"spelling-{args.noise}"
    experiment = runner.Experiment(task=task, data=os.path.join(work_dir, "data"), work_dir=work_dir,
                                   common=runner.capped(common(args.max_epoch), args.stop_time_hours),
                                   scoring="edit", generate_flags=GENERATE,
                                   results=runner.results_file(args, task, grids_apart=["finetune"]),
                                   device=args.device, budget_hours=args.budget_hours,
                                   snapshots=args.snapshot_dir, test_metrics=error_breakdown.row_fields)
    chosen = runner.chosen_runs(args, runs(args.grid, args.seeds))
    if args.snapshot:
        return runner.take_snapshots(args, experiment, chosen)
    if args.reevaluate:
        runner.reevaluate(experiment, chosen)
    elif not args.report:
        prepare(args.data_root, work_dir, args.noise)
        runner.run_all(experiment, chosen, jobs=args.jobs)
    if args.grid == "finetune":
        return report_finetune(experiment, task)
    rows = list(runner.recorded(experiment).values())
    order = [c for c, _ in TABLE1_MAIN + TABLE1_REST]
    print(runner.format_tables(rows, "edit", [
        ("table1", f"Table 1 ({task}, test edit error %)", order),
        ("table2", f"Table 2 ({task})", [c for c, _ in TABLE2]),
        ("diagnostic", "Diagnostics (--extra-flags)", None),
    ]))
    runner.report_diagnostics(task)
    # by run name: with --results TASK-diagnostics.jsonl the two files' rows are the same rows
    shown = {row["run"]: row for row in [*rows, *runner.read_rows(runner.diagnostic_results(task)).values()]}
    print(format_breakdowns(list(shown.values())))
    if rows:
        runner.plot_results(experiment, rows, f"{task}: validation edit error")


if __name__ == "__main__":
    main()
