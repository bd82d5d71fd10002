"""``--task spelling_correction``: translation whose training sources are corrupted anew each epoch.

preprocessing/spelling.py draws the corruption of every source once and writes
it to disk, so a run sees the same 79k noisy texts every epoch. Bahdanau et
al.'s code, where the task comes from, corrupts on the fly: each pass over the
clean text shows the model new noise. This task does the latter for the
training subset (``--train-noise P``): the source of example i in epoch e is
its clean target with each symbol replaced, with probability P, by a uniformly
drawn *other* symbol of the dictionary (the law of ``substitute``, which the
preprocessing uses too), drawn from a generator seeded by (``--noise-seed``,
e, i), so every run, resumed or not, sees the same sources. Valid and test keep
their fixed, binarised corruption, so validation and test errors stay
comparable with ``--task translation`` runs; generate with ``--task
translation``. With ``--train-noise 0`` (the default) it is the translation task.

The source and target dictionaries must be the same (preprocessing/spelling.py
writes a joined one) and every target symbol a text symbol: the noise is drawn
over the dictionary's non-special symbols.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

logger = logging.getLogger(__name__)


def substitute(ids: np.ndarray, p: float, rng: np.random.Generator, size: int, allow_same: bool = False) -> np.ndarray:
    """Each id (in ``[0, size)``) replaced with probability p by a uniformly drawn other one (any
    one, possibly itself, with ``allow_same``), so exactly a fraction p changes in expectation."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the corruption probability must be in [0, 1], got {p}")
    hit = rng.random(len(ids)) < p
    if allow_same:
        noise = rng.integers(0, size, len(ids))
    else:
        noise = (ids + rng.integers(1, size, len(ids))) % size
    return np.where(hit, noise, ids)


class CorruptedTargets(BaseWrapperDataset):
    """Item i: target i (a text + EOS) with its text symbols substituted, drawn from (seed, epoch, i)."""

    def __init__(self, targets, dictionary: Dictionary, p: float, seed: int):
        super().__init__(targets)
        self.first_symbol = dictionary.nspecial
        self.num_symbols = len(dictionary) - dictionary.nspecial
        self.eos = dictionary.eos()
        self.p = p
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    def __getitem__(self, index):
        target = self.dataset[index]
        text = target[:-1].numpy() - self.first_symbol
        if target[-1].item() != self.eos or (text < 0).any():
            raise ValueError(f"target {index} is not text symbols + EOS: {target.tolist()}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        noisy = substitute(text, self.p, rng, self.num_symbols) + self.first_symbol
        return torch.cat([torch.from_numpy(noisy).to(target.dtype), target[-1:]])


class PairsWithCorruptedSource(BaseWrapperDataset):
    """A LanguagePairDataset whose source is a CorruptedTargets: passes the epoch on to it, which
    LanguagePairDataset does not do."""

    def __init__(self, pairs, source: CorruptedTargets):
        super().__init__(pairs)
        pairs.src = source
        self.source = source

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.source.set_epoch(epoch)
        logger.info(f"training sources: the corruption of epoch {epoch} (p = {self.source.p}, seed {self.source.seed})")


@dataclass
class SpellingCorrectionConfig(TranslationConfig):
    train_noise: float = field(
        default=0.0,
        metadata={"help": "corrupt the training sources anew each epoch from the clean targets, each symbol "
                          "replaced by another with this probability (0: the binarised sources, as translation)"},
    )
    noise_seed: int = field(default=1, metadata={"help": "seed of the per-epoch corruption"})


@register_task("spelling_correction", dataclass=SpellingCorrectionConfig)
class SpellingCorrectionTask(TranslationTask):
    def __init__(self, cfg: SpellingCorrectionConfig, src_dict, tgt_dict):
        if not 0.0 <= cfg.train_noise <= 1.0:
            raise ValueError(f"--train-noise must be in [0, 1], got {cfg.train_noise}")
        if cfg.train_noise > 0 and src_dict.symbols != tgt_dict.symbols:
            raise ValueError("--train-noise needs the same source and target dictionary (a joined one): "
                             "the source is drawn from the target's symbols")
        super().__init__(cfg, src_dict, tgt_dict)

    def get_batch_iterator(self, dataset, **kwargs):
        iterator = super().get_batch_iterator(dataset, **kwargs)
        if isinstance(dataset, PairsWithCorruptedSource):
            # fairseq keeps a data loader's worker processes (--num-workers, default 1) from one
            # epoch to the next; each holds a copy of the dataset set to the epoch it started in,
            # so it would serve that epoch's noise for ever. A fresh loader per epoch forks the
            # workers after set_epoch.
            iterator.reuse_dataloader = iterator.persistent_workers = False
        return iterator

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split == self.cfg.train_subset and self.cfg.train_noise > 0:
            pairs = self.datasets[split]
            source = CorruptedTargets(pairs.tgt, self.tgt_dict, self.cfg.train_noise, self.cfg.noise_seed)
            source.set_epoch(epoch)
            self.datasets[split] = PairsWithCorruptedSource(pairs, source)
