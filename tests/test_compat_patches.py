"""The fairseq fixes the plugin applies on import: on by default, all off under
SEARNN_FAIRSEQ_NO_PATCHES=1, each left out (with one warning) where fairseq's function differs.

Importing the plugin patches fairseq once per process, so each case imports it in a fresh
interpreter and reports what it finds as JSON.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_FIXES = ["checkpoint-safe-globals", "keep-last-batch", "early-stop-across-resume", "warm-start-clock",
             "stop-a-finished-run", "stop-loader-thread-at-exit"]

# What a fresh interpreter finds after `import searnn_fairseq` (with fairseq-train's module loaded
# first, as under fairseq-train): whether each fairseq function the plugin may patch is still the
# one fairseq defined, and the mark of the fix that replaced it.
PROBE = """
import argparse, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s|%(name)s|%(message)s")
import torch
import fairseq_cli.train
from fairseq import checkpoint_utils
from fairseq.data import data_utils, iterators
from fairseq.trainer import Trainer
{before}

def functions():
    return {{
        "batch_by_size": data_utils.batch_by_size,
        "save_checkpoint": Trainer.save_checkpoint,
        "load_checkpoint": Trainer.load_checkpoint,
        "train": fairseq_cli.train.train,
        "load_checkpoint_to_cpu": checkpoint_utils.load_checkpoint_to_cpu,
        "load_model_ensemble": checkpoint_utils.load_model_ensemble,
        "consumer_run": iterators.BackgroundConsumer.run,
    }}

originals = functions()
import searnn_fairseq  # noqa: F401
print(json.dumps({{
    "original": {{name: f is originals[name] for name, f in functions().items()}},
    "marks": {{name: getattr(f, "searnn_fix", None) for name, f in functions().items()}},
    "safe_namespace": argparse.Namespace in torch.serialization.get_safe_globals(),
}}))
"""


def probe(no_patches: bool, before: str = "") -> tuple:
    """(what the probe found, the plugin's log lines as (level, message))."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SEARNN_FAIRSEQ_NO_PATCHES", None)
    if no_patches:
        env["SEARNN_FAIRSEQ_NO_PATCHES"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=textwrap.dedent(before))], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line.split("|", 2) for line in out.stderr.splitlines() if line.count("|") >= 2]
    plugin = [(level, message) for level, name, message in lines if name.startswith("searnn_fairseq")]
    return json.loads(out.stdout.strip().splitlines()[-1]), plugin


def test_with_no_patches_set_fairseq_keeps_its_own_functions_and_one_line_says_so():
    found, log = probe(no_patches=True)
    assert all(found["original"].values()), found["original"]
    assert found["marks"] == {name: None for name in found["marks"]}
    assert not found["safe_namespace"]
    assert len(log) == 1 and log[0][0] == "INFO" and "SEARNN_FAIRSEQ_NO_PATCHES" in log[0][1], log
    assert "unpatched" in log[0][1]


def test_by_default_every_fix_is_applied_and_one_line_lists_them():
    found, log = probe(no_patches=False)
    assert found["marks"] == {"batch_by_size": "keep-last-batch", "save_checkpoint": "early-stop-across-resume",
                              "load_checkpoint": "warm-start-clock", "train": "stop-a-finished-run",
                              "load_checkpoint_to_cpu": None, "load_model_ensemble": None,
                              "consumer_run": "stop-loader-thread-at-exit"}
    assert found["original"] == {"batch_by_size": False, "save_checkpoint": False, "load_checkpoint": False,
                                 "train": False, "load_checkpoint_to_cpu": True, "load_model_ensemble": True,
                                 "consumer_run": False}
    assert found["safe_namespace"]
    assert len(log) == 1 and log[0][0] == "INFO", log
    assert "fixes applied: " + ", ".join(ALL_FIXES) in log[0][1]


def test_a_fix_whose_fairseq_function_has_another_signature_is_left_out_with_one_warning():
    # a fairseq whose Trainer.load_checkpoint takes other parameters: the two fixes that replace it
    # leave it (and the early-stop fix its companion save_checkpoint) alone; the others still apply
    found, log = probe(no_patches=False, before="""
        def load_checkpoint(self, filename, reset_optimizer=False):
            return None
        Trainer.load_checkpoint = load_checkpoint
    """)
    assert found["marks"]["load_checkpoint"] is None and found["marks"]["save_checkpoint"] is None
    assert found["original"]["save_checkpoint"] and found["original"]["load_checkpoint"]
    assert found["marks"]["batch_by_size"] == "keep-last-batch" and found["marks"]["train"] == "stop-a-finished-run"
    warnings = [message for level, message in log if level == "WARNING"]
    assert len(warnings) == 2, log
    for fix, warning in zip(("early-stop-across-resume", "warm-start-clock"), warnings):
        assert f"'{fix}' not applied" in warning and "Trainer.load_checkpoint takes" in warning
    (info,) = [message for level, message in log if level == "INFO"]
    assert "fixes applied: checkpoint-safe-globals, keep-last-batch, stop-a-finished-run, stop-loader-thread-at-exit;" in info
    assert "skipped: early-stop-across-resume, warm-start-clock" in info


def test_applying_a_fix_to_a_function_of_another_signature_warns_once_and_leaves_it(monkeypatch, caplog):
    from fairseq.data import data_utils

    from searnn_fairseq import compat

    def batch_by_size(indices, max_tokens):  # not the function the fix forwards its arguments to
        return [indices]

    monkeypatch.setattr(data_utils, "batch_by_size", batch_by_size)
    with caplog.at_level(logging.INFO, logger="searnn_fairseq.compat"):
        assert compat.keep_last_batch() == compat.SKIPPED
    assert data_utils.batch_by_size is batch_by_size
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'keep-last-batch' not applied" in warnings[0].getMessage()
    assert "fairseq.data.data_utils.batch_by_size takes ('indices', 'max_tokens')" in warnings[0].getMessage()


# fairseq's buffering thread (what --num-workers 0 trains with) still collating with torch when the
# process ends: a run stopped in mid-epoch.
EXIT_WHILE_BUFFERING = """
import sys
import torch
if sys.argv[1] == "plugin":
    import searnn_fairseq  # noqa: F401
from fairseq.data import iterators


class Batches:
    def __len__(self):
        return 10 ** 9

    def __iter__(self):
        while True:
            yield torch.randn(300, 300).matmul(torch.randn(300, 300)).sum()


next(iterators.BufferedIterator(2, Batches()))
"""


def exit_status_while_buffering(plugin: bool) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SEARNN_FAIRSEQ_NO_PATCHES", None)
    return subprocess.run([sys.executable, "-c", EXIT_WHILE_BUFFERING, "plugin" if plugin else "bare"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600).returncode


def test_a_process_ending_while_the_loader_thread_collates_exits_cleanly_with_the_plugin():
    # without the fix Python 3.11 ends the daemon thread inside torch's C++ code and the process
    # aborts (SIGABRT); the case without the plugin shows the probe reaches that state
    assert exit_status_while_buffering(plugin=True) == 0
    assert exit_status_while_buffering(plugin=False) != 0
