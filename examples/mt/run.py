"""Multi30k en–de: a small fairseq transformer trained with MLE, then fine-tuned with SEARNN (BLEU
cost) against continued MLE fine-tuning from the same checkpoint, for the same wall-clock time.

    python examples/mt/run.py                    # the baseline, then every fine-tuning row, 3 seeds
    python examples/mt/run.py --stage base       # the MLE baseline only
    python examples/mt/run.py --configs "MLE continued" "KL learned roll-in" --seeds 1
    python examples/mt/run.py --report           # the table and the plot

Data: ``--data-root``/multi30k/{train,val,test_2016_flickr}.{en,de}.gz (or $SEARNN_DATA), made once
into ``--work-dir``/data by ``preprocessing/mt.py`` (joint 8,000-piece sentencepiece trained on the
training side). Model: fairseq's ``transformer``, 3+3 layers of 256 (FFN 1024, 4 heads), all
embeddings shared, dropout 0.3.

Baseline (seed 1): label-smoothed cross-entropy (0.1), Adam (0.9, 0.98), inverse-sqrt schedule
(peak 1e-3 after 1,000 updates), 2,048 tokens per batch, validation BLEU (greedy, detokenised
sacreBLEU) after each epoch, early stop after 5 epochs without a better one, capped at 2 h.

Fine-tuning (``--finetune-from-model`` the baseline's best checkpoint: weights only, fresh optimiser,
data order and meters; resumable): the same batches, Adam at a fixed 1e-4, ``--finetune-hours`` of
training each (the same wall-clock budget for every row), validation BLEU every 200 updates, the
best checkpoint kept. Rows: continued MLE (the baseline's own loss) and SEARNN with the BLEU cost.

Test: ``fairseq-generate --post-process sentencepiece`` with greedy decoding and with beam 5, then
sacreBLEU on the detokenised output against the raw references (``--work-dir``/data/raw/test.de);
fairseq's own ``--scoring sacrebleu`` figure and the sacreBLEU signature are recorded beside it.
Each finished run appends one line to examples/results/mt.jsonl.
"""

import argparse
import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import runner  # noqa: E402

TASK = ["--task", "translation", "--source-lang", "en", "--target-lang", "de"]
MODEL = [
    "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
    "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim", "1024",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.3",
]
# Validation BLEU as fairseq's translation task computes it: greedy, pieces removed, sacreBLEU (13a).
VALID_BLEU = [
    "--eval-bleu", "--eval-bleu-args", '{"beam":1,"max_len_a":1.2,"max_len_b":10}', "--eval-bleu-detok", "space",
    "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
]
LABEL_SMOOTHING = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
BASELINE = [
    *LABEL_SMOOTHING, "--weight-decay", "0.0001",
    "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "0.001", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "1000", "--warmup-init-lr", "1e-07", "--max-tokens", "2048",
    "--max-epoch", "60", "--patience", "5", "--stop-time-hours", "2.0",
]
FINETUNE_VALIDATE_EVERY = "200"
FINETUNE = [
    "--weight-decay", "0.0001", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "0.0001",
    "--lr-scheduler", "fixed", "--max-tokens", "2048", "--max-epoch", "1000",
    "--validate-interval-updates", FINETUNE_VALIDATE_EVERY, "--save-interval-updates", FINETUNE_VALIDATE_EVERY,
    "--keep-interval-updates", "1",
]
SEARNN_SEARCH = [
    "--cost", "bleu", "--rollout", "mixed", "--reference-rollout", "best",
    "--token-sampling", "topk", "--sampled-tokens", "5", "--sampled-cells", "4",
]
# The SEARNN rows normalise over the whole dictionary (--full-softmax): with the sampled softmax a
# fine-tuned translation model's full distribution drifts (its NLL rose from 8.1 to 10.8 in 15
# updates), since the 8,000 - 5 unsampled tokens get no gradient. KL's temperature 0.005 is the
# authors' translation setting (their --temperature 200 multiplies the costs): sentence-BLEU costs
# of one cell differ by 0.01-0.3, and a softer target (0.1) gives a repeated word, which the
# best-suffix roll-out charges only a few hundredths, a large share of the target.
SHARP_KL = ["--criterion", "searnn_kl", "--temperature", "0.005", "--full-softmax", *SEARNN_SEARCH]
FINETUNE_ROWS = [
    ("MLE continued", LABEL_SMOOTHING),
    ("KL reference roll-in", [*SHARP_KL, "--rollin", "reference"]),
    ("KL learned roll-in", [*SHARP_KL, "--rollin", "learned"]),
    ("KL reference roll-in + MLE", [*SHARP_KL, "--rollin", "reference", "--mle-weight", "1"]),
]
# The SEARNN row the README reports and benchmarks/step_time.py times.
MAIN_SEARNN_ROW = "KL reference roll-in + MLE"
# Rows kept for their recorded diagnosis; trained only when named with --configs.
DIAGNOSTIC_ROWS = [
    # the main row with the paper's copy reference roll-out instead of the best suffix
    ("KL reference roll-in + MLE, copy roll-out",
     [*[flag if flag != "best" else "copy" for flag in SHARP_KL], "--rollin", "reference", "--mle-weight", "1"]),
    ("KL top-k", ["--criterion", "searnn_kl", "--temperature", "0.1", "--full-softmax", *SEARNN_SEARCH[:2],
                  "--rollin", "learned", *SEARNN_SEARCH[2:]]),
]
BASELINE_CONFIG = "MLE baseline"
BEAMS = (1, 5)
SCORE = re.compile(r"BLEU\s*=\s*([0-9.]+)")


