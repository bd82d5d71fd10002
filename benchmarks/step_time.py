"""Wall time and peak memory of one SEARNN update, as a ratio to an MLE update.

Every configuration is measured in one process on the same model and batch:
fairseq's ``cross_entropy`` step, then the SEARNN step (forward, backward,
optimizer step), each the median of several updates after warm-up. Before
timing, the model is fitted to the batch with a few MLE updates so that
learned roll-outs stop at a realistic length (a fresh model never emits EOS
and every roll-out would run to the cap).

Configuration ``5-mt-multi30k`` is the translation example's own setting
(examples/mt/run.py: its transformer, its MLE criterion, its "KL top-k" SEARNN
row) on a real batch: the first ``--max-tokens 2048`` batch of the binarised
Multi30k training set (``--mt-data``, made by preprocessing/mt.py) as
fairseq-train with ``--seed 1`` would draw it. ``--mt-checkpoint`` loads a
trained MLE checkpoint's weights instead of the fitting; without the data the
configuration is skipped with a message and the others still run.

Peak memory is measured in a fresh subprocess per (configuration, criterion):
the rise of the process's peak resident set (CPU) or of
``torch.cuda.max_memory_allocated`` (GPU) over the state before the first
step.

    python benchmarks/step_time.py                 # all configurations
    python benchmarks/step_time.py --quick         # tiny sizes, < 1 minute
    python benchmarks/step_time.py --device cuda --json out.json
    python benchmarks/step_time.py --configs 5-mt-multi30k --mt-checkpoint runs/mt/mle-baseline-seed1/checkpoint_best.pt
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fairseq import checkpoint_utils, options, tasks, utils  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402

import searnn_fairseq  # noqa: E402,F401  (before any torch.load: registers the checkpoints' safe globals)
from benchmarks.naive import naive_search  # noqa: E402
from examples.mt import run as mt_example  # noqa: E402  (flag lists only; imports nothing but the standard library)
from examples.conll.run import CONLL_SAMPLED_SEARCH  # noqa: E402  (the CoNLL example's search flags)

MT_DATA = os.environ.get("SEARNN_MT_DATA") or os.path.join(REPO, "runs", "mt", "data")
MT_ROWS = dict(mt_example.FINETUNE_ROWS + mt_example.DIAGNOSTIC_ROWS)

CONFIGS = {
    "1-ocr-5tok": dict(
        arch=["--arch", "searnn_gru_ocr", "--encoder-input-dim", "128"],
        vocab=26, batch=64, lengths=(3, 14), dense=128,
        searnn=["--criterion", "searnn_llcas", "--cost", "hamming", "--rollin", "learned", "--rollout", "mixed",
                "--token-sampling", "uniform", "--sampled-tokens", "5"],
        naive=True,
    ),
    "2-ocr-all": dict(
        arch=["--arch", "searnn_gru_ocr", "--encoder-input-dim", "128"],
        vocab=26, batch=64, lengths=(3, 14), dense=128,
        searnn=["--criterion", "searnn_llcas", "--cost", "hamming", "--rollin", "learned", "--rollout", "mixed",
                "--token-sampling", "all"],
    ),
    "3-mt-transformer": dict(
        arch=["--arch", "transformer", "--encoder-layers", "3", "--decoder-layers", "3",
              "--encoder-embed-dim", "256", "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024",
              "--decoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
              "--share-decoder-input-output-embed"],
        vocab=8000, batch=30, lengths=(20, 30), dense=0,
        searnn=["--criterion", "searnn_llcas", "--cost", "bleu", "--rollin", "learned", "--rollout", "mixed",
                "--token-sampling", "topk", "--sampled-tokens", "5", "--sampled-cells", "10"],
        # At 3e-3 the transformer never leaves the unigram solution: it predicts EOS (the most
        # frequent target token) everywhere, so learned roll-outs end after one step and the
        # search looks 5x cheaper than it is. 130 updates at 5e-4 make it decode to full length.
        fit_steps=130, fit_lr=5e-4,
    ),
    "4-spelling-all": dict(
        arch=["--arch", "searnn_gru_spelling"],
        vocab=43, batch=128, lengths=(6, 10), dense=0,
        searnn=["--criterion", "searnn_llcas", "--cost", "edit", "--rollin", "learned", "--rollout", "mixed",
                "--token-sampling", "all"],
    ),
    # The translation example as it runs: its model (dropout 0.3 included), its fine-tuning batch size,
    # its MLE criterion (label-smoothed, the "MLE continued" row) and its main SEARNN row, on
    # the first Multi30k training batch. Weights: --mt-checkpoint, else the transformer fitting of config 3.
    "5-mt-multi30k": dict(
        arch=mt_example.MODEL, task=mt_example.TASK,
        max_tokens=int(mt_example.FINETUNE[mt_example.FINETUNE.index("--max-tokens") + 1]),
        mle=MT_ROWS["MLE continued"], searnn=MT_ROWS[mt_example.MAIN_SEARNN_ROW],
        fit_steps=130, fit_lr=5e-4,
    ),
    # CoNLL chunking (appendix B's model; the POS stream left out, its 44-d embedding costs nothing
    # next to the GRUs): 22 tags, targets of 15-35 tags (the training set's mean is 24), the paper's
    # LL learned/mixed over all tokens and cells, and the sampled search the example runs.
    "6-conll-all": dict(
        arch=["--arch", "searnn_gru_conll", "--encoder-factor-embed-dim", "0"],
        vocab=22, batch=64, lengths=(15, 35), dense=0,
        searnn=["--criterion", "searnn_ll", "--cost", "normalized_hamming", "--rollin", "learned",
                "--rollout", "mixed", "--token-sampling", "all"],
    ),
    "7-conll-sampled": dict(
        arch=["--arch", "searnn_gru_conll", "--encoder-factor-embed-dim", "0"],
        vocab=22, batch=64, lengths=(15, 35), dense=0,
        searnn=CONLL_SAMPLED_SEARCH,
    ),
}

QUICK = {
    "1-ocr-5tok": dict(batch=8, lengths=(3, 6)),
    "2-ocr-all": dict(batch=4, lengths=(3, 5)),
    "3-mt-transformer": dict(batch=4, lengths=(5, 8), vocab=200),
    "4-spelling-all": dict(batch=4, lengths=(3, 5)),
    "5-mt-multi30k": dict(sentences=4),  # the first 4 sentences of the batch; runs only where the data is
    "6-conll-all": dict(batch=4, lengths=(3, 5)),
    "7-conll-sampled": dict(batch=4, lengths=(3, 5)),
}


def mt_data_missing(data):
    """Why the binarised Multi30k in ``data`` cannot be used, or None when it can."""
    flag = mt_example.TASK.index
    src, tgt = mt_example.TASK[flag("--source-lang") + 1], mt_example.TASK[flag("--target-lang") + 1]
    needed = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    needed += [f"train.{src}-{tgt}.{lang}.{ext}" for lang in (src, tgt) for ext in ("bin", "idx")]
    absent = [name for name in needed if not os.path.isfile(os.path.join(data, name))]
    if absent:
        return (f"no binarised Multi30k in {data} ({', '.join(absent)} missing): make it with preprocessing/mt.py "
                f"(or examples/mt/run.py), then pass --mt-data DIR or set SEARNN_MT_DATA")
    return None


def build(config, criterion_flags, device):
    parser = options.get_training_parser()
    # dropout 0.1 unless the configuration's model sets its own
    argv = ["unused", "--task", "translation", "--optimizer", "sgd", "--lr", "0.1", "--dropout", "0.1", *config["arch"],
            *criterion_flags]
    if device == "cpu":
        argv.append("--cpu")
    args = options.parse_args_and_arch(parser, argv)
    dictionary = Dictionary()
    for i in range(config["vocab"]):
        dictionary.add_symbol(f"t{i}", n=config["vocab"] - i)
    dictionary.finalize(padding_factor=8)
    task = tasks.translation.TranslationTask(args, dictionary, dictionary)
    return task, args


def data_argv(config, data, flags):
    return [data, *config["task"], "--max-tokens", str(config["max_tokens"]), "--seed", "1", *config["arch"], *flags]


def build_from_data(config, criterion_flags, device, data):
    """The translation task of ``data`` (its dictionaries and training set) with the configuration's flags."""
    argv = data_argv(config, data, ["--optimizer", "sgd", "--lr", "0.1", *criterion_flags])
    if device == "cpu":
        argv.append("--cpu")
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    task.load_dataset("train")
    return task, args


