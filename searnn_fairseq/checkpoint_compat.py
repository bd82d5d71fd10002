"""Let fairseq checkpoints load under torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses
the Python objects fairseq stores next to the weights (an argparse.Namespace,
omegaconf configs, enums from the dataclass configs), so ``fairseq-generate``
and resuming ``fairseq-train`` fail with "Unsupported global". Importing the
plugin (``--user-dir searnn_fairseq``) registers those classes as safe globals:
no environment variable, and checkpoints stay loaded through the safe loader.
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
