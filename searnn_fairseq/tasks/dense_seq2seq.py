"""``--task dense_seq2seq``: a sequence of dense vectors in, a token sequence out (e.g. OCR).

Each source position is a real vector of ``--input-dim`` features (OCR: a 16x8
binary letter image, 128 values); the target is a token sequence from
``dict.tgt.txt`` with EOS appended, as in fairseq's translation task.

Data directory layout (``preprocessing/ocr.py`` writes it), per split:

- ``{split}.src.npy``: (N_positions, input_dim) array, any numeric dtype (read as
  float32), the examples' positions concatenated;
- ``{split}.src.offsets.npy``: int64 (N_examples + 1,), example i is rows
  ``offsets[i]:offsets[i+1]``;
- ``{split}.tgt.bin`` / ``{split}.tgt.idx``: the binarised targets (mmap indexed
  dataset, EOS appended); with ``--dataset-impl raw`` the text file ``{split}.tgt``
  (one example per line, space-separated tokens) is read instead;
- ``dict.tgt.txt``: the target dictionary.

Batches have LanguagePairDataset's layout, with a float source::

    {"id", "nsentences", "ntokens",
     "net_input": {"src_tokens": FloatTensor (B, S, D), right-padded with zeros,
                   "src_lengths": LongTensor (B,),
                   "prev_output_tokens": target with EOS moved to the front},
     "target": LongTensor (B, T) right-padded}

sorted by decreasing source length within the batch. ``source_dictionary`` is
None (fairseq-generate then prints no ``S-`` lines; ``T-``/``H-``/``D-``/``P-``
lines and ``--scoring`` work as usual).

The model is told the input size: ``build_model`` sets the model config's
``encoder_input_dim`` (``--encoder-input-dim``) to ``--input-dim`` when it is
unset or 0, and refuses a different non-zero value. So ``--arch searnn_gru`` /
``searnn_gru_ocr`` need no extra flag; another model must read dense
(batch, positions, input_dim) float sources itself.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, FairseqDataset, data_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.data.indexed_dataset import get_available_dataset_impl
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, DictConfig, open_dict

logger = logging.getLogger(__name__)


class DenseFeatureDataset(FairseqDataset):
    """Variable-length sequences of feature vectors stored as one (N, D) array + offsets."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray):
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (positions, dim), got shape {features.shape}")
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if offsets[-1] != len(features) or (np.diff(offsets) < 0).any():
            raise ValueError(
                f"offsets must be non-decreasing and end at the number of positions "
                f"({len(features)}), they end at {offsets[-1]}"
            )
        self.features = features
        self.offsets = offsets
        self.sizes = np.diff(offsets)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __getitem__(self, index):
        start, end = self.offsets[index], self.offsets[index + 1]
        return torch.from_numpy(np.asarray(self.features[start:end], dtype=np.float32))

    def __len__(self):
        return len(self.sizes)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])