def first_data_batch(config, task, model, device, sentences=0):
    """The first training batch of epoch 1, as fairseq-train (--seed 1) draws it: the translation
    task's length-bucketed batches of --max-tokens, shuffled. ``sentences`` keeps only its first few."""
    dataset = task.dataset("train")
    iterator = task.get_batch_iterator(
        dataset=dataset, max_tokens=config["max_tokens"],
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions(), config["max_tokens"]),
        ignore_invalid_inputs=True, required_batch_size_multiple=8, seed=1, epoch=1,
    )
    with warnings.catch_warnings():  # fairseq's loader asks for pinned memory, which a CPU has none of
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        sample = next(iter(iterator.next_epoch_itr(shuffle=True)))
    if sentences:
        sample = dataset.collater([dataset[i] for i in sample["id"][:sentences].tolist()])
    return move(sample, device)


def load_weights(model, path):
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    model.load_state_dict(state["model"], strict=True)


def make_batch(config, dictionary, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    bsz = config["batch"]
    lo, hi = config["lengths"]
    lengths = torch.randint(lo, hi + 1, (bsz,), generator=g)
    width = int(lengths.max()) + 1
    first = dictionary.nspecial
    target = torch.full((bsz, width), dictionary.pad())
    for b, n in enumerate(lengths.tolist()):
        target[b, :n] = torch.randint(first, first + config["vocab"], (n,), generator=g)
        target[b, n] = dictionary.eos()
    prev = torch.full_like(target, dictionary.pad())
    prev[:, 0] = dictionary.eos()
    prev[:, 1:] = target[:, :-1]
    prev = prev.masked_fill(target.eq(dictionary.pad()), dictionary.pad())
    if config["dense"]:
        src = torch.zeros(bsz, int(lengths.max()), config["dense"])
        for b, n in enumerate(lengths.tolist()):
            src[b, :n] = (torch.rand(n, config["dense"], generator=g) < 0.3).float()
        src_lengths = lengths.clone()
    else:
        # source = a noisy copy of the target, so the model can fit it quickly
        src = target.clone()
        noise = torch.randint(first, first + config["vocab"], src.shape, generator=g)
        flip = (torch.rand(src.shape, generator=g) < 0.2) & src.ne(dictionary.pad()) & src.ne(dictionary.eos())
        src = torch.where(flip, noise, src)
        src_lengths = lengths + 1
    sample = {
        "id": torch.arange(bsz),
        "nsentences": bsz,
        "ntokens": int(lengths.sum() + bsz),
        "net_input": {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev},
        "target": target,
    }
    return move(sample, device)


def move(sample, device):
    if torch.is_tensor(sample):
        return sample.to(device)
    if isinstance(sample, dict):
        return {k: move(v, device) for k, v in sample.items()}
    return sample


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def update(model, criterion, optimizer, sample):
    optimizer.zero_grad()
    loss, sample_size, log = criterion(model, sample)
    (loss / sample_size).backward()
    optimizer.step()
    return log


def fit_to_batch(model, mle, sample, steps, lr):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        update(model, mle, optimizer, sample)


def setup(name, quick, device, seed=0, extra=(), mt_data=MT_DATA, mt_checkpoint=None):
    config = dict(CONFIGS[name])
    if quick:
        config.update(QUICK[name])
    mle_flags = config.get("mle", ["--criterion", "cross_entropy"])
    real_data = "max_tokens" in config
    if real_data:
        task, args = build_from_data(config, [*config["searnn"], *extra], device, mt_data)
        mle_args = options.parse_args_and_arch(options.get_training_parser(), data_argv(config, mt_data, mle_flags))
    else:
        task, args = build(config, [*config["searnn"], *extra], device)
        mle_args = options.parse_args_and_arch(
            options.get_training_parser(), ["unused", "--task", "translation", *config["arch"], *mle_flags]
        )
    torch.manual_seed(seed)
    model = task.build_model(args).to(device)
    searnn = task.build_criterion(args)
    mle = task.build_criterion(mle_args)
    if real_data:
        sample = first_data_batch(config, task, model, device, config.get("sentences", 0))
    else:
        sample = make_batch(config, task.target_dictionary, device)
    model.train()
    if real_data and mt_checkpoint:
        load_weights(model, mt_checkpoint)
        config["weights"] = os.path.basename(mt_checkpoint)
    else:
        steps = 2 if quick else config.get("fit_steps", 40)
        fit_to_batch(model, mle, sample, steps=steps, lr=config.get("fit_lr", 3e-3))
        config["weights"] = f"fitted to the batch ({steps} MLE updates)"
    return config, model, mle, searnn, sample


def rollin_steps(sample):
    """Decoder row-steps of the roll-in alone: every sentence at every target position."""
    return sample["target"].numel()


def time_updates(model, criterion, sample, device, repeats, warmup):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    times, logs = [], []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        log = update(model, criterion, optimizer, sample)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            logs.append(log)
    return statistics.median(times), logs


def time_naive(model, searnn, sample, device, repeats):
    """The same roll-outs, one (cell, token) pair at a time; checks the costs agree."""
    times = []
    for i in range(repeats):
        torch.manual_seed(100 + i)
        batched = searnn.search(model, sample)
        sync(device)
        start = time.perf_counter()
        costs = naive_search(model, sample, batched, searnn)
        sync(device)
        times.append(time.perf_counter() - start)
        if not torch.allclose(costs, batched.costs, atol=1e-5):
            raise AssertionError("naive and batched roll-outs disagree")
    # the batched search alone, for the same roll-outs
    batched_times = []
    for i in range(repeats):
        torch.manual_seed(100 + i)
        sync(device)
        start = time.perf_counter()
        searnn.search(model, sample)
        sync(device)
        batched_times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(batched_times)


def peak_memory(name, quick, device, extra, mt_data, mt_checkpoint):
    """Peak memory rise (MB) of a few MLE updates, then of a few SEARNN updates,
    measured in one fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", name, "--device", device,
           f"--searnn-flags={' '.join(extra)}", "--threads", str(torch.get_num_threads()), "--mt-data", mt_data]
    if mt_checkpoint:
        cmd += ["--mt-checkpoint", mt_checkpoint]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    mle, searnn = out.stdout.strip().splitlines()[-1].split()
    return float(mle), float(searnn)


def memory_probe(name, quick, device, extra, mt_data, mt_checkpoint):
    config, model, mle, searnn, sample = setup(name, quick, device, extra=extra, mt_data=mt_data, mt_checkpoint=mt_checkpoint)
    peaks = []
    for criterion in (mle, searnn):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        update(model, criterion, optimizer, sample)  # one-time allocations are not the step's
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            release_free_memory()
            base = current_rss_mb()
            reset_peak_rss()
        for _ in range(3):
            update(model, criterion, optimizer, sample)
        if device == "cuda":
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        else:
            peaks.append(peak_rss_mb() - base)
        del optimizer
    print(f"{peaks[0]:.2f} {peaks[1]:.2f}")


def release_free_memory():
    """Hand memory freed by the warm-up back to the OS, so the baseline is what is live."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss():
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(names, quick, device, repeats, warmup, with_memory, extra, mt_data=MT_DATA, mt_checkpoint=None):
    rows = []
    for name in names:
        if "max_tokens" in CONFIGS[name]:
            missing = mt_data_missing(mt_data)
            if missing:
                print(f"{name}: skipped: {missing}", flush=True)
                continue
        config, model, mle, searnn, sample = setup(name, quick, device, extra=extra, mt_data=mt_data, mt_checkpoint=mt_checkpoint)
        mle_time, _ = time_updates(model, mle, sample, device, repeats, warmup)
        searnn_time, logs = time_updates(model, searnn, sample, device, repeats, warmup)
        rollouts = statistics.mean(log["rollouts"] for log in logs)
        learned = statistics.mean(log["learned_rollouts"] for log in logs)
        decoded = statistics.mean(log["decoded_tokens"] for log in logs)
        row = {
            "config": name,
            "mle_ms": 1000 * mle_time,
            "searnn_ms": 1000 * searnn_time,
            "ratio": searnn_time / mle_time,
            "rollouts_per_update": rollouts,
            "learned_rollouts_per_update": learned,
            "rollouts_per_s": rollouts / searnn_time,
            "decoded_tokens_per_update": decoded,
            # how far learned roll-outs run: a model that stops at once makes the search look cheap
            "decoded_tokens_per_learned_rollout": (decoded - rollin_steps(sample)) / max(learned, 1),
            "decoded_tokens_per_s": decoded / searnn_time,
            "sentences": int(sample["target"].size(0)),
            "target_tokens": int(sample["ntokens"]),  # EOS included, padding not
            "weights": config["weights"],
        }
        if config.get("naive"):
            naive_time, batched_time = time_naive(model, searnn, sample, device, max(1, repeats // 2))
            row["naive_search_ms"] = 1000 * naive_time
            row["batched_search_ms"] = 1000 * batched_time
            row["engine_speedup"] = naive_time / batched_time
        if with_memory:
            row["mle_peak_mb"], row["searnn_peak_mb"] = peak_memory(name, quick, device, extra, mt_data, mt_checkpoint)
            row["memory_ratio"] = row["searnn_peak_mb"] / max(row["mle_peak_mb"], 1e-6)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row):
    text = (
        f"{row['config']:<18} MLE {row['mle_ms']:8.1f} ms | SEARNN {row['searnn_ms']:8.1f} ms | "
        f"ratio {row['ratio']:5.2f}x | {row['rollouts_per_update']:7.0f} roll-outs "
        f"({row['learned_rollouts_per_update']:.0f} learned), {row['rollouts_per_s']:8.0f}/s, "
        f"{row['decoded_tokens_per_s']:8.0f} decoded tokens/s ({row['decoded_tokens_per_learned_rollout']:.1f} per learned roll-out)"
    )
    if "engine_speedup" in row:
        text += f" | naive {row['naive_search_ms']:.1f} ms vs batched {row['batched_search_ms']:.1f} ms: {row['engine_speedup']:.1f}x"
    if "memory_ratio" in row:
        text += f" | peak MB MLE {row['mle_peak_mb']:.1f} SEARNN {row['searnn_peak_mb']:.1f} ({row['memory_ratio']:.2f}x)"
    return text + f" | batch {row['sentences']} sentences, {row['target_tokens']} target tokens; weights {row['weights']}"


def machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=0, help="timed updates (default 7, quick 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--searnn-flags", default="", help="extra criterion flags for every configuration, e.g. '--rollout-chunk-size 16'")
    parser.add_argument("--mt-data", default=MT_DATA,
                        help="binarised Multi30k of preprocessing/mt.py for 5-mt-multi30k (default: $SEARNN_MT_DATA, "
                             "else runs/mt/data); absent, that configuration is skipped")
    parser.add_argument("--mt-checkpoint", help="5-mt-multi30k starts from this trained MLE checkpoint's weights "
                                                "(e.g. examples/mt's baseline checkpoint_best.pt) instead of fitting to the batch")
    parser.add_argument("--memory-probe", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mt_checkpoint and not os.path.isfile(args.mt_checkpoint):
        parser.error(f"--mt-checkpoint {args.mt_checkpoint}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = args.searnn_flags.split()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.quick, args.device, extra, args.mt_data, args.mt_checkpoint)
        return
    repeats = args.repeats or (2 if args.quick else 7)
    print(f"device: {machine(args.device)}; torch {torch.__version__}", flush=True)
    rows = run(args.configs, args.quick, args.device, repeats, 1 if args.quick else 2, not args.no_memory, extra,
               args.mt_data, args.mt_checkpoint)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": machine(args.device), "quick": args.quick, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
