"""Tests for the searnn_gru model: named architectures through fairseq's own argument
machinery, incremental decoding equal to teacher forcing (SEARNN's roll-outs rely on it),
state reordering, padding sides, and gradient flow."""

import pytest
import torch
from fairseq import models, options
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask

import searnn_fairseq.models.searnn_gru  # noqa: F401  (registers the model)

TINY = [
    "--encoder-embed-dim", "6", "--decoder-embed-dim", "5",
    "--encoder-hidden-size", "7", "--decoder-hidden-size", "8",
    "--dropout", "0.2", "--decoder-dropout-out", "0.2",
]
DENSE_DIM = 4
# (source length, target length); ragged on both sides, the longest source not first.
LENGTHS = [(3, 4), (5, 2), (1, 5), (4, 3)]


def dictionary():
    d = Dictionary()
    for s in "abcdefghij":
        d.add_symbol(s)
    return d


def parse(argv):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data-dir", "--task", "translation", *argv])


def build(argv, seed=0, left_pad_source=True):
    args = parse(argv)
    # fairseq's --left-pad-source is a store_false flag; set the task setting directly.
    args.left_pad_source = left_pad_source
    d = dictionary()
    task = TranslationTask(args, d, d)
    task.source_factor_dictionary = d  # what factored_translation adds (searnn_gru_conll reads POS tags)
    torch.manual_seed(seed)
    return models.build_model(args, task)


def tiny_model(attention, input_feeding, dense=False, layers=2, extra=(), left_pad_source=True):
    argv = [
        "--arch", "searnn_gru", *TINY,
        "--encoder-layers", str(layers), "--decoder-layers", str(layers),
        "--decoder-attention", str(attention), "--decoder-input-feeding", str(input_feeding),
        "--encoder-input-dim", str(DENSE_DIM if dense else 0), *extra,
    ]
    return build(argv, left_pad_source=left_pad_source)


def make_batch(d, dense, left_pad_source=True, seed=0):
    """A collated fairseq batch; dense sources replace the source ids by random
    feature vectors, padded on the same side with garbage (padding must not matter)."""
    g = torch.Generator().manual_seed(seed)
    nspecial = d.nspecial

    def sentence(n):
        return torch.cat([torch.randint(nspecial, len(d), (n,), generator=g), torch.tensor([d.eos()])])

    src = [sentence(s) for s, _ in LENGTHS]
    tgt = [sentence(t) for _, t in LENGTHS]
    dataset = LanguagePairDataset(
        src, torch.tensor([len(s) for s in src]), d,
        tgt, torch.tensor([len(t) for t in tgt]), d,
        left_pad_source=left_pad_source,
    )
    sample = dataset.collater([dataset[i] for i in range(len(src))])
    if dense:
        tokens = sample["net_input"]["src_tokens"]
        sample["net_input"]["src_tokens"] = torch.randn(*tokens.shape, DENSE_DIM, generator=g)
    return sample


def incremental_logits(model, src_tokens, src_lengths, prev_output_tokens, state=None, start=0):
    """Logits of steps start.. decoded one token at a time."""
    encoder_out = model.encoder(src_tokens, src_lengths=src_lengths)
    state = {} if state is None else state
    steps = []
    for t in range(start, prev_output_tokens.size(1)):
        logits, _ = model.decoder(prev_output_tokens[:, : t + 1], encoder_out, incremental_state=state)
        steps.append(logits)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize(
    "arch, expected",
    [
        # (enc hidden, dec hidden, layers, bidirectional, attention, input feeding, dense input dim)
        ("searnn_gru", (256, 256, 1, True, True, True, 0)),
        ("searnn_gru_ocr", (128, 128, 1, True, False, False, 128)),
        ("searnn_gru_spelling", (100, 100, 1, True, True, False, 0)),
        ("searnn_gru_conll", (172, 172, 2, True, True, True, 0)),
    ],
)
def test_named_architecture_builds_the_papers_sizes(arch, expected):
    model = build(["--arch", arch])
    enc, dec = model.encoder, model.decoder
    got = (
        enc.gru.hidden_size, dec.gru.hidden_size, dec.gru.num_layers, enc.gru.bidirectional,
        dec.attention is not None, dec.input_feeding, enc.input_dim,
    )
    assert got == expected


