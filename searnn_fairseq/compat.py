"""Fixes for running fairseq 0.12 (fairseq-fixed) on current torch, applied on import.

1. Checkpoints. torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses
the Python objects fairseq stores next to the weights (an argparse.Namespace,
omegaconf configs, enums from the dataclass configs), so ``fairseq-generate``
and resuming ``fairseq-train`` fail with "Unsupported global". Importing the
plugin (``--user-dir searnn_fairseq``) registers those classes as safe globals:
no environment variable, and checkpoints stay loaded through the safe loader.

2. The last batch. ``fairseq.data.data_utils.batch_by_size`` drops the last
batch when its size is not a multiple of ``--required-batch-size-multiple``
(default 8; facebookresearch/fairseq#5036): fairseq-generate silently skips up
to 7 test sentences, and training never sees the same few examples. Batches
are consecutive runs of the ordered indices, so the dropped batch is the tail
of ``indices``; we put it back.

3. Early stopping across a resume. fairseq-train keeps ``--patience``'s state
(best validation value, validations since it) on the function
``fairseq_cli.train.should_stop_early``, which a new process starts empty: a
resumed run takes its first validation as the best, whatever the checkpoint's
best was, and trains ``patience`` more epochs from there. A run interrupted
once or more then trains longer than the same run uninterrupted, which breaks
any comparison made under one stopping rule (facebookresearch/fairseq#3531,
closed unfixed). We save that state in each
checkpoint's ``extra_state`` and restore it on load, under the same condition
fairseq restores its best-checkpoint value (no ``--reset-optimizer`` or
``--reset-meters``). A checkpoint saved without it restores the best value
with no validations counted since.

4. The validation a stop forces. A run stopped in mid-epoch by ``--stop-time-hours``
(or ``--max-update``) validates once more before it saves, and ``--patience``
counts that validation as one of its epochs: resumed under a higher cap, the
run stops one epoch earlier than the same run uninterrupted. On restoring a
checkpoint saved that way, the forced validation is not counted (its value
still counts for the best, as fairseq keeps the checkpoint it picked).

5. A run its stopping rule already finished. fairseq checks ``--patience`` only after a
validation, so such a run, resumed (say under a higher ``--stop-time-hours``), trains one
more epoch before it stops again. When the restored state has already run out of patience,
fairseq-train now stops before training.

6. The clock of a warm start. fairseq restores the checkpoint's cumulative training time
even under ``--reset-meters``, so a run warm-started from another run's checkpoint
(``--restore-file ... --reset-optimizer --reset-dataloader --reset-meters``) counts the
source run's hours against its own ``--stop-time-hours``. With ``--reset-meters`` the
clock now starts at zero, like the other meters.

7. The data loader's thread at exit. With ``--num-workers 0`` fairseq fills its batch buffer
(``--data-buffer-size``) from a daemon thread that collates batches with torch. A run that stops in
mid-epoch (``--max-update``, ``--stop-time-hours``) exits while that thread may be inside torch's
C++ code, and Python 3.11 ending a daemon thread there aborts the process ("terminate called
without an active exception", exit status 134) after the checkpoint is saved: scripts see a failed
run. At exit the thread is now told to stop after its current batch and waited for.

Each fix replaces a fairseq function only when that function takes the parameters the
replacement was written for (``inspect.signature``): a fairseq whose function differs keeps its
own, and one warning names the fix left out. ``apply`` logs one line naming the fixes applied.
``SEARNN_FAIRSEQ_NO_PATCHES=1`` turns them all off: fairseq runs unchanged, with the bugs above
(and torch >= 2.6 refuses its checkpoints unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set).
"""

import argparse
import atexit
import collections
import enum
import functools
import inspect
import logging
import os
import queue
import sys
import threading
import time
import typing
import weakref

import torch

logger = logging.getLogger(__name__)

NO_PATCHES_VARIABLE = "SEARNN_FAIRSEQ_NO_PATCHES"

# What a fix reports: it replaced fairseq's function (or had already), fairseq's function differs
# from the one it was written for, the module it fixes is not loaded in this process, or the
# installed torch does not have the problem.
APPLIED, SKIPPED, NOT_LOADED, NOT_NEEDED = "applied", "skipped", "not loaded", "not needed"


def _fairseq_enums():
    """Every Enum class defined in fairseq's config modules."""
    from fairseq.dataclass import constants

    found = []
    for value in vars(constants).values():
        if isinstance(value, type) and issubclass(value, enum.Enum):
            found.append(value)
    return found


