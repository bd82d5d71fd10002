"""OCR (Taskar et al. 2003): SEARNN vs MLE, the paper's Tables 1 and 2.

    python examples/ocr/run.py                      # Table 1 minimum: MLE, LL, LLCAS (learned/mixed), 3 seeds
    python examples/ocr/run.py --grid table1        # + the other roll-in/roll-out pairs, seed 1
    python examples/ocr/run.py --grid table2        # + token sampling (5 tokens per cell), seed 1
    python examples/ocr/run.py --report             # print the tables and draw the plots
    python examples/ocr/run.py --grid finetune      # MLE, then SEARNN fine-tuned from its best checkpoint
    python examples/ocr/run.py --grid finetune --report

Data: ``--data-root``/ocr/letter.data.gz (or $SEARNN_DATA), preprocessed once into
``--work-dir``/data (test = fold 0, train = the other nine folds, 10% of train
words for validation). Model: searnn_gru_ocr (GRU 128, bidirectional encoder,
no attention). Optimisation, the same for every run: Adam lr 2e-3, batch 64,
at most 30 epochs, early stop after 6 epochs without a better validation
Hamming error, checkpoint of lowest validation error evaluated on test with
``fairseq-generate --beam 1 --scoring hamming``. Runs are resumable; results
go to examples/results/ocr.jsonl as they finish.

``--grid finetune`` (results in examples/results/ocr-finetune.jsonl): MLE on seeds 1-3, then
LLCAS learned/mixed fine-tuned from each seed's best MLE checkpoint (``--finetune-from-model``)
with FINETUNE below, and with the from-scratch budget (FINETUNE_LONG); the ``finetune-tuning``
rows (seed 1) are the variants FINETUNE was chosen from, on validation error. Its report compares
them with SEARNN from scratch (examples/results/ocr.jsonl).
"""

import os
import subprocess
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import finetuning, runner  # noqa: E402

TABLE1_MAIN = [("MLE", ["--criterion", "searnn_mle"])] + [
    (f"{loss.upper()} learned/mixed", ["--criterion", f"searnn_{loss}", "--rollin", "learned", "--rollout", "mixed"])
    for loss in ("ll", "llcas")
]
TABLE1_REST = [
    (f"{loss.upper()} {rollin}/{rollout}", ["--criterion", f"searnn_{loss}", "--rollin", rollin, "--rollout", rollout])
    for loss in ("ll", "llcas")
    for rollin, rollout in (("reference", "learned"), ("learned", "learned"))
]
SAMPLINGS = ("uniform", "unigram", "policy", "biased", "topk")
# The paper's Table 2 rows: LL keeps the full softmax (a* among the sampled tokens), sLL and
# sLLCAS normalise over the sampled tokens only.
TABLE2_LOSSES = (("LL", ["searnn_ll", "--full-softmax"]), ("sLL", ["searnn_ll"]), ("sLLCAS", ["searnn_llcas"]))
TABLE2 = [
    (f"{name} {sampling}", ["--criterion", *criterion, "--rollin", "learned", "--rollout", "mixed",
                            "--token-sampling", sampling, "--sampled-tokens", "5"])
    for name, criterion in TABLE2_LOSSES
    for sampling in SAMPLINGS
]

# Fine-tuning from MLE: a shorter budget than from scratch, as the model starts at MLE's plateau,
# and the variant of FINETUNE_TUNING with the lowest validation error on seed 1. The CoNLL and
# spelling grids reuse the budget and the decaying MLE term (their Adam lr is already 1e-3).
FINETUNE_BUDGET = ["--max-epoch", "10", "--patience", "3"]
DECAYING_MLE_TERM = ["--mle-weight", "1", "--mle-weight-decay-updates", "300"]
SCRATCH_CONFIG = "LLCAS learned/mixed"  # Table 1's row, the run fine-tuning is compared with
LLCAS = ["--criterion", "searnn_llcas", "--rollin", "learned", "--rollout", "mixed"]
FINETUNE_VARIANTS = {
    "lr 2e-3": ["--lr", "0.002"],
    "lr 1e-3": ["--lr", "0.001"],
    "lr 5e-4": ["--lr", "0.0005"],
    "lr 1e-3, roll-in warm-up 300": ["--lr", "0.001", "--rollin-warmup-updates", "300"],
    "lr 1e-3, MLE weight 1 decayed over 300": ["--lr", "0.001", *DECAYING_MLE_TERM],
}
CHOSEN_VARIANT = "lr 1e-3, MLE weight 1 decayed over 300"
FINETUNE_TUNING = [(f"{SCRATCH_CONFIG} from MLE, {name}", [*LLCAS, *FINETUNE_BUDGET, *flags])
                   for name, flags in FINETUNE_VARIANTS.items()]