def test_conll_arch_uses_50d_words_44d_pos_tags_and_dropout_03():
    model = build(["--arch", "searnn_gru_conll"])
    assert (model.encoder.embed_tokens.embedding_dim, model.encoder.embed_factor.embedding_dim,
            model.encoder.gru.input_size, model.decoder.gru.dropout,
            model.decoder.dropout_out_module.p) == (50, 44, 94, 0.3, 0.3)


def test_explicit_flags_override_the_named_architecture():
    model = build([
        "--arch", "searnn_gru_ocr", "--decoder-hidden-size", "32",
        "--decoder-attention", "--encoder-bidirectional", "false",
    ])
    assert (model.decoder.gru.hidden_size, model.decoder.attention is not None,
            model.encoder.gru.bidirectional, model.encoder.gru.hidden_size) == (32, True, False, 128)


def test_named_architecture_survives_the_hydra_config_used_by_fairseq_train():
    args = parse(["--arch", "searnn_gru_ocr", "--decoder-layers", "2"])
    cfg = convert_namespace_to_omegaconf(args)
    d = dictionary()
    model = models.build_model(cfg.model, TranslationTask(args, d, d))
    assert (cfg.model._name, model.decoder.gru.hidden_size, model.decoder.gru.num_layers,
            model.decoder.attention) == ("searnn_gru_ocr", 128, 2, None)


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
@pytest.mark.parametrize(
    "attention, input_feeding", [(True, True), (False, False), (True, False), (False, True)]
)
def test_incremental_decoding_matches_teacher_forcing(attention, input_feeding, dense):
    model = tiny_model(attention, input_feeding, dense).eval()
    sample = make_batch(model.decoder.dictionary, dense)
    net_input = sample["net_input"]
    with torch.no_grad():
        full, _ = model(**net_input)
        steps = incremental_logits(model, **net_input)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
