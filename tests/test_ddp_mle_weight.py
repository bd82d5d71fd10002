"""Two gloo ranks with --mle-weight and a learned roll-in: each update runs two
gradient-carrying forwards (the roll-in trajectory and the teacher-forced ground
truth), and the ranks must still end with identical parameters."""

import os
import subprocess
import sys

import torch

import test_cli as cli
from test_cli import data_bin  # noqa: F401  (the tiny reversal task, built once per module)


def test_two_process_training_with_mle_weight_and_learned_rollin_keeps_ranks_identical(data_bin, tmp_path):  # noqa: F811
    script = tmp_path / "worker.py"
    script.write_text(cli.WORKER)
    port = cli.free_port()
    procs = []
    for rank in range(2):
        args = [sys.executable, str(script), str(rank), str(tmp_path), data_bin, "--user-dir", "searnn_fairseq",
                "--task", "translation", *cli.ARCH_FLAGS["searnn_gru"], *cli.SEARNN,
                "--rollin", "learned", "--mle-weight", "1", "--optimizer", "adam", "--lr", "0.005",
                "--batch-size", "8", "--max-update", "3", "--save-dir", str(tmp_path / f"ckpt{rank}"), "--cpu",
                "--seed", "3", "--num-workers", "0", "--distributed-world-size", "2", "--distributed-backend", "gloo",
                "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
                "--ddp-backend", "legacy_ddp", "--distributed-rank", str(rank), "--disable-validation",
                "--log-format", "simple", "--log-interval", "1"]
        procs.append(subprocess.Popen(args, cwd=cli.REPO, env=cli.clean_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "mle_weight=1.0" in outputs[0] or "'mle_weight': 1.0" in outputs[0], "the option reached the criterion"
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    last = torch.load(os.path.join(tmp_path / "ckpt0", "checkpoint_last.pt"), weights_only=False)  # rank 0 saves
    assert last["optimizer_history"][-1]["num_updates"] == 3
    assert all(torch.equal(last["model"][k].float(), a[k].float()) for k in a)