@dataclass
class MTRun:
    config: str
    seed: int
    flags: List[str]
    stage: str  # "base" or "finetune"

    @property
    def name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.config.lower()).strip("-") + f"-seed{self.seed}"


# ---------------------------------------------------------------- data


def prepare(data_root: str, work_dir: str) -> str:
    data = os.path.join(work_dir, "data")
    if os.path.exists(os.path.join(data, "meta.json")):
        return data
    source = os.path.join(data_root, "multi30k")
    command = [sys.executable, os.path.join(runner.REPO, "preprocessing", "mt.py"), data,
               "--trainpref", os.path.join(source, "train"), "--validpref", os.path.join(source, "val"),
               "--testpref", os.path.join(source, "test_2016_flickr"), "--source-lang", "en", "--target-lang", "de"]
    subprocess.run(command, check=True)
    return data


# ---------------------------------------------------------------- the runs


def all_runs(seeds: List[int], finetune_hours: float) -> List[MTRun]:
    budget = ["--stop-time-hours", f"{finetune_hours:g}"]
    runs = [MTRun(BASELINE_CONFIG, 1, BASELINE, "base")]
    runs += [MTRun(config, seed, [*flags, *FINETUNE, *budget], "finetune")
             for config, flags in FINETUNE_ROWS + DIAGNOSTIC_ROWS for seed in seeds]
    return runs


def baseline_dir(work_dir: str) -> str:
    return os.path.join(work_dir, MTRun(BASELINE_CONFIG, 1, [], "base").name)


def train_command(data: str, work_dir: str, run: MTRun) -> List[str]:
    start = []
    if run.stage == "finetune":
        start = ["--finetune-from-model", os.path.join(baseline_dir(work_dir), "checkpoint_best.pt")]
    return [
        runner.fairseq_command("fairseq-train"), data, "--user-dir", "searnn_fairseq", *TASK, *MODEL, *run.flags,
        *start, *VALID_BLEU, "--seed", str(run.seed), "--save-dir", os.path.join(work_dir, run.name), "--cpu",
        "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "50",
    ]


def generate_command(data: str, save_dir: str, beam: int) -> List[str]:
    return [
        runner.fairseq_command("fairseq-generate"), data, "--user-dir", "searnn_fairseq", *TASK,
        "--path", os.path.join(save_dir, "checkpoint_best.pt"), "--gen-subset", "test", "--beam", str(beam),
        "--batch-size", "128", "--post-process", "sentencepiece", "--scoring", "sacrebleu", "--cpu",
    ]