def checkpoint_globals():
    import omegaconf
    from omegaconf import nodes
    from omegaconf.base import ContainerMetadata, Metadata

    node_types = [
        value
        for value in vars(nodes).values()
        if isinstance(value, type) and issubclass(value, nodes.Node)
    ]
    return [
        argparse.Namespace,
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        ContainerMetadata,
        Metadata,
        typing.Any,
        dict,
        list,
        int,
        float,
        bool,
        str,
        collections.defaultdict,
        collections.OrderedDict,
        *node_types,
        *_fairseq_enums(),
        *_numpy_globals(),
    ]


def _numpy_globals():
    """What pickled numpy arrays and scalars need: fairseq's translation task with ``--eval-bleu``
    keeps sacreBLEU's n-gram counts as numpy arrays in the metrics it saves in every checkpoint."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 renamed numpy.core
    dtypes = [type(numpy.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return [numpy.ndarray, numpy.dtype, core.multiarray._reconstruct, core.multiarray.scalar, *dtypes]


def patches_disabled() -> bool:
    """Whether ``SEARNN_FAIRSEQ_NO_PATCHES`` asks for fairseq as it is."""
    return os.environ.get(NO_PATCHES_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def parameter_names(function) -> typing.Optional[tuple]:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # not introspectable: treated as a different function
        return None


def fits(fix: str, targets: typing.Sequence[tuple]) -> bool:
    """Whether every (name, function, expected parameter names) target takes exactly the expected
    parameters; if not, one warning names the fix and what differs, and the fix is left out: a
    replacement that forwards the wrong arguments would break fairseq instead of fixing it."""
    differing = [(name, parameter_names(function), tuple(expected)) for name, function, expected in targets
                 if parameter_names(function) != tuple(expected)]
    if differing:
        logger.warning("searnn_fairseq: fairseq fix %r not applied: %s; this fairseq differs from the "
                       "version the fix was written for", fix,
                       "; ".join(f"{name} takes {found}, the fix expects {expected}"
                                 for name, found, expected in differing))
    return not differing


def already_applied(function, fix: str) -> bool:
    """Whether ``fix`` is among the replacements wrapped around ``function`` (importing the plugin twice)."""
    while function is not None:
        if getattr(function, "searnn_fix", None) == fix:
            return True
        function = getattr(function, "__wrapped__", None)
    return False


def replacing(original, fix: str):
    """Decorator: the replacement reads as ``original`` (name, signature) and is marked with its fix."""
    def mark(replacement):
        replacement = functools.wraps(original)(replacement)
        replacement.searnn_fix = fix
        return replacement

    return mark


SAFE_GLOBALS = "checkpoint-safe-globals"


def register_safe_globals() -> str:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 loads everything anyway
        return NOT_NEEDED
    add(checkpoint_globals())
    return APPLIED


KEEP_LAST_BATCH = "keep-last-batch"
BATCH_BY_SIZE_PARAMETERS = ("indices", "num_tokens_fn", "num_tokens_vec", "max_tokens", "max_sentences",
                            "required_batch_size_multiple", "fixed_shapes")


def keep_last_batch() -> str:
    from fairseq.data import data_utils

    original = data_utils.batch_by_size
    if already_applied(original, KEEP_LAST_BATCH):
        return APPLIED
    if not fits(KEEP_LAST_BATCH, [("fairseq.data.data_utils.batch_by_size", original, BATCH_BY_SIZE_PARAMETERS)]):
        return SKIPPED

    @replacing(original, KEEP_LAST_BATCH)
    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None, max_sentences=None,
                      required_batch_size_multiple=1, fixed_shapes=None):
        batches = original(indices, num_tokens_fn, num_tokens_vec, max_tokens, max_sentences,
                           required_batch_size_multiple, fixed_shapes)
        covered = sum(len(b) for b in batches)
        if fixed_shapes is None and covered < len(indices):
            import numpy as np

            batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    data_utils.batch_by_size = batch_by_size
    return APPLIED


EARLY_STOP_KEY = "searnn_early_stop"


def _early_stop_function():
    """fairseq-train's ``should_stop_early``, if fairseq-train is what runs."""
    train = sys.modules.get("fairseq_cli.train")
    return getattr(train, "should_stop_early", None)


def early_stop_state() -> typing.Optional[dict]:
    function = _early_stop_function()
    if function is None or not hasattr(function, "best"):
        return None
    return {"best": function.best, "num_runs": function.num_runs}


def validated_by_a_stop(extra_state: dict, num_updates: int, save_interval_updates: int = 0,
                        validate_interval_updates: int = 0) -> bool:
    """Whether a checkpoint was saved in mid-epoch off the update schedule, i.e. by a stop whose
    validation was forced (a finished epoch's iterator state points at the next epoch's start)."""
    iterator = extra_state.get("train_iterator") or {}
    if not iterator.get("iterations_in_epoch"):
        return False
    scheduled = [i for i in (save_interval_updates, validate_interval_updates) if i and num_updates % i == 0]
    return not scheduled