def collate_dense(
    samples,
    pad_idx: int,
    eos_idx: int,
    input_feeding: bool = True,
    pad_to_length=None,
    pad_to_multiple: int = 1,
):
    """LanguagePairDataset's collate (right padding) with a float (S, D) source per sample."""
    if len(samples) == 0:
        return {}

    def merge_targets(move_eos_to_beginning):
        return data_utils.collate_tokens(
            [s["target"] for s in samples],
            pad_idx,
            eos_idx,
            left_pad=False,
            move_eos_to_beginning=move_eos_to_beginning,
            pad_to_length=pad_to_length["target"] if pad_to_length is not None else None,
            pad_to_multiple=pad_to_multiple,
        )

    id = torch.LongTensor([s["id"] for s in samples])
    src_lengths = torch.LongTensor([s["source"].size(0) for s in samples])
    width = int(src_lengths.max())
    if pad_to_length is not None and pad_to_length.get("source") is not None:
        width = max(width, int(pad_to_length["source"]))
    if pad_to_multiple != 1 and width % pad_to_multiple != 0:
        width = (width // pad_to_multiple + 1) * pad_to_multiple
    dim = samples[0]["source"].size(1)
    src_tokens = samples[0]["source"].new_zeros(len(samples), width, dim)
    for row, s in enumerate(samples):
        src_tokens[row, : s["source"].size(0)] = s["source"]

    # Sort by descending source length, as LanguagePairDataset does.
    src_lengths, sort_order = src_lengths.sort(descending=True)
    id = id.index_select(0, sort_order)
    src_tokens = src_tokens.index_select(0, sort_order)

    prev_output_tokens = None
    target = None
    if samples[0].get("target", None) is not None:
        target = merge_targets(False).index_select(0, sort_order)
        tgt_lengths = torch.LongTensor([s["target"].ne(pad_idx).long().sum() for s in samples])
        ntokens = tgt_lengths.sum().item()
        if input_feeding:
            prev_output_tokens = merge_targets(True).index_select(0, sort_order)
    else:
        ntokens = src_lengths.sum().item()

    batch = {
        "id": id,
        "nsentences": len(samples),
        "ntokens": ntokens,
        "net_input": {"src_tokens": src_tokens, "src_lengths": src_lengths},
        "target": target,
    }
    if prev_output_tokens is not None:
        batch["net_input"]["prev_output_tokens"] = prev_output_tokens
    return batch


class DenseLanguagePairDataset(FairseqDataset):
    """Pairs a :class:`DenseFeatureDataset` source with a token target (EOS already appended).

    Sizes, batching by ``--max-tokens`` / ``--batch-size``, ordering and size
    filtering follow :class:`fairseq.data.LanguagePairDataset`; a source position
    counts as one token.
    """

    def __init__(
        self,
        src: DenseFeatureDataset,
        src_sizes,
        tgt=None,
        tgt_sizes=None,
        tgt_dict: Optional[Dictionary] = None,
        shuffle: bool = True,
        input_feeding: bool = True,
        eos: Optional[int] = None,
        pad_to_multiple: int = 1,
    ):
        if tgt is not None and len(src) != len(tgt):
            raise ValueError(
                f"source and target must contain the same number of examples ({len(src)} vs {len(tgt)})"
            )
        if tgt is not None and tgt_dict is None:
            raise ValueError("a target needs its dictionary")
        self.src = src
        self.tgt = tgt
        self.src_sizes = np.array(src_sizes)
        self.tgt_sizes = np.array(tgt_sizes) if tgt_sizes is not None else None
        self.sizes = (
            np.vstack((self.src_sizes, self.tgt_sizes)).T if self.tgt_sizes is not None else self.src_sizes
        )
        self.tgt_dict = tgt_dict
        self.shuffle = shuffle
        self.input_feeding = input_feeding
        self.pad_idx = tgt_dict.pad() if tgt_dict is not None else 1
        self.eos = eos if eos is not None else (tgt_dict.eos() if tgt_dict is not None else 2)
        self.pad_to_multiple = pad_to_multiple
        self.buckets = None

    def get_batch_shapes(self):
        return self.buckets

    def __getitem__(self, index):
        return {
            "id": index,
            "source": self.src[index],
            "target": self.tgt[index] if self.tgt is not None else None,
        }

    def __len__(self):
        return len(self.src)

    def collater(self, samples, pad_to_length=None):
        return collate_dense(
            samples,
            pad_idx=self.pad_idx,
            eos_idx=self.eos,
            input_feeding=self.input_feeding,
            pad_to_length=pad_to_length,
            pad_to_multiple=self.pad_to_multiple,
        )

    def num_tokens(self, index):
        return max(self.src_sizes[index], self.tgt_sizes[index] if self.tgt_sizes is not None else 0)

    def num_tokens_vec(self, indices):
        sizes = self.src_sizes[indices]
        if self.tgt_sizes is not None:
            sizes = np.maximum(sizes, self.tgt_sizes[indices])
        return sizes

    def size(self, index):
        return (self.src_sizes[index], self.tgt_sizes[index] if self.tgt_sizes is not None else 0)

    def ordered_indices(self):
        if self.shuffle:
            indices = np.random.permutation(len(self)).astype(np.int64)
        else:
            indices = np.arange(len(self), dtype=np.int64)
        if self.tgt_sizes is not None:
            indices = indices[np.argsort(self.tgt_sizes[indices], kind="mergesort")]
        return indices[np.argsort(self.src_sizes[indices], kind="mergesort")]

    @property
    def supports_prefetch(self):
        return False

    def filter_indices_by_size(self, indices, max_sizes):
        return data_utils.filter_paired_dataset_indices_by_size(
            self.src_sizes, self.tgt_sizes, indices, max_sizes
        )


@dataclass
class DenseSeq2SeqConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None,
        metadata={
            "help": "data directory (preprocessing/ocr.py output); colon-separated directories "
            "are used round-robin for training epochs, valid/test come from the first"
        },
    )
    input_dim: int = field(
        default=128, metadata={"help": "size of each source feature vector (OCR: 16x8 pixels = 128)"}
    )
    max_source_positions: int = field(
        default=1024, metadata={"help": "max number of source positions (longer examples are skipped)"}
    )
    max_target_positions: int = field(
        default=1024, metadata={"help": "max number of target tokens, EOS included"}
    )
    train_subset: str = II("dataset.train_subset")
    dataset_impl: Optional[ChoiceEnum(get_available_dataset_impl())] = II("dataset.dataset_impl")
    required_seq_len_multiple: int = II("dataset.required_seq_len_multiple")


