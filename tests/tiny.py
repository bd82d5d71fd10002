"""Tiny deterministic fairseq tasks, models and batches for the tests."""

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, LanguagePairDataset

import searnn_fairseq  # noqa: F401  (registers criteria, models, costs)

LETTERS = "abcdefgh"


def letter_dictionary(symbols=LETTERS) -> Dictionary:
    d = Dictionary()
    for index, s in enumerate(symbols):
        d.add_symbol(s, n=10 * (index + 1))
    d.finalize(padding_factor=8)
    return d


ARCH_FLAGS = {
    "lstm": [
        "--arch", "lstm", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-hidden-size", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
        "--dropout", "0.1",
    ],
    "transformer": [
        "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "2",
        "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--dropout", "0.1",
    ],
    "searnn_gru": [
        "--arch", "searnn_gru", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-hidden-size", "16", "--decoder-hidden-size", "16", "--decoder-attention", "True",
        "--decoder-input-feeding", "True", "--dropout", "0.1",
    ],
}
# each decoder row also reads the encoder output at its own output position: roll-outs that
# branch and reorder rows must keep every row's position
ARCH_FLAGS["searnn_gru_aligned"] = [*ARCH_FLAGS["searnn_gru"], "--decoder-aligned-input"]


def parse(arch: str, criterion_flags=(), extra=()):
    parser = options.get_training_parser()
    argv = ["unused-data-dir", "--task", "translation", "--cpu", *ARCH_FLAGS[arch], *criterion_flags, *extra]
    return options.parse_args_and_arch(parser, argv)


def build(arch="lstm", criterion_flags=("--criterion", "searnn_ll"), extra=(), seed=0, dictionary=None):
    """(task, model, criterion) on an 8-letter source/target dictionary."""
    args = parse(arch, criterion_flags, extra)
    dictionary = dictionary or letter_dictionary()
    task = tasks.translation.TranslationTask(args, dictionary, dictionary)
    torch.manual_seed(seed)
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    return task, model, criterion


def batch(dictionary, pairs, left_pad_source=True):
    """A collated fairseq batch from (source, target) letter strings."""
    def encode(text):
        return torch.tensor([dictionary.index(c) for c in text] + [dictionary.eos()])

    src = [encode(s) for s, _ in pairs]
    tgt = [encode(t) for _, t in pairs]
    dataset = LanguagePairDataset(
        src, torch.tensor([len(s) for s in src]), dictionary,
        tgt, torch.tensor([len(t) for t in tgt]), dictionary,
        left_pad_source=left_pad_source,
    )
    return dataset.collater([dataset[i] for i in range(len(pairs))])


def random_pairs(count, seed=0, min_len=1, max_len=6, same_length=False):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        m = n if same_length else int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        s = "".join(LETTERS[int(i)] for i in torch.randint(0, len(LETTERS), (n,), generator=g))
        t = "".join(LETTERS[int(i)] for i in torch.randint(0, len(LETTERS), (m,), generator=g))
        pairs.append((s, t))
    return pairs
