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
"""

import argparse
import collections
import enum
import typing

import torch


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
    ]


def register_safe_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add(checkpoint_globals())


def keep_last_batch() -> None:
    from fairseq.data import data_utils

    original = data_utils.batch_by_size
    if getattr(original, "keeps_last_batch", False):
        return

    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None, max_sentences=None,
                      required_batch_size_multiple=1, fixed_shapes=None):
        batches = original(indices, num_tokens_fn, num_tokens_vec, max_tokens, max_sentences,
                           required_batch_size_multiple, fixed_shapes)
        covered = sum(len(b) for b in batches)
        if fixed_shapes is None and covered < len(indices):
            import numpy as np

            batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    batch_by_size.keeps_last_batch = True
    data_utils.batch_by_size = batch_by_size


def apply() -> None:
    register_safe_globals()
    keep_last_batch()
