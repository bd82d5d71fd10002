"""End to end through the real command lines: fairseq-preprocess, fairseq-train
with our criteria on lstm, transformer and searnn_gru, fairseq-generate on the
checkpoint (no environment variable set), resume, exact resume, two-process
training."""

import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

ARCH_FLAGS = {
    "lstm": ["--arch", "lstm", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-hidden-size", "16",
             "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16"],
    "transformer": ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
                    "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
                    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"],
    "searnn_gru": ["--arch", "searnn_gru", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
                   "--encoder-hidden-size", "16", "--decoder-hidden-size", "16"],
}
SEARNN = ["--criterion", "searnn_llcas", "--rollin", "learned", "--rollout", "mixed", "--cost", "hamming",
          "--token-sampling", "uniform", "--sampled-tokens", "3", "--sampled-cells", "2"]


def clean_env():
    """The user's environment, without anything that would bypass the safe loader."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(args, cwd=REPO, **kwargs):
    out = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    """A tiny reversal task: the target is the source reversed."""
    root = tmp_path_factory.mktemp("reverse")
    rng = random.Random(0)
    for split, count in (("train", 96), ("valid", 16), ("test", 16)):
        sources = [" ".join(rng.choice("abcdef") for _ in range(rng.randint(1, 6))) for _ in range(count)]
        (root / f"{split}.src").write_text("\n".join(sources) + "\n")
        (root / f"{split}.tgt").write_text("\n".join(" ".join(reversed(s.split())) for s in sources) + "\n")
    run([f"{BIN}/fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
         "--trainpref", str(root / "train"), "--validpref", str(root / "valid"), "--testpref", str(root / "test"),
         "--destdir", str(root / "bin"), "--workers", "1"])
    return str(root / "bin")


def train(data, save_dir, arch, max_update, extra=()):
    return run([f"{BIN}/fairseq-train", data, "--user-dir", "searnn_fairseq", "--task", "translation", *ARCH_FLAGS[arch],
                *SEARNN, "--optimizer", "adam", "--lr", "0.005", "--batch-size", "16", "--max-update", str(max_update),
                "--save-dir", save_dir, "--cpu", "--seed", "3", "--log-format", "simple", "--log-interval", "1",
                "--best-checkpoint-metric", "cost", "--num-workers", "0", "--dropout", "0.1", *extra])


@pytest.mark.parametrize("arch", ["lstm", "transformer", "searnn_gru"])
def test_train_generate_and_resume_from_the_command_line(data_bin, tmp_path, arch):
    save = str(tmp_path / "ckpt")
    log = train(data_bin, save, arch, 4)
    assert "rollouts" in log and "valid" in log and "cost" in log
    assert os.path.exists(os.path.join(save, "checkpoint_best.pt"))

    generated = run([f"{BIN}/fairseq-generate", data_bin, "--user-dir", "searnn_fairseq", "--path",
                     os.path.join(save, "checkpoint_best.pt"), "--beam", "1", "--batch-size", "8", "--cpu",
                     "--gen-subset", "test"])
    assert "Generate test with beam=1" in generated
    assert sum(line.startswith("H-") for line in generated.splitlines()) == 16

    resumed = train(data_bin, save, arch, 6)
    assert "Loaded checkpoint" in resumed
    assert "num_updates 6" in resumed or "num_updates\": \"6" in resumed or "| 6 |" in resumed or "updates 6" in resumed


def load_params(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k: v.float() for k, v in state.items()}


def test_spelling_correction_task_trains_on_new_noise_each_epoch_and_generates_with_translation(data_bin, tmp_path):
    save = str(tmp_path / "ckpt")
    out = train(data_bin, save, "searnn_gru", max_update=12,  # 96 pairs in batches of 16: two epochs
                extra=["--task", "spelling_correction", "--train-noise", "0.3", "--noise-seed", "5"])
    assert "the corruption of epoch 1 (p = 0.3, seed 5)" in out and "the corruption of epoch 2 (p = 0.3, seed 5)" in out
    assert "the corruption of epoch 3" not in out
    out = run([f"{BIN}/fairseq-generate", data_bin, "--user-dir", "searnn_fairseq", "--task", "translation",
               "--path", f"{save}/checkpoint_best.pt", "--gen-subset", "test", "--beam", "1", "--cpu",
               "--scoring", "edit"])
    assert "EDIT = " in out


def test_resume_reproduces_an_uninterrupted_run(data_bin, tmp_path):
    straight = str(tmp_path / "straight")
    train(data_bin, straight, "searnn_gru", 9, ["--no-epoch-checkpoints"])
    split = str(tmp_path / "split")
    train(data_bin, split, "searnn_gru", 4, ["--no-epoch-checkpoints"])
    train(data_bin, split, "searnn_gru", 9, ["--no-epoch-checkpoints"])
    a = load_params(os.path.join(straight, "checkpoint_last.pt"))
    b = load_params(os.path.join(split, "checkpoint_last.pt"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


WORKER = r"""
import sys, torch
from fairseq import checkpoint_utils
from fairseq_cli import train