@register_task("dense_seq2seq", dataclass=DenseSeq2SeqConfig)
class DenseSeq2SeqTask(FairseqTask):
    """Dense source vectors -> target tokens. See the module docstring for the data layout."""

    cfg: DenseSeq2SeqConfig

    def __init__(self, cfg: DenseSeq2SeqConfig, tgt_dict: Dictionary):
        super().__init__(cfg)
        self.tgt_dict = tgt_dict

    @classmethod
    def setup_task(cls, cfg: DenseSeq2SeqConfig, **kwargs):
        if not cfg.data:
            raise ValueError("--task dense_seq2seq needs a data directory (the positional DATA argument)")
        if cfg.input_dim <= 0:
            raise ValueError(f"--input-dim must be positive, got {cfg.input_dim}")
        paths = utils.split_paths(cfg.data)
        dict_path = os.path.join(paths[0], "dict.tgt.txt")
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(
                f"{dict_path}: target dictionary not found (is {paths[0]} the output of preprocessing/ocr.py?)"
            )
        tgt_dict = cls.load_dictionary(dict_path)
        logger.info("[tgt] dictionary: %d types", len(tgt_dict))
        return cls(cfg, tgt_dict)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)] if split == self.cfg.train_subset else paths[0]
        prefix = os.path.join(data_path, split)
        for suffix in (".src.npy", ".src.offsets.npy"):
            if not os.path.isfile(prefix + suffix):
                raise FileNotFoundError(f"Dataset not found: {split} ({prefix + suffix} is missing)")

        features = np.load(prefix + ".src.npy", mmap_mode="r")
        offsets = np.load(prefix + ".src.offsets.npy")
        if features.ndim != 2 or features.shape[1] != self.cfg.input_dim:
            raise ValueError(
                f"{prefix}.src.npy has shape {features.shape}, expected (positions, {self.cfg.input_dim}) "
                f"for --input-dim {self.cfg.input_dim}"
            )
        try:
            src = DenseFeatureDataset(features, offsets)
        except ValueError as err:
            raise ValueError(f"{prefix}.src.offsets.npy: {err}") from err

        impl = self.cfg.dataset_impl or "mmap"
        tgt = data_utils.load_indexed_dataset(prefix + ".tgt", self.tgt_dict, impl)
        if tgt is None:
            raise FileNotFoundError(
                f"Dataset not found: {split} (no {impl} target dataset at {prefix}.tgt"
                + (".bin/.idx)" if impl != "raw" else ")")
            )
        if len(tgt) != len(src):
            raise ValueError(f"{prefix}: {len(src)} source examples but {len(tgt)} targets")
        logger.info("%s %s %d examples", data_path, split, len(src))

        self.datasets[split] = DenseLanguagePairDataset(
            src,
            src.sizes,
            tgt,
            tgt.sizes,
            self.tgt_dict,
            shuffle=(split != "test"),
            pad_to_multiple=self.cfg.required_seq_len_multiple,
        )

    def build_model(self, cfg, from_checkpoint=False):
        declared = getattr(cfg, "encoder_input_dim", None)
        if declared and declared != self.cfg.input_dim:
            raise ValueError(
                f"--encoder-input-dim {declared} does not match the task's --input-dim {self.cfg.input_dim}"
            )
        if not declared:
            logger.info("setting the model's encoder_input_dim to --input-dim %d", self.cfg.input_dim)
            if isinstance(cfg, DictConfig):
                with open_dict(cfg):
                    cfg.encoder_input_dim = self.cfg.input_dim
            else:
                cfg.encoder_input_dim = self.cfg.input_dim
        return super().build_model(cfg, from_checkpoint)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        raise NotImplementedError(
            "dense_seq2seq has no text source: use fairseq-generate on a preprocessed split"
        )

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return self.tgt_dict
