"""Which tokens of a target dictionary are predictions.

The roll-in, the roll-outs, validation decoding and searnn_gru's step-by-step
decoding all choose among the same tokens: none of them decodes padding, BOS,
UNK or the fillers fairseq appends to round the dictionary size (a target that
holds UNK is still scored, with a finite loss).
"""

import torch
from torch import Tensor

# fairseq's Dictionary.finalize(padding_factor=...) pads the vocabulary with these symbols
FILLER_PREFIX = "madeupword"


def action_mask(dictionary) -> Tensor:
    """(V,) True for tokens that are real predictions: not padding, BOS, UNK or
    the fillers fairseq adds to round the dictionary size."""
    actions = torch.ones(len(dictionary), dtype=torch.bool)
    for index in {dictionary.pad(), dictionary.bos(), dictionary.unk()}:
        actions[index] = False
    for index, symbol in enumerate(dictionary.symbols):
        if symbol.startswith(FILLER_PREFIX):
            actions[index] = False
    return actions