FINETUNE_CONFIG = f"{SCRATCH_CONFIG} from MLE, {CHOSEN_VARIANT}"
FINETUNE = dict(FINETUNE_TUNING)[FINETUNE_CONFIG]
# The chosen variant with the from-scratch budget (COMMON's 30 epochs, patience 6): whether the
# short budget is what keeps fine-tuning's test error above SEARNN from scratch
FINETUNE_LONG_CONFIG = f"{FINETUNE_CONFIG}, 30 epochs"
FINETUNE_LONG = [*LLCAS, *FINETUNE_VARIANTS[CHOSEN_VARIANT]]

COMMON = [
    "--task", "dense_seq2seq", "--arch", "searnn_gru_ocr", "--cost", "hamming",
    "--optimizer", "adam", "--lr", "0.002", "--batch-size", "64",
    "--max-epoch", "30", "--patience", "6", "--log-interval", "50",
]

GENERATE = ["--task", "dense_seq2seq"]


def data_dir(work_dir: str) -> str:
    return os.path.join(work_dir, "data")


def prepare(data_root: str, work_dir: str) -> str:
    data = data_dir(work_dir)
    if not os.path.exists(os.path.join(data, "meta.json")):
        source = os.path.join(data_root, "ocr", "letter.data.gz")
        if not os.path.exists(source):
            raise SystemExit(f"OCR data not found at {source}: set --data-root / $SEARNN_DATA, or run "
                             "preprocessing/fetch_ocr.sh DIR and pass --letters DIR/letters.pickle")
        subprocess.run([sys.executable, os.path.join(runner.REPO, "preprocessing", "ocr.py"), source, data], check=True)
    return data


def experiment(args, data: str) -> runner.Experiment:
    results = runner.results_file(args, "ocr", grids_apart=["finetune"])
    return runner.Experiment(task="ocr", data=data, work_dir=args.work_dir,
                             common=runner.capped(COMMON, args.stop_time_hours), scoring="hamming",
                             generate_flags=GENERATE, results=results, device=args.device,
                             budget_hours=args.budget_hours, snapshots=args.snapshot_dir)


FINETUNE_RESULTS = runner.grid_results("ocr", "finetune")


def finetune_runs(seeds: Optional[List[int]] = None) -> List[runner.Run]:
    """MLE, then SEARNN fine-tuned from its best checkpoint, per seed (default 1-3), and the
    fine-tuning variants on the first seed (what FINETUNE was chosen from, on validation)."""
    seeds = seeds or [1, 2, 3]
    mle = {seed: runner.Run("MLE", seed, ["--criterion", "searnn_mle"], group="finetune") for seed in seeds}
    chosen = [*mle.values()]
    chosen += [runner.Run(FINETUNE_CONFIG, seed, FINETUNE, group="finetune", init_from=mle[seed]) for seed in seeds]
    chosen += [runner.Run(FINETUNE_LONG_CONFIG, seed, FINETUNE_LONG, group="finetune-long", init_from=mle[seed])
               for seed in seeds]
    chosen += [runner.Run(config, seeds[0], flags, group="finetune-tuning", init_from=mle[seeds[0]])
               for config, flags in FINETUNE_TUNING if config != FINETUNE_CONFIG]
    # LLCAS from scratch (Table 1's run), timed on the machine that times the rest
    chosen += [runner.Run(SCRATCH_CONFIG, seed, LLCAS, group="finetune-scratch") for seed in seeds]
    return chosen


