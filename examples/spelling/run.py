"""Spelling correction (Bahdanau et al. 2017's task): SEARNN vs MLE, Tables 1 and 2.

    python examples/spelling/run.py --noise 0.3                 # MLE, LL, LLCAS (learned/mixed), 3 seeds
    python examples/spelling/run.py --noise 0.5 --grid all      # + the rest of Tables 1 and 2, seed 1
    python examples/spelling/run.py --noise 0.3 --report
    python examples/spelling/run.py --noise 0.3 --grid table2 --seeds 2 --configs "sLL policy" \
        --extra-flags "--clip-norm 5"                            # a diagnostic: a row with flags added

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
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import runner  # noqa: E402
from examples.ocr.run import TABLE1_MAIN, TABLE1_REST, TABLE2, runs  # noqa: E402

GENERATE = ["--task", "translation", "--source-lang", "src", "--target-lang", "tgt"]


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


def main():
    parser = runner.common_arguments(__doc__)
    parser.add_argument("--noise", type=float, choices=[0.3, 0.5], required=True)
    parser.add_argument("--work-dir", help="default: runs/spelling-NOISE")
    parser.add_argument("--grid", choices=["main", "table1", "table2", "all"], default="main")
    parser.add_argument("--max-epoch", type=int, default=30)
    parser.add_argument("--report", action="store_true")
    args = runner.parse_arguments(parser)
    work_dir = args.work_dir or os.path.join(runner.REPO, "runs", f"spelling-{args.noise}")
    task = f"spelling-{args.noise}"
    experiment = runner.Experiment(task=task, data=os.path.join(work_dir, "data"), work_dir=work_dir,
                                   common=runner.capped(common(args.max_epoch), args.stop_time_hours),
                                   scoring="edit", generate_flags=GENERATE, results=runner.results_file(args, task),
                                   device=args.device, budget_hours=args.budget_hours,
                                   snapshots=args.snapshot_dir)
    chosen = runner.chosen_runs(args, runs(args.grid, args.seeds))
    if args.snapshot:
        return runner.take_snapshots(args, experiment, chosen)
    if args.reevaluate:
        runner.reevaluate(experiment, chosen)
    elif not args.report:
        prepare(args.data_root, work_dir, args.noise)
        runner.run_all(experiment, chosen, jobs=args.jobs)
    rows = list(runner.recorded(experiment).values())
    order = [c for c, _ in TABLE1_MAIN + TABLE1_REST]
    print(runner.format_tables(rows, "edit", [
        ("table1", f"Table 1 ({task}, test edit error %)", order),
        ("table2", f"Table 2 ({task})", [c for c, _ in TABLE2]),
        ("diagnostic", "Diagnostics (--extra-flags)", None),
    ]))
    if rows:
        runner.plot_results(experiment, rows, f"{task}: validation edit error")


if __name__ == "__main__":
    main()