rank, out = int(sys.argv[1]), sys.argv[2]
save = checkpoint_utils.save_checkpoint

def save_and_dump(cfg, trainer, epoch_itr, val_loss):
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    return save(cfg, trainer, epoch_itr, val_loss)

checkpoint_utils.save_checkpoint = save_and_dump
sys.argv = ["fairseq-train"] + sys.argv[3:]
train.cli_main()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_keeps_ranks_identical(data_bin, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(2):
        args = [sys.executable, str(script), str(rank), str(tmp_path), data_bin, "--user-dir", "searnn_fairseq",
                "--task", "translation", *ARCH_FLAGS["searnn_gru"], *SEARNN, "--optimizer", "adam", "--lr", "0.005",
                "--batch-size", "8", "--max-update", "3", "--save-dir", str(tmp_path / f"ckpt{rank}"), "--cpu",
                "--seed", "3", "--num-workers", "0", "--distributed-world-size", "2", "--distributed-backend", "gloo",
                "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
                "--ddp-backend", "legacy_ddp", "--distributed-rank", str(rank), "--disable-validation"]
        procs.append(subprocess.Popen(args, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    fresh = torch.load(os.path.join(tmp_path / "ckpt0", "checkpoint_last.pt"), weights_only=False)
    assert fresh["optimizer_history"][-1]["num_updates"] == 3


SCRIPTED_VALIDATION = r"""
import sys
from fairseq_cli import train

# Validation cost by epoch: best at 2, then worse: patience 3 stops after epoch 5.
costs = {1: 0.5, 2: 0.4, 3: 0.45, 4: 0.46, 5: 0.47, 6: 0.48, 7: 0.49, 8: 0.5}
train.validate = lambda cfg, trainer, task, epoch_itr, subsets: [costs[epoch_itr.epoch]]
sys.argv = ["fairseq-train"] + sys.argv[1:]
train.cli_main()
"""


def train_with_scripted_validation(data_bin, tmp_path, save_dir, *limits):
    """Train under --patience 3 until a limit; returns (last finished epoch, best, iterator state)."""
    script = tmp_path / "scripted.py"
    script.write_text(SCRIPTED_VALIDATION)
    run([sys.executable, str(script), data_bin, "--user-dir", "searnn_fairseq", "--task", "translation",
         *ARCH_FLAGS["searnn_gru"], "--criterion", "searnn_mle", "--optimizer", "adam", "--lr", "0.005",
         "--batch-size", "32", *limits, "--patience", "3", "--save-dir", save_dir,
         "--cpu", "--num-workers", "0", "--no-epoch-checkpoints"])
    extra = torch.load(os.path.join(save_dir, "checkpoint_last.pt"), weights_only=False)["extra_state"]
    iterator = extra["train_iterator"]
    return iterator["epoch"] - 1, extra["best"], iterator["iterations_in_epoch"]  # a finished epoch points at the next


def test_patience_counts_across_a_resume(data_bin, tmp_path):
    def train_until(save_dir, max_epoch):
        return train_with_scripted_validation(data_bin, tmp_path, save_dir, "--max-epoch", str(max_epoch))

    assert train_until(str(tmp_path / "straight"), 8) == (5, 0.4, 0)
    split = str(tmp_path / "split")
    assert train_until(split, 3) == (3, 0.4, 0)  # interrupted one epoch after the best, resumed with the same rule
    assert train_until(split, 8) == (5, 0.4, 0)  # fairseq alone trains on to epoch 7


def test_a_run_its_stopping_rule_finished_does_not_train_on_when_resumed(data_bin, tmp_path):
    save_dir = str(tmp_path / "finished")
    assert train_with_scripted_validation(data_bin, tmp_path, save_dir, "--max-epoch", "8") == (5, 0.4, 0)
    # Resumed under another limit: fairseq alone trains epoch 6 before patience is checked again.
    assert train_with_scripted_validation(data_bin, tmp_path, save_dir, "--max-epoch", "9") == (5, 0.4, 0)


def test_a_warm_start_with_reset_meters_does_not_count_the_source_runs_training_time(data_bin, tmp_path):
    source = str(tmp_path / "source")
    train(data_bin, source, "searnn_gru", 2)
    checkpoint = os.path.join(source, "checkpoint_last.pt")
    state = torch.load(checkpoint, weights_only=False)
    state["extra_state"]["previous_training_time"] = 10 * 3600.0  # a source run that trained 10 hours
    torch.save(state, checkpoint)
    warm = str(tmp_path / "warm")
    # fairseq alone stops after the first update: 10 h > --stop-time-hours 1.
    train(data_bin, warm, "searnn_gru", 12, extra=["--restore-file", checkpoint, "--reset-optimizer",
                                                  "--reset-dataloader", "--reset-meters", "--stop-time-hours", "1"])
    extra = torch.load(os.path.join(warm, "checkpoint_last.pt"), weights_only=False)["extra_state"]
    assert extra["train_iterator"]["epoch"] == 3  # 96 sentences in batches of 16: update 12 ends epoch 2
    assert extra["previous_training_time"] < 3600


def test_the_validation_a_mid_epoch_stop_forces_does_not_count_for_patience(data_bin, tmp_path):
    # 96 sentences in batches of 32: 3 updates per epoch, so update 10 is the first of epoch 4.
    # The stop validates epoch 4 there (0.46, not better than 0.4): counted, the resumed run
    # would stop at the end of epoch 4 instead of 5 like the uninterrupted one.
    save_dir = str(tmp_path / "capped")
    assert train_with_scripted_validation(data_bin, tmp_path, save_dir, "--max-epoch", "8", "--max-update", "10") == (3, 0.4, 1)
    assert train_with_scripted_validation(data_bin, tmp_path, save_dir, "--max-epoch", "8") == (5, 0.4, 0)


def test_only_a_checkpoint_saved_off_schedule_in_mid_epoch_was_validated_by_a_stop():
    from searnn_fairseq import compat

    mid_epoch = {"train_iterator": {"epoch": 4, "iterations_in_epoch": 1}}
    assert compat.validated_by_a_stop(mid_epoch, num_updates=10)
    assert not compat.validated_by_a_stop({"train_iterator": {"epoch": 5, "iterations_in_epoch": 0}}, num_updates=12)
    assert not compat.validated_by_a_stop(mid_epoch, num_updates=10, save_interval_updates=5)
    assert not compat.validated_by_a_stop(mid_epoch, num_updates=10, validate_interval_updates=2)
    assert compat.validated_by_a_stop(mid_epoch, num_updates=10, save_interval_updates=4)


def test_a_checkpoint_saved_without_the_early_stop_state_restores_its_best_value():
    from fairseq_cli import train

    from searnn_fairseq import compat

    function = train.should_stop_early
    try:
        compat.restore_early_stop({"best": 0.25, "val_loss": 0.3})
        assert (function.best, function.num_runs) == (0.25, 0)
        compat.restore_early_stop({"best": 0.25, compat.EARLY_STOP_KEY: {"best": 0.2, "num_runs": 2}})
        assert (function.best, function.num_runs) == (0.2, 2)
        assert compat.early_stop_state() == {"best": 0.2, "num_runs": 2}
        assert not compat.out_of_patience(3) and compat.out_of_patience(2)
        assert not compat.out_of_patience(0)  # --patience 0 (the default) never stops early
        compat.restore_early_stop({compat.EARLY_STOP_KEY: {"best": 0.2, "num_runs": 2}}, validated_by_stop=True)
        assert (function.best, function.num_runs) == (0.2, 1)  # the stop's validation is not counted
        compat.restore_early_stop({compat.EARLY_STOP_KEY: {"best": 0.2, "num_runs": 0}}, validated_by_stop=True)
        assert (function.best, function.num_runs) == (0.2, 0)  # ... nor uncounted when it found the best
    finally:
        for name in ("best", "num_runs"):
            if hasattr(function, name):
                delattr(function, name)


def test_no_batch_is_dropped_when_the_dataset_size_is_not_a_multiple_of_eight():
    import numpy as np
    from fairseq.data import data_utils

    import searnn_fairseq  # noqa: F401

    indices = np.arange(13)
    for kwargs in ({"max_sentences": 8}, {"max_tokens": 1000, "max_sentences": 64}):
        batches = data_utils.batch_by_size(indices, lambda i: 5, required_batch_size_multiple=8, **kwargs)
        assert sorted(np.concatenate(batches).tolist()) == list(range(13))


def test_a_run_stopped_by_the_time_budget_is_resumed_by_the_next_invocation_not_recorded(data_bin, tmp_path,
                                                                                         monkeypatch):
    sys.path.insert(0, REPO)
    from examples import runner

    monkeypatch.setattr(runner, "MIN_BUDGET_HOURS", 0.0)

    run_ = runner.Run("LLCAS", 3, SEARNN)
    experiment = runner.Experiment(
        task="t", data=data_bin, work_dir=str(tmp_path), scoring="hamming", results=str(tmp_path / "t.jsonl"),
        common=["--task", "translation", *ARCH_FLAGS["searnn_gru"], "--optimizer", "adam", "--lr", "0.005",
                "--batch-size", "16", "--max-epoch", "2", "--log-interval", "1"],
        budget_hours=1, snapshots=str(tmp_path / "snapshots"))
    # half a second left: fairseq's stop-time check comes after each update, so it stops after the first
    experiment.budget_end = time.time() + 0.5
    quiet = dict(threads=1, log=lambda *_: None)
    save_dir = tmp_path / run_.name
    assert runner.run_one(experiment, run_, **quiet) is None
    assert not (tmp_path / "t.jsonl").exists() and not (save_dir / runner.FINISHED).exists()
    extra = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)["extra_state"]
    assert (extra["train_iterator"]["epoch"], extra["train_iterator"]["iterations_in_epoch"]) == (1, 1)
    snapshot = tmp_path / "snapshots" / "t" / "t" / run_.name  # taken at the stop, without --snapshot
    assert sorted(os.listdir(snapshot)) == ["checkpoint_best.pt", "checkpoint_last.pt", "train.log"]

    row = runner.run_one(replace(experiment, budget_hours=0), run_, **quiet)
    assert row["updates"] == 12  # 96 sentences in batches of 16, 2 epochs: the first invocation's update counted once
    assert [p["updates"] for p in row["curve"]] == [1, 6, 12]
    assert "--stop-time-hours" not in row["train_command"]  # the budget's stop is not part of the run
    assert runner.recorded(experiment)[run_.name]["test_error"] == row["test_error"]
    assert not snapshot.exists()  # recorded: nothing left to resume