def runs(grid: str, seeds: Optional[List[int]] = None) -> List[runner.Run]:
    """The grid's runs. Without ``--seeds``: the Table 1 minimum on seeds 1, 2, 3 and the other rows on
    seed 1 only (they are the many, costly ones); with it, every row on exactly the seeds named, so
    that ``--grid table2 --seeds 2 3`` trains Table 2's seeds 2 and 3 rather than quietly only seed 2."""
    if grid == "finetune":
        return finetune_runs(seeds)
    minimum_seeds, rest_seeds = (seeds, seeds) if seeds else ([1, 2, 3], [1])
    chosen = [runner.Run(config, seed, flags) for config, flags in TABLE1_MAIN for seed in minimum_seeds]
    if grid in ("table1", "all"):
        chosen += [runner.Run(config, seed, flags) for config, flags in TABLE1_REST for seed in rest_seeds]
    if grid in ("table2", "all"):
        chosen += [runner.Run(config, seed, flags, group="table2") for config, flags in TABLE2 for seed in rest_seeds]
    return chosen


def report_finetune(args) -> None:
    rows = runner.read_rows(FINETUNE_RESULTS)
    scratch_rows = {**runner.read_rows(runner.default_results("ocr")), **rows}  # a same-machine rerun wins
    tuning = [row for row in rows.values() if row["group"] == "finetune-tuning"]
    if tuning:
        print("Fine-tuning variants, seed 1 (chosen on validation error):")
        print("| config | best valid cost | test % | updates | fine-tuning wall s |\n|---|---|---|---|---|")
        for row in tuning:
            print(f"| {row['config']} | {row['best_valid_cost']:.4f} | {row['test_error']:.2f} | {row['updates']} | "
                  f"{row['wall_s']:.0f} |")
    ways = finetuning.Ways(searnn="LLCAS", task="OCR", cost="Hamming error per word")
    finetuning.report(finetuning.triples(rows, scratch_rows, SCRATCH_CONFIG, FINETUNE_CONFIG),
                      os.path.splitext(FINETUNE_RESULTS)[0] + "_validation.png", ways)
    if any(row["config"] == FINETUNE_LONG_CONFIG for row in rows.values()):
        print(f"\n(c) with the from-scratch budget ({FINETUNE_LONG_CONFIG}):")
        finetuning.report(finetuning.triples(rows, scratch_rows, SCRATCH_CONFIG, FINETUNE_LONG_CONFIG),
                          os.path.splitext(FINETUNE_RESULTS)[0] + "_30_epochs_validation.png", ways)


def report(args) -> None:
    if args.grid == "finetune":
        return report_finetune(args)
    results = experiment(args, "")
    rows = list(runner.recorded(results).values())
    order = [c for c, _ in TABLE1_MAIN + TABLE1_REST]
    print(runner.format_tables(rows, "Hamming", [
        ("table1", "Table 1 (OCR, test Hamming error %)", order),
        ("table2", "Table 2 (OCR, 5 tokens per cell)", [c for c, _ in TABLE2]),
        ("diagnostic", "Diagnostics (--extra-flags)", None),
    ]))
    runner.report_paired(rows, [c for c, _ in TABLE1_MAIN if c != "MLE"])
    runner.report_diagnostics("ocr")
    if rows:
        plot = runner.plot_results(results, rows, "OCR: validation Hamming error per word",
                                   configs=[c for c, _ in TABLE1_MAIN])
        print(f"\nplot: {plot}")


def main():
    parser = runner.common_arguments(__doc__)
    parser.add_argument("--work-dir", default=os.path.join(runner.REPO, "runs", "ocr"))
    parser.add_argument("--grid", choices=["main", "table1", "table2", "all", "finetune"], default="main")
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the plot")
    args = runner.parse_arguments(parser)
    chosen = runner.chosen_runs(args, runs(args.grid, args.seeds))
    if args.snapshot:
        return runner.take_snapshots(args, experiment(args, ""), chosen)
    if args.reevaluate:
        runner.reevaluate(experiment(args, data_dir(args.work_dir)), chosen)
    elif not args.report:
        data = prepare(args.data_root, args.work_dir)
        runner.run_all(experiment(args, data), chosen, jobs=args.jobs)
    report(args)


if __name__ == "__main__":
    main()