def restore_early_stop(extra_state: typing.Optional[dict], validated_by_stop: bool = False) -> None:
    function = _early_stop_function()
    if function is None or not extra_state:
        return
    state = extra_state.get(EARLY_STOP_KEY)
    if state is None and extra_state.get("best") is not None:
        state = {"best": extra_state["best"], "num_runs": 0}
    if state is not None:
        function.best = state["best"]
        function.num_runs = state["num_runs"] - 1 if validated_by_stop and state["num_runs"] > 0 else state["num_runs"]


SAVE_CHECKPOINT_PARAMETERS = ("self", "filename", "extra_state")
LOAD_CHECKPOINT_PARAMETERS = ("self", "filename", "reset_optimizer", "reset_lr_scheduler", "optimizer_overrides",
                              "reset_meters")
EARLY_STOP_ACROSS_RESUME = "early-stop-across-resume"


def keep_early_stop_across_resume() -> str:
    """Fixes 3 and 4: ``--patience``'s state saved in each checkpoint and restored from it, without
    the validation a mid-epoch stop forced."""
    from fairseq.trainer import Trainer

    save, load = Trainer.save_checkpoint, Trainer.load_checkpoint
    if already_applied(save, EARLY_STOP_ACROSS_RESUME):
        return APPLIED
    if not fits(EARLY_STOP_ACROSS_RESUME, [("fairseq.trainer.Trainer.save_checkpoint", save, SAVE_CHECKPOINT_PARAMETERS),
                                           ("fairseq.trainer.Trainer.load_checkpoint", load, LOAD_CHECKPOINT_PARAMETERS)]):
        return SKIPPED

    @replacing(save, EARLY_STOP_ACROSS_RESUME)
    def save_checkpoint(self, filename, extra_state):
        state = early_stop_state()
        if state is not None:
            extra_state = {**extra_state, EARLY_STOP_KEY: state}
        return save(self, filename, extra_state)

    @replacing(load, EARLY_STOP_ACROSS_RESUME)
    def load_checkpoint(self, filename, reset_optimizer=False, reset_lr_scheduler=False, optimizer_overrides=None,
                        reset_meters=False):
        extra_state = load(self, filename, reset_optimizer, reset_lr_scheduler, optimizer_overrides, reset_meters)
        if not reset_optimizer and not reset_meters and extra_state is not None:
            forced = validated_by_a_stop(extra_state, self.get_num_updates(), self.cfg.checkpoint.save_interval_updates,
                                         self.cfg.dataset.validate_interval_updates)
            restore_early_stop(extra_state, validated_by_stop=forced)
        return extra_state

    Trainer.save_checkpoint = save_checkpoint
    Trainer.load_checkpoint = load_checkpoint
    return APPLIED


WARM_START_CLOCK = "warm-start-clock"


def start_a_warm_start_clock_at_zero() -> str:
    """Fix 6: under ``--reset-meters`` the training clock restarts with the other meters."""
    from fairseq.trainer import Trainer

    load = Trainer.load_checkpoint
    if already_applied(load, WARM_START_CLOCK):
        return APPLIED
    if not fits(WARM_START_CLOCK, [("fairseq.trainer.Trainer.load_checkpoint", load, LOAD_CHECKPOINT_PARAMETERS)]):
        return SKIPPED

    @replacing(load, WARM_START_CLOCK)
    def load_checkpoint(self, filename, reset_optimizer=False, reset_lr_scheduler=False, optimizer_overrides=None,
                        reset_meters=False):
        extra_state = load(self, filename, reset_optimizer, reset_lr_scheduler, optimizer_overrides, reset_meters)
        if reset_meters:
            self._previous_training_time = 0
            self._start_time = time.time()
        return extra_state

    Trainer.load_checkpoint = load_checkpoint
    return APPLIED


def out_of_patience(patience: int) -> bool:
    """Whether the restored early-stopping state had already stopped the run under ``patience``."""
    function = _early_stop_function()
    return patience > 0 and getattr(function, "num_runs", 0) >= patience


STOP_A_FINISHED_RUN = "stop-a-finished-run"
TRAIN_PARAMETERS = ("cfg", "trainer", "task", "epoch_itr")


