"""What the diagnostics of a trained checkpoint (exposure_gap.py, reference_rollout_gap.py) share:
fairseq-train's flags read with the checkpoint's architecture, the model and task they make, and
the batches of one data split in the split's order."""

import argparse
import itertools
import sys
from typing import Iterator, Optional, Sequence, Tuple


def load(argv: Optional[Sequence[str]] = None, batches: int = 0) -> Tuple[argparse.Namespace, object, object]:
    """(args, task, model) from fairseq-train's flags plus ``--path CHECKPOINT``, ``--subset`` (the
    split loaded, default valid) and ``--batches`` (how many of its batches, default ``batches``,
    0: all)."""
    from fairseq import checkpoint_utils, options, tasks, utils

    parser = options.get_training_parser()
    parser.add_argument("--path", required=True, help="the model's checkpoint")
    parser.add_argument("--subset", default="valid", help="the data split read")
    parser.add_argument("--batches", type=int, default=batches, help="only its first N batches (0: all)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--path" not in argv:
        parser.error("--path CHECKPOINT is required")
    state = checkpoint_utils.load_checkpoint_to_cpu(argv[argv.index("--path") + 1])
    # the architecture is the checkpoint's: fairseq-train's parser needs it to know the model's flags
    arch = state["cfg"]["model"]._name if state.get("cfg") is not None else state["args"].arch
    args = options.parse_args_and_arch(parser, [*argv, "--arch", arch])
    utils.import_user_module(args)
    task = tasks.setup_task(args)
    task.load_dataset(args.subset)
    [model], _ = checkpoint_utils.load_model_ensemble([args.path], task=task)
    return args, task, model


def batches(args: argparse.Namespace, task) -> Iterator[dict]:
    """The split's batches in order (``--batch-size`` sentences, default 128), the first ``--batches``."""
    iterator = task.get_batch_iterator(dataset=task.dataset(args.subset), max_sentences=args.batch_size or 128,
                                       seed=args.seed, num_workers=0).next_epoch_itr(shuffle=False)
    return itertools.islice(iterator, args.batches or None)
