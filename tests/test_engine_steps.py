"""The engine on a hand-built decoder whose predictions are known in advance."""

import torch
import torch.nn.functional as F
from fairseq.models import FairseqEncoder, FairseqEncoderDecoderModel, FairseqIncrementalDecoder
from torch import nn

import textbook
import tiny
from searnn_fairseq.rollout import reference_lengths, rollout_caps

PAIRS = [("abc", "abcd"), ("h", ""), ("gf", "g"), ("bb", "hhhhh")]
EOS_POSITION = 1


class LengthEncoder(FairseqEncoder):
    def forward(self, src_tokens, src_lengths):
        return {"src_lengths": src_lengths}

    def reorder_encoder_out(self, encoder_out, new_order):
        return {"src_lengths": encoder_out["src_lengths"].index_select(0, new_order)}


class EosAtPositionDecoder(FairseqIncrementalDecoder):
    """Predicts EOS at one position and "a" everywhere else, whatever it has read,
    so a learned roll-in emits EOS early on every target longer than that position."""

    def __init__(self, dictionary, eos_position: int):
        super().__init__(dictionary)
        self.eos_position = eos_position
        self.bias = nn.Parameter(torch.zeros(len(dictionary)))  # something for the loss to train

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **unused):
        positions = torch.arange(prev_output_tokens.size(1))
        if incremental_state is not None:
            positions = positions[-1:]
        favourite = torch.full_like(positions, self.dictionary.index("a"))
        favourite[positions == self.eos_position] = self.dictionary.eos()
        logits = 10.0 * F.one_hot(favourite, len(self.dictionary)).float() + self.bias
        return logits.unsqueeze(0).expand(prev_output_tokens.size(0), -1, -1), None

    def reorder_incremental_state(self, incremental_state, new_order):
        pass

    def max_positions(self):
        return int(1e5)


def eos_early_model(dictionary):
    return FairseqEncoderDecoderModel(LengthEncoder(dictionary), EosAtPositionDecoder(dictionary, EOS_POSITION))


def search_with(stop_at_eos: bool):
    flags = ["--criterion", "searnn_ll", "--cost", "hamming", "--rollin", "learned", "--rollout", "learned",
             "--token-sampling", "all"] + (["--rollin-stop-at-eos"] if stop_at_eos else [])
    task, _, criterion = tiny.build("lstm", flags)
    model = eos_early_model(task.target_dictionary)
    sample = tiny.batch(task.target_dictionary, PAIRS)
    return task.target_dictionary, model, criterion, sample, criterion.search(model, sample)


def test_by_default_the_roll_in_goes_past_an_early_eos_to_the_reference_length():
    d, _, _, sample, result = search_with(stop_at_eos=False)
    num_cells, _ = reference_lengths(sample["target"], d.pad(), d.eos())
    assert result.cells.size(0) == int(num_cells.sum())
    for b, cells in enumerate(num_cells.tolist()):
        expected = ["a" if t != EOS_POSITION else d.eos_word for t in range(cells)]
        assert [d[i] for i in result.rollin_tokens[b, :cells].tolist()] == expected


def test_a_roll_in_stopping_at_eos_gives_no_cost_vector_to_the_cells_after_it():
    d, model, criterion, sample, result = search_with(stop_at_eos=True)
    target = sample["target"]
    num_cells, ref_lens = reference_lengths(target, d.pad(), d.eos())
    reached = num_cells.clamp(max=EOS_POSITION + 1)
    assert sorted(map(tuple, result.cells.tolist())) == [
        (b, t) for b in range(target.size(0)) for t in range(int(reached[b]))
    ]
    for b in range(target.size(0)):
        trajectory = ["a", d.eos_word][: int(reached[b])]
        assert [d[i] for i in result.rollin_tokens[b, : int(reached[b])].tolist()] == trajectory
        assert result.rollin_tokens[b, int(reached[b]):].eq(d.pad()).all()
    # the roll-outs of the cells that remain still decode and cost exactly
    caps = rollout_caps(ref_lens, criterion.policy, model)
    for m, (b, t) in enumerate(result.cells.tolist()):
        ref = target[b, : ref_lens[b]].tolist()
        prefix = result.rollin_tokens[b, :t].tolist()
        for k, a in enumerate(result.actions[m].tolist()):
            if not result.valid[m, k]:
                continue
            if a == d.eos():
                hyp = prefix
            elif t + 1 == EOS_POSITION:
                hyp = prefix + [a]
            else:  # past its EOS position the model says "a" until the cap
                hyp = (prefix + [a] + [d.index("a")] * int(caps[b]))[: max(int(caps[b]), t + 1)]
            assert result.costs[m, k].item() == float(textbook.hamming(hyp, ref)), (b, t, a)

    model.train()
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    assert torch.isfinite(loss) and sample_size == int(reached.sum()) == log["cells"]
    assert model.decoder.bias.grad.abs().sum() > 0
