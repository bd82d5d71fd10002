"""``--task factored_translation``: translation whose source has a second token stream, aligned
with it token for token (a source factor: POS tags for chunking, as in the SEARNN paper's
CoNLL-2000 model, or any linguistic input feature, Sennrich and Haddow 2016).

Data: what ``--task translation`` reads, plus the factor binarised beside the source,
``{split}.{src}-{tgt}.{factor}.{bin,idx}``, with its dictionary ``dict.{factor}.txt``
(``fairseq-preprocess --only-source --source-lang FACTOR`` writes ``{split}.FACTOR-None.FACTOR``:
rename it; ``preprocessing/conll.py`` does). Source sentence i and factor sentence i must have the
same number of tokens; the task checks every sentence when it loads a split.

Batches are translation's, with the factor in ``net_input["src_factor"]``: a LongTensor shaped and
padded like ``src_tokens`` (same rows, same padding side). fairseq-generate passes every
``net_input`` entry but ``prev_output_tokens`` to the encoder, so an encoder that takes a
``src_factor`` argument (``searnn_gru`` with ``--encoder-factor-embed-dim``) reads it in training,
validation and generation alike.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq import utils
from fairseq.data import BaseWrapperDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

logger = logging.getLogger(__name__)

FACTOR_KEY = "src_factor"


class FactoredPairDataset(BaseWrapperDataset):
    """A LanguagePairDataset whose batches carry the source factor in net_input["src_factor"]."""

    def __init__(self, pairs, factor, factor_pad: int, factor_eos: int):
        super().__init__(pairs)
        self.factor = factor
        self.factor_pad = factor_pad
        self.factor_eos = factor_eos

    def __getitem__(self, index):
        item = self.dataset[index]
        item["source_factor"] = self.factor[index]
        return item

    def collater(self, samples, **kwargs):
        batch = self.dataset.collater(samples, **kwargs)
        if not batch:
            return batch
        by_id = {s["id"]: s["source_factor"] for s in samples}
        src_tokens = batch["net_input"]["src_tokens"]
        factor = data_utils.collate_tokens(
            [by_id[int(i)] for i in batch["id"]], self.factor_pad, self.factor_eos,
            left_pad=self.dataset.left_pad_source, pad_to_length=src_tokens.size(1),
        )
        if factor.shape != src_tokens.shape:
            raise RuntimeError(f"source factor batch {tuple(factor.shape)} differs from the source's "
                               f"{tuple(src_tokens.shape)}")
        batch["net_input"][FACTOR_KEY] = factor
        return batch


@dataclass
class FactoredTranslationConfig(TranslationConfig):
    source_factor: str = field(
        default="pos",
        metadata={"help": "suffix of the source factor stream: {split}.{src}-{tgt}.FACTOR.bin and dict.FACTOR.txt, "
                          "one factor token per source token"},
    )


@register_task("factored_translation", dataclass=FactoredTranslationConfig)
class FactoredTranslationTask(TranslationTask):
    def __init__(self, cfg: FactoredTranslationConfig, src_dict, tgt_dict, factor_dict=None):
        if cfg.truncate_source:
            raise ValueError("--truncate-source would cut the source but not its factor: truncate both beforehand")
        super().__init__(cfg, src_dict, tgt_dict)
        self.factor_dict = factor_dict

    @classmethod
    def setup_task(cls, cfg: FactoredTranslationConfig, **kwargs):
        task = super().setup_task(cfg, **kwargs)
        path = os.path.join(utils.split_paths(cfg.data)[0], f"dict.{cfg.source_factor}.txt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: the source factor's dictionary is missing (--source-factor "
                                    f"{cfg.source_factor})")
        task.factor_dict = cls.load_dictionary(path)
        logger.info(f"[{cfg.source_factor}] dictionary: {len(task.factor_dict)} types")
        return task

    @property
    def source_factor_dictionary(self):
        return self.factor_dict

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        pairs = self.datasets[split]
        paths = utils.split_paths(self.cfg.data)
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        prefix = os.path.join(paths[(epoch - 1) % len(paths)], f"{split}.{src}-{tgt}.{self.cfg.source_factor}")
        factor = data_utils.load_indexed_dataset(prefix, self.factor_dict, self.cfg.dataset_impl)
        if factor is None:
            raise FileNotFoundError(f"{prefix}.bin: the source factor of split {split!r} is missing")
        check_aligned(pairs.src_sizes, factor.sizes, prefix)
        self.datasets[split] = FactoredPairDataset(pairs, factor, self.factor_dict.pad(), self.factor_dict.eos())

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        raise NotImplementedError("factored_translation reads its source factor from binarised files: "
                                  "use fairseq-generate on a binarised split, not fairseq-interactive")


def check_aligned(source_sizes, factor_sizes, prefix: str) -> None:
    """Every factor sentence has as many tokens as its source sentence (a clear error otherwise)."""
    source_sizes, factor_sizes = np.asarray(source_sizes), np.asarray(factor_sizes)
    if len(source_sizes) != len(factor_sizes):
        raise ValueError(f"{prefix}: {len(factor_sizes)} factor sentences for {len(source_sizes)} source sentences")
    differ = np.flatnonzero(source_sizes != factor_sizes)
    if len(differ):
        i = int(differ[0])
        raise ValueError(f"{prefix}: sentence {i} has {factor_sizes[i]} factor tokens but {source_sizes[i]} source "
                         f"tokens ({len(differ)} sentences differ)")