def test_incremental_decoding_can_start_from_a_prefix(dense):
    """A roll-in prefix fed in one call, then single steps, equals teacher forcing."""
    model = tiny_model(True, True, dense).eval()
    net_input = make_batch(model.decoder.dictionary, dense)["net_input"]
    prev = net_input["prev_output_tokens"]
    with torch.no_grad():
        full, _ = model(**net_input)
        encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        state = {}
        prefix, _ = model.decoder(prev[:, :3], encoder_out, incremental_state=state)
        rest = incremental_logits(model, net_input["src_tokens"], net_input["src_lengths"], prev,
                                  state=state, start=3)
    torch.testing.assert_close(torch.cat([prefix, rest], 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reorder_encoder_out", [True, False], ids=["encoder-reordered", "encoder-as-is"])
@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
@pytest.mark.parametrize("attention, input_feeding", [(True, True), (False, False)])
def test_reordered_state_continues_like_decoding_the_reordered_batch(
    attention, input_feeding, dense, reorder_encoder_out
):
    """fairseq's generator reorders encoder_out with the state; the roll-out engine
    does not for this decoder (reads_encoder_out_once): both must continue alike."""
    model = tiny_model(attention, input_feeding, dense).eval()
    net_input = make_batch(model.decoder.dictionary, dense)["net_input"]
    src, lengths, prev = net_input["src_tokens"], net_input["src_lengths"], net_input["prev_output_tokens"]
    new_order = torch.tensor([2, 0, 0, 3, 2])  # duplicates rows 0 and 2, drops row 1, one more row
    split = 2
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        state = {}
        for t in range(split):
            model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        if reorder_encoder_out:
            encoder_out = model.encoder.reorder_encoder_out(encoder_out, new_order)
        prev = prev.index_select(0, new_order)
        continued = torch.cat(
            [model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)[0]
             for t in range(split, prev.size(1))],
            dim=1,
        )
        scratch, _ = model(src.index_select(0, new_order), lengths.index_select(0, new_order), prev)
    torch.testing.assert_close(continued, scratch[:, split:], atol=1e-5, rtol=0)


ALIGNED = ["--decoder-aligned-input"]


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
@pytest.mark.parametrize("attention, input_feeding", [(True, True), (False, False)])
def test_aligned_input_decodes_incrementally_from_a_prefix_and_after_reordering(attention, input_feeding, dense):
    """With aligned input each row must know its output position: a prefix fed in one call, then
    single steps through a reorder that duplicates and drops rows, equals teacher forcing."""
    model = tiny_model(attention, input_feeding, dense, extra=ALIGNED).eval()
    net_input = make_batch(model.decoder.dictionary, dense)["net_input"]
    src, lengths, prev = net_input["src_tokens"], net_input["src_lengths"], net_input["prev_output_tokens"]
    new_order = torch.tensor([2, 0, 0, 3, 2])
    with torch.no_grad():
        full, _ = model(**net_input)
        assert torch.allclose(incremental_logits(model, **net_input), full, atol=1e-5)
        encoder_out = model.encoder(src, src_lengths=lengths)
        state = {}
        prefix, _ = model.decoder(prev[:, :2], encoder_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        prev = prev.index_select(0, new_order)
        continued = torch.cat([model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)[0]
                               for t in range(2, prev.size(1))], dim=1)
    torch.testing.assert_close(prefix, full[:, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(continued, full.index_select(0, new_order)[:, 2:], atol=1e-5, rtol=0)


def test_aligned_input_is_the_encoder_output_at_the_same_position_and_zero_past_the_source():
    model = tiny_model(True, False, extra=ALIGNED).eval()
    net_input = make_batch(model.decoder.dictionary, dense=False)["net_input"]
    seen = []
    model.decoder.gru.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(**net_input)
        encoder_outs = model.encoder(net_input["src_tokens"], net_input["src_lengths"])["encoder_out"][0]
    embed_dim, units = model.decoder.embed_tokens.embedding_dim, model.encoder.output_units
    fed = torch.cat(seen)[:, :, embed_dim: embed_dim + units]  # T x B x C, one GRU call per step
    lengths = net_input["src_lengths"].tolist()  # with EOS: 4, 6, 2, 5 (left-padded on input)
    for b, length in enumerate(lengths):
        for t in range(fed.size(0)):
            expected = encoder_outs[t, b] if t < length else torch.zeros(units)
            torch.testing.assert_close(fed[t, b], expected, atol=1e-6, rtol=0)
    assert model.decoder.gru.input_size == embed_dim + units


def test_aligned_input_is_off_by_default_and_on_by_flag_for_every_named_arch():
    assert not build(["--arch", "searnn_gru_conll"]).decoder.aligned_input
    model = build(["--arch", "searnn_gru_conll", "--decoder-aligned-input"])
    assert model.decoder.aligned_input and model.decoder.gru.input_size == 50 + 2 * 172 + 172


def test_reordering_copies_per_row_state_only():
    """Roll-outs branch many rows off one sentence: the encoder outputs and keys stay
    one per source, and only the small per-row tensors follow the new order."""
    model = tiny_model(True, True).eval()
    net_input = make_batch(model.decoder.dictionary, False)["net_input"]
    with torch.no_grad():
        encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        state = {}
        model.decoder(net_input["prev_output_tokens"][:, :1], encoder_out, incremental_state=state)
        before = dict(model.decoder._get_cached_state(state))
        new_order = torch.tensor([3, 3, 3, 1, 0, 3])
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        after = model.decoder._get_cached_state(state)
    for key in ("attention_keys", "attention_values", "padding_mask"):
        assert after[key] is before[key]
    assert after["source_index"].tolist() == new_order.tolist()
    assert after["hidden"].size(0) == after["input_feed"].size(0) == after["position"].size(0) == 6


def test_attention_equals_the_textbook_formula_with_gradients():
    """Per-source keys and values read through each row's source index give the
    context and gradients of a_s = softmax(v . tanh(W h + U e_s)), c = sum_s a_s e_s
    computed on gathered per-row copies."""
    from searnn_fairseq.models.searnn_gru import AdditiveAttention

    torch.manual_seed(0)
    attention = AdditiveAttention(query_dim=5, key_dim=4, attention_dim=3)
    encoder_outs = torch.randn(6, 2, 4, requires_grad=True)  # S x B x C
    padding_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    source_index = torch.tensor([1, 0, 1, 1])
    query = torch.randn(4, 5, requires_grad=True)

    keys = attention.project_keys(encoder_outs)
    values = encoder_outs.transpose(0, 1)
    context, weights = attention(query, keys, values, padding_mask, source_index)
    (context.square().sum() + weights[:, 0].sum()).backward()
    got = [context.detach(), weights.detach(), query.grad, encoder_outs.grad]
    grads = [p.grad.clone() for p in attention.parameters()]

    query.grad = encoder_outs.grad = None
    attention.zero_grad()
    e = encoder_outs.transpose(0, 1)[source_index]  # R x S x C
    scores = attention.score_proj(torch.tanh(attention.key_proj(e) + attention.query_proj(query).unsqueeze(1)))
    a = torch.softmax(scores.squeeze(2).masked_fill(padding_mask[source_index], float("-inf")), dim=1)
    c = (a.unsqueeze(2) * e).sum(1)
    (c.square().sum() + a[:, 0].sum()).backward()
    expected = [c.detach(), a.detach(), query.grad, encoder_outs.grad]
    for g, x in zip(got + grads, expected + [p.grad for p in attention.parameters()]):
        torch.testing.assert_close(g, x, atol=1e-6, rtol=1e-5)
    assert weights[0, 4:].eq(0).all()  # row 0 reads source 1, padded after 4 positions


def test_grad_free_attention_in_row_slices_equals_one_pass(monkeypatch):
    """Roll-outs (no gradient) compute the energy a slice of rows at a time; the result must
    not depend on it. A call that needs gradients keeps one pass."""
    from searnn_fairseq.models.searnn_gru import AdditiveAttention

    torch.manual_seed(0)
    attention = AdditiveAttention(query_dim=5, key_dim=4, attention_dim=3)
    encoder_outs = torch.randn(7, 3, 4)  # S x B x C
    padding_mask = torch.zeros(3, 7, dtype=torch.bool)
    padding_mask[2, 5:] = True
    source_index = torch.randint(0, 3, (50,))
    query = torch.randn(50, 5)
    keys, values = attention.project_keys(encoder_outs), encoder_outs.transpose(0, 1)
    passes = []
    attention.score_proj.register_forward_hook(lambda module, args, out: passes.append(out.size(0)))

    with torch.no_grad():
        whole = attention(query, keys, values, padding_mask, source_index)
        monkeypatch.setattr(AdditiveAttention, "ENERGY_ELEMENTS_PER_SLICE", 7 * 3 * 8)  # 8 rows a slice
        sliced = attention(query, keys, values, padding_mask, source_index)
    for got, expected in zip(sliced, whole):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert passes == [50] + [8] * 6 + [2]
    attention(query.requires_grad_(), keys, values, padding_mask, source_index)
    assert passes[-1] == 50
    with torch.no_grad():  # a step with no rows left, as one pass did before slicing
        assert attention.scores(attention.query_proj(query[:0]), keys, source_index[:0]).shape == (0, 7)


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
def test_left_and_right_padded_sources_give_the_same_logits(dense):
    # Token sources: the padding side is read off the batch, so one model (built for
    # left padding) reads both. Dense sources: it comes from the task's
    # left_pad_source, so each batch needs a model built with the matching setting.
    left_model = tiny_model(True, True, dense, left_pad_source=True).eval()
    right_model = tiny_model(True, True, dense, left_pad_source=not dense).eval()
    d = left_model.decoder.dictionary
    left = make_batch(d, dense, left_pad_source=True)["net_input"]
    right = make_batch(d, dense, left_pad_source=False)["net_input"]
    if dense:
        # Same feature vectors in both batches: take them from the right-padded one.
        left["src_tokens"] = _right_to_left(right["src_tokens"], right["src_lengths"])
    with torch.no_grad():
        from_left, _ = left_model(**left)
        from_right, _ = right_model(**right)
    torch.testing.assert_close(from_left, from_right, atol=1e-5, rtol=0)


def _right_to_left(x, lengths):
    out = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        out[b, x.size(1) - n:] = x[b, :n]
    return out


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
def test_extra_source_padding_changes_nothing(dense):
    """Attention must not look at padding: widen the batch with padding (garbage
    features for dense input) and the logits stay the same."""
    model = tiny_model(True, True, dense, left_pad_source=False).eval()
    d = model.decoder.dictionary
    net_input = make_batch(d, dense, left_pad_source=False)["net_input"]
    src = net_input["src_tokens"]
    if dense:
        wider = torch.cat([src, 100 * torch.ones(src.size(0), 3, DENSE_DIM)], dim=1)
    else:
        wider = torch.cat([src, torch.full((src.size(0), 3), d.pad())], dim=1)
    with torch.no_grad():
        narrow_logits, _ = model(**net_input)
        wide_logits, _ = model(wider, net_input["src_lengths"], net_input["prev_output_tokens"])
    torch.testing.assert_close(wide_logits, narrow_logits, atol=1e-5, rtol=0)


def test_input_feeding_feeds_the_previous_output():
    """Cutting the GRU's input-feed weights leaves step 0 (fed zeros) unchanged and
    changes every later step."""
    model = tiny_model(True, True).eval()
    net_input = make_batch(model.decoder.dictionary, dense=False)["net_input"]
    embed_dim = model.decoder.embed_tokens.embedding_dim
    with torch.no_grad():
        fed, _ = model(**net_input)
        model.decoder.gru.weight_ih_l0[:, embed_dim:] = 0
        cut, _ = model(**net_input)
    changed = (fed - cut).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [False] + [True] * (fed.size(1) - 1)


@pytest.mark.parametrize("dense", [False, True], ids=["tokens", "dense"])
@pytest.mark.parametrize(
    "attention, input_feeding, share",
    [(True, True, False), (False, False, False), (True, True, True)],
    ids=["attention+feeding", "plain", "shared-embed"],
)
def test_gradients_reach_every_parameter(attention, input_feeding, share, dense):
    # Without attention the encoder is reached only through the decoder's initial state.
    extra = ["--share-decoder-input-output-embed"] if share else []
    model = tiny_model(attention, input_feeding, dense, extra=extra).train()
    sample = make_batch(model.decoder.dictionary, dense)
    logits, _ = model(**sample["net_input"])
    loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), sample["target"], ignore_index=model.decoder.dictionary.pad()
    )
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_in_eval_mode_only_real_tokens_can_be_predicted_so_fairseq_generate_decodes_as_validation_does():
    """A sampled loss never trains BOS's score: here it outranks every token, as it came to in a
    top-k sLL run. Training still sees it; fairseq-generate (eval mode) must not emit it."""
    from fairseq.sequence_generator import SequenceGenerator

    model = tiny_model(attention=True, input_feeding=True)
    d = model.decoder.dictionary
    with torch.no_grad():
        model.decoder.fc_out.bias[d.bos()] = 100.0
        model.decoder.fc_out.bias[d.unk()] = 100.0
    sample = make_batch(d, dense=False)
    net_output = model(**sample["net_input"])
    model.train()
    assert model.get_normalized_probs(net_output, log_probs=True)[..., d.bos()].gt(-1).all()
    model.eval()
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    # a whole target is scored with UNK allowed (a finite loss on targets that hold <unk>);
    # step-by-step decoding below still never emits it
    assert torch.isinf(lprobs[..., [d.bos(), d.pad()]]).all() and torch.isfinite(lprobs[..., d.unk()]).all()
    assert torch.allclose(lprobs.exp().sum(-1), torch.ones(lprobs.shape[:-1]), atol=1e-5)
    hypos = SequenceGenerator([model], d, beam_size=1, max_len_b=8)(sample)
    emitted = torch.cat([h[0]["tokens"] for h in hypos])
    assert not emitted.eq(d.bos()).any() and not emitted.eq(d.unk()).any()
    assert "actions" not in model.state_dict()  # checkpoints keep their keys