def stop_a_finished_run_before_training() -> str:
    """Fix 5; fairseq-train's loop is only there when fairseq-train runs (not under fairseq-generate)."""
    train_module = sys.modules.get("fairseq_cli.train")
    if train_module is None:
        return NOT_LOADED
    train_one_epoch = train_module.train
    if already_applied(train_one_epoch, STOP_A_FINISHED_RUN):
        return APPLIED
    if not fits(STOP_A_FINISHED_RUN, [("fairseq_cli.train.train", train_one_epoch, TRAIN_PARAMETERS)]):
        return SKIPPED

    @replacing(train_one_epoch, STOP_A_FINISHED_RUN)
    def train(cfg, trainer, task, epoch_itr):
        if out_of_patience(cfg.checkpoint.patience):
            train_module.logger.info(
                f"early stop: the restored run had already gone {cfg.checkpoint.patience} validations "
                f"without improving on {train_module.should_stop_early.best} (--patience)")
            return [train_module.should_stop_early.best], True
        return train_one_epoch(cfg, trainer, task, epoch_itr)

    train_module.train = train
    return APPLIED


STOP_LOADER_THREAD_AT_EXIT = "stop-loader-thread-at-exit"
CONSUMER_PARAMETERS = ("self", "queue", "source", "max_len", "cuda_device")
# Set once, at exit: every buffering thread stops before its next batch.
_exiting = threading.Event()
_running_consumers = weakref.WeakSet()
# Longer than any one batch takes to collate; a thread still running after it is left to Python.
EXIT_WAIT_SECONDS = 30.0


def _until_exit(batches):
    for batch in batches:
        if _exiting.is_set():
            return
        yield batch


def stop_running_consumers(timeout: float = EXIT_WAIT_SECONDS) -> None:
    """Stop each buffering thread after its current batch: emptying its queue unblocks a thread
    waiting to put a batch, and the stopped thread's end-of-data marker is emptied in turn."""
    _exiting.set()
    deadline = time.monotonic() + timeout
    for consumer in list(_running_consumers):
        while consumer.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    consumer._queue.get_nowait()
            except queue.Empty:
                pass
            consumer.join(0.05)


def stop_loader_thread_at_exit() -> str:
    """Fix 7: each buffering thread reads its batches through ``_until_exit``, and ``atexit``
    (which runs before Python ends daemon threads) stops and joins them."""
    from fairseq.data import iterators

    consumer_class = iterators.BackgroundConsumer
    run = consumer_class.run
    if already_applied(run, STOP_LOADER_THREAD_AT_EXIT):
        return APPLIED
    if not fits(STOP_LOADER_THREAD_AT_EXIT, [("fairseq.data.iterators.BackgroundConsumer.__init__",
                                              consumer_class.__init__, CONSUMER_PARAMETERS),
                                             ("fairseq.data.iterators.BackgroundConsumer.run", run, ("self",))]):
        return SKIPPED

    @replacing(run, STOP_LOADER_THREAD_AT_EXIT)
    def run_until_exit(self):
        self._source = _until_exit(self._source)
        _running_consumers.add(self)
        run(self)

    consumer_class.run = run_until_exit
    atexit.register(stop_running_consumers)
    return APPLIED


# Every fix, by the name the log line gives it, in the order they are applied.
FIXES = {
    SAFE_GLOBALS: register_safe_globals,
    KEEP_LAST_BATCH: keep_last_batch,
    EARLY_STOP_ACROSS_RESUME: keep_early_stop_across_resume,
    WARM_START_CLOCK: start_a_warm_start_clock_at_zero,
    STOP_A_FINISHED_RUN: stop_a_finished_run_before_training,
    STOP_LOADER_THREAD_AT_EXIT: stop_loader_thread_at_exit,
}


def apply() -> typing.Dict[str, str]:
    """Apply the fixes (none under ``SEARNN_FAIRSEQ_NO_PATCHES=1``), log one line saying which, and
    return each fix's outcome (APPLIED, SKIPPED, NOT_LOADED or NOT_NEEDED)."""
    if patches_disabled():
        logger.info("searnn_fairseq: %s is set: fairseq left unpatched, none of its fixes applied (%s)",
                    NO_PATCHES_VARIABLE, ", ".join(FIXES))
        return {}
    outcomes = {name: fix() for name, fix in FIXES.items()}
    logger.info("searnn_fairseq: fairseq fixes applied: %s%s (%s=1 turns them off)",
                ", ".join(name for name, outcome in outcomes.items() if outcome == APPLIED) or "none",
                "".join(f"; {outcome}: " + ", ".join(n for n, o in outcomes.items() if o == outcome)
                        for outcome in (SKIPPED, NOT_LOADED, NOT_NEEDED) if outcome in outcomes.values()),
                NO_PATCHES_VARIABLE)
    return outcomes