def train(data: str, work_dir: str, run: MTRun, threads: int, log=print) -> None:
    save_dir = os.path.join(work_dir, run.name)
    os.makedirs(save_dir, exist_ok=True)
    command = train_command(data, work_dir, run)
    finished = os.path.join(save_dir, runner.FINISHED)
    if os.path.exists(finished) and open(finished).read().strip() == runner.portable(command):
        return
    log(f"[mt] {run.name}: training (log: {os.path.join(save_dir, 'train.log')})")
    with open(os.path.join(save_dir, "train.log"), "a") as out:
        subprocess.run(command, cwd=runner.REPO, env=runner.environment(threads), stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    with open(finished, "w") as out:
        out.write(runner.portable(command) + "\n")


# ---------------------------------------------------------------- evaluation


def sacrebleu_score(hyps: Dict[int, str], references: List[str]) -> Dict[str, object]:
    """Corpus sacreBLEU (default 13a tokenisation, cased) of the hypotheses against raw references."""
    import sacrebleu

    if sorted(hyps) != list(range(len(references))):
        raise RuntimeError(f"fairseq-generate gave {len(hyps)} hypotheses for {len(references)} references")
    metric = sacrebleu.BLEU()
    score = metric.corpus_score([hyps[i] for i in range(len(references))], [references])
    return {"bleu": round(score.score, 2), "signature": str(metric.get_signature())}


def evaluate(data: str, save_dir: str, beam: int, threads: int) -> Dict[str, object]:
    command = generate_command(data, save_dir, beam)
    out = subprocess.run(command, cwd=runner.REPO, env=runner.environment(threads), capture_output=True, text=True)
    with open(os.path.join(save_dir, f"generate_test_beam{beam}.log"), "w") as f:
        f.write(out.stdout + out.stderr)
    out.check_returncode()
    with open(os.path.join(data, "raw", "test.de"), encoding="utf-8") as f:
        references = [line.rstrip("\n") for line in f]
    result = sacrebleu_score(runner.generated_hypotheses(out.stdout), references)
    fairseq_line = [float(m.group(1)) for m in map(SCORE.search, out.stdout.splitlines() + out.stderr.splitlines()) if m]
    result["fairseq_bleu"] = fairseq_line[-1] if fairseq_line else None
    result["command"] = runner.portable(command)
    return result


def record(data: str, work_dir: str, run: MTRun, results: str, threads: int, log=print) -> dict:
    save_dir = os.path.join(work_dir, run.name)
    curve = runner.validation_curve(os.path.join(save_dir, "train.log"), {"bleu": "valid_bleu", "loss": "valid_loss"})
    tests = {beam: evaluate(data, save_dir, beam, threads) for beam in BEAMS}
    row = {
        "task": "mt", "run": run.name, "stage": run.stage, "config": run.config, "seed": run.seed,
        "bleu_greedy": tests[1]["bleu"], "bleu_beam5": tests[5]["bleu"], "signature": tests[1]["signature"],
        "fairseq_bleu_greedy": tests[1]["fairseq_bleu"], "fairseq_bleu_beam5": tests[5]["fairseq_bleu"],
        "best_valid_bleu": max((p["bleu"] for p in curve), default=None),
        "updates": curve[-1]["updates"] if curve else 0, "wall_s": curve[-1]["wall"] if curve else 0,
        "train_command": runner.portable(train_command(data, work_dir, run)),
        "generate_commands": [tests[beam]["command"] for beam in BEAMS],
        "curve": curve,
    }
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    log(f"[mt] {run.name}: test sacreBLEU greedy {row['bleu_greedy']:.2f}, beam 5 {row['bleu_beam5']:.2f} "
        f"after {row['updates']} updates, {row['wall_s'] / 60:.1f} min")
    return row


# ---------------------------------------------------------------- report


def table(rows: List[dict]) -> str:
    lines = ["| config | seeds | sacreBLEU greedy | sacreBLEU beam 5 | best valid BLEU | updates | wall (min) |",
             "|---|---|---|---|---|---|---|"]
    order = [BASELINE_CONFIG] + [config for config, _ in FINETUNE_ROWS + DIAGNOSTIC_ROWS]
    for config in sorted({r["config"] for r in rows}, key=lambda c: order.index(c) if c in order else len(order)):
        group = [r for r in rows if r["config"] == config]

        def stat(key):
            values = [r[key] for r in group]
            mean = statistics.mean(values)
            return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

        lines.append(f"| {config} | {', '.join(str(r['seed']) for r in sorted(group, key=lambda r: r['seed']))} | "
                     f"{stat('bleu_greedy')} | {stat('bleu_beam5')} | {stat('best_valid_bleu')} | "
                     f"{statistics.mean(r['updates'] for r in group):.0f} | {statistics.mean(r['wall_s'] for r in group) / 60:.0f} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for stage, ax in zip(("base", "finetune"), axes):
        for index, row in enumerate(sorted((r for r in rows if r["stage"] == stage), key=lambda r: (r["config"], r["seed"]))):
            walls = [p["wall"] / 60 for p in row["curve"]]
            ax.plot(walls, [p["bleu"] for p in row["curve"]], label=f"{row['config']} (seed {row['seed']})", alpha=0.8)
        ax.set_xlabel("wall time (min)")
        ax.set_ylabel("validation BLEU (greedy)")
        ax.set_title("MLE baseline" if stage == "base" else "fine-tuning from the baseline")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: str) -> None:
    rows = list(runner.read_rows(results).values())
    print(table(rows) if rows else "no finished run yet")
    if rows:
        path = os.path.splitext(results)[0] + "_validation.png"
        plot(rows, path)
        print(f"\nplot: {path}")


# ---------------------------------------------------------------- main


def train_and_record(data: str, args: argparse.Namespace, run: MTRun) -> None:
    train(data, args.work_dir, run, args.threads)
    record(data, args.work_dir, run, args.results, args.threads)


def pending(data: str, args: argparse.Namespace) -> List[MTRun]:
    """The runs this invocation trains, in order: the baseline first, then the fine-tuning rows
    asked for; a run recorded with the same command is done."""
    done = runner.read_rows(args.results)
    chosen = []
    for run in all_runs(args.seeds, args.finetune_hours):
        if run.stage == "finetune" and (args.stage == "base" or args.configs and run.config not in args.configs):
            continue
        if run.config in dict(DIAGNOSTIC_ROWS) and not args.configs:  # named ones passed the check above
            continue
        recorded = done.get(run.name)
        if recorded and recorded["train_command"] == runner.portable(train_command(data, args.work_dir, run)):
            continue
        chosen.append(run)
    return chosen


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SEARNN_DATA") or os.path.join(os.path.dirname(runner.REPO), "shared", "data"))
    parser.add_argument("--work-dir", default=os.path.join(runner.REPO, "runs", "mt"))
    parser.add_argument("--results", default=os.path.join(runner.REPO, "examples", "results", "mt.jsonl"))
    parser.add_argument("--stage", choices=["base", "all"], default="all")
    parser.add_argument("--configs", nargs="+", help="only these fine-tuning rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="fine-tuning seeds (default 1 2 3)")
    parser.add_argument("--finetune-hours", type=float, default=0.4, help="training time of every fine-tuning run, in hours (default 0.4)")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tuning runs trained at a time, one core each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    args = parser.parse_args(argv)
    if not args.report:
        data = prepare(args.data_root, args.work_dir)
        todo = pending(data, args)
        for run in [r for r in todo if r.stage == "base"]:
            train_and_record(data, args, run)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            for future in [pool.submit(train_and_record, data, args, r) for r in todo if r.stage == "finetune"]:
                future.result()
    report(args.results)


if __name__ == "__main__":
    main()
