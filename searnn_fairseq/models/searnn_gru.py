"""GRU encoder-decoder of the SEARNN paper (Leblond et al., ICLR 2018, Section 4 and Appendix B).

Encoder: token embeddings (or a linear projection of dense source features, for OCR where
each source position is a 128-pixel image) -> dropout -> (bi)GRU, packed by source length.
Decoder: target embeddings -> GRU stack, initialised with tanh(Linear(final encoder state)),
optional additive (Bahdanau) attention, optional input feeding (Luong et al., 2015, Sec. 3.3),
dropout on the attention output, projection to the vocabulary.

The decoder is a FairseqIncrementalDecoder: SEARNN's roll-outs run it step by step from
cached states (reordered/duplicated with ``reorder_incremental_state``), so incremental and
teacher-forced decoding must agree exactly; ``tests/test_searnn_gru.py`` pins that down.
"""

import argparse
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.modules import FairseqDropout
from torch import Tensor

from searnn_fairseq.vocabulary import action_mask

# RNNs have no positional limit; fairseq's LSTM uses the same "large number".
DEFAULT_MAX_POSITIONS = int(1e5)

EncoderOut = Dict[str, List[Tensor]]
IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


@dataclass
class SearnnGRUConfig(FairseqDataclass):
    dropout: float = field(
        default=0.1,
        metadata={"help": "dropout on the embeddings and between stacked GRU layers"},
    )
    encoder_input_dim: int = field(
        default=0,
        metadata={
            "help": "if > 0, the source is dense features (float B x S x this dim, padding "
            "given by src_lengths) projected by a linear layer instead of token ids"
        },
    )
    encoder_embed_dim: int = field(
        default=256,
        metadata={"help": "source embedding (or dense feature projection) dimension"},
    )
    encoder_embed_path: str = field(
        default="",
        metadata={"help": "initialise the source embeddings from this text file (a 'count dim' header line, "
                          "then 'word v1 ... vDIM' lines, as fairseq's LSTM reads them)"},
    )
    encoder_factor_embed_dim: int = field(
        default=0,
        metadata={"help": "if > 0, each source token's factor (e.g. its POS tag, --task factored_translation) "
                          "is embedded in this many dimensions and concatenated to its embedding"},
    )
    encoder_hidden_size: int = field(
        default=256, metadata={"help": "encoder GRU size (per direction)"}
    )
    encoder_layers: int = field(default=1, metadata={"help": "encoder GRU layers"})
    encoder_bidirectional: bool = field(
        default=True, metadata={"help": "bidirectional encoder"}
    )
    decoder_embed_dim: int = field(
        default=256, metadata={"help": "target embedding dimension"}
    )
    decoder_hidden_size: int = field(default=256, metadata={"help": "decoder GRU size"})
    decoder_layers: int = field(default=1, metadata={"help": "decoder GRU layers"})
    decoder_attention: bool = field(
        default=True,
        metadata={"help": "additive (Bahdanau) attention over the encoder outputs"},
    )
    decoder_input_feeding: bool = field(
        default=True,
        metadata={
            "help": "feed the previous attentional output to the decoder GRU "
            "(Luong et al., 2015)"
        },
    )
    decoder_aligned_input: bool = field(
        default=False,
        metadata={
            "help": "also feed the decoder, at output position t, the encoder output at source position t "
            "(zeros past the source's end): the alignment a tagger is given, for tasks whose output is as "
            "long as their input (chunking); attention stays as set"
        },
    )
    decoder_dropout_out: float = field(
        default=0.1,
        metadata={
            "help": "dropout on the decoder output (the attention output when "
            "attention is on) before the vocabulary projection"
        },
    )
    share_decoder_input_output_embed: bool = field(
        default=False,
        metadata={"help": "tie the output projection to the target embeddings"},
    )


@register_model("searnn_gru", dataclass=SearnnGRUConfig)
class SearnnGRUModel(FairseqEncoderDecoderModel):
    """``--arch searnn_gru`` is the dataclass defaults (register_model registers that arch
    itself); ``searnn_gru_ocr``, ``searnn_gru_spelling`` and ``searnn_gru_conll`` are the
    paper's settings, see the architecture functions at the bottom of this file."""

    @classmethod
    def add_args(cls, parser):
        # fairseq's generic add_args turns a bool field into a one-way store_true /
        # store_false flag: `--encoder-bidirectional` would *disable* the (default True)
        # bidirectional encoder, and a named arch that turns attention off could not be
        # turned back on. Bools here take an optional value instead: `--decoder-attention`,
        # `--decoder-attention True`, `--decoder-attention False`. No defaults are set, so
        # flags not given stay unset and the named architecture supplies them.
        for f in fields(SearnnGRUConfig):
            if f.name.startswith("_"):
                continue
            flag = "--" + f.name.replace("_", "-")
            help = f.metadata.get("help")
            if f.type is bool:
                parser.add_argument(
                    flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=help
                )
            else:
                parser.add_argument(flag, type=f.type, metavar="N", help=help)

    @classmethod
    def build_model(cls, cfg, task):
        # Padding side of dense sources cannot be read off the data (a zero feature
        # vector is valid input), so take it from the task; token sources are checked.
        task_cfg = getattr(task, "cfg", None) or getattr(task, "args", None)
        left_pad_source = bool(getattr(task_cfg, "left_pad_source", False))

        factor_dictionary = getattr(task, "source_factor_dictionary", None)
        if cfg.encoder_factor_embed_dim > 0 and factor_dictionary is None:
            arch = getattr(cfg, "arch", None) or getattr(cfg, "_name", "searnn_gru")
            raise ValueError(
                f"--encoder-factor-embed-dim {cfg.encoder_factor_embed_dim} (--arch {arch}) needs a "
                "task with a source factor (--task factored_translation); pass --encoder-factor-embed-dim 0 "
                "for a source without one"
            )
        encoder = SearnnGRUEncoder(
            dictionary=task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            factor_dictionary=factor_dictionary if cfg.encoder_factor_embed_dim > 0 else None,
            factor_embed_dim=cfg.encoder_factor_embed_dim,
            hidden_size=cfg.encoder_hidden_size,
            num_layers=cfg.encoder_layers,
            bidirectional=cfg.encoder_bidirectional,
            dropout=cfg.dropout,
            input_dim=cfg.encoder_input_dim,
            left_pad=left_pad_source,
        )
        decoder = SearnnGRUDecoder(
            dictionary=task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            hidden_size=cfg.decoder_hidden_size,
            num_layers=cfg.decoder_layers,
            encoder_output_units=encoder.output_units,
            attention=cfg.decoder_attention,
            input_feeding=cfg.decoder_input_feeding,
            aligned_input=cfg.decoder_aligned_input,
            dropout=cfg.dropout,
            dropout_out=cfg.decoder_dropout_out,
            share_input_output_embed=cfg.share_decoder_input_output_embed,
        )
        if cfg.encoder_embed_path:
            encoder.load_embeddings(cfg.encoder_embed_path)
        # Without attention or aligned input the decoder only reads the final state: not
        # keeping the per-position outputs spares every roll-out row a copy of them.
        encoder.keep_outputs = cfg.decoder_attention or cfg.decoder_aligned_input
        return cls(encoder, decoder)


class SearnnGRUEncoder(FairseqEncoder):
    """(Bi)GRU encoder over token ids or, when ``input_dim > 0``, dense feature vectors.

    Returns a dict of single-tensor lists, following TransformerEncoder's layout:

    - ``encoder_out``: (src_len, batch, output_units) outputs, zero at padding,
      right-aligned (left-padded input is converted)
    - ``encoder_padding_mask``: (batch, src_len) bool, True at padding
    - ``encoder_final_hidden``: (batch, output_units) final state of the top layer,
      both directions concatenated (the decoder's initial state is computed from it)
    - ``src_lengths``: (batch,) source lengths

    With a factor dictionary, ``forward`` also takes ``src_factor`` (batch, src_len): one factor
    token per source token, embedded and concatenated to the token's embedding.
    """

    def __init__(
        self,
        dictionary,
        embed_dim=256,
        hidden_size=256,
        num_layers=1,
        bidirectional=True,
        dropout=0.1,
        input_dim=0,
        left_pad=False,
        factor_dictionary=None,
        factor_embed_dim=0,
    ):
        super().__init__(dictionary)
        # dense sources have no dictionary; padding_idx only matters for token input
        self.padding_idx = dictionary.pad() if dictionary is not None else None
        self.input_dim = input_dim
        self.left_pad = left_pad
        self.keep_outputs = True  # the model turns this off when its decoder does not attend
        if input_dim > 0:
            self.embed_tokens = None
            self.input_proj = nn.Linear(input_dim, embed_dim)
        else:
            self.embed_tokens = Embedding(len(dictionary), embed_dim, self.padding_idx)
            self.input_proj = None
        self.embed_factor = None
        if factor_dictionary is not None and factor_embed_dim > 0:
            if input_dim > 0:
                raise ValueError("a source factor needs token sources, not dense features")
            self.embed_factor = Embedding(len(factor_dictionary), factor_embed_dim, factor_dictionary.pad())
        self.dropout_in_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.gru = nn.GRU(
            input_size=embed_dim + (factor_embed_dim if self.embed_factor is not None else 0),
            hidden_size=hidden_size,
            num_layers=num_layers,
            # nn.GRU applies this between stacked layers only (and warns if 1 layer).
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.output_units = hidden_size * self.num_directions

    def load_embeddings(self, path: str) -> None:
        """Source embeddings from a text file (fairseq's format: a header line, then 'word v1 ...');
        words it lacks keep their random initialisation."""
        from fairseq import utils

        if self.embed_tokens is None:
            raise ValueError("--encoder-embed-path needs token sources, not dense features")
        vectors = utils.parse_embedding(path)
        dims = {len(v) for v in vectors.values()}
        if dims != {self.embed_tokens.embedding_dim}:
            raise ValueError(f"{path}: vectors of {sorted(dims)} dimensions, the encoder embeds in "
                             f"{self.embed_tokens.embedding_dim} (--encoder-embed-dim)")
        utils.load_embedding(vectors, self.dictionary, self.embed_tokens)

    def forward(
        self, src_tokens: Tensor, src_lengths: Tensor, src_factor: Optional[Tensor] = None, **kwargs
    ) -> EncoderOut:
        """
        Args:
            src_tokens: (batch, src_len) LongTensor of token ids, or (batch, src_len,
                input_dim) FloatTensor of features when the encoder takes dense input
            src_lengths: (batch,) number of non-padding source positions
            src_factor: (batch, src_len) factor token ids, padded like ``src_tokens`` (only
                for an encoder built with a factor dictionary)
        """
        if self.embed_factor is not None and src_factor is None:
            raise ValueError("this encoder reads a source factor: the batch has no net_input['src_factor'] "
                             "(use --task factored_translation)")
        if self.embed_tokens is not None:
            # A right-padded row never starts with padding, so a padding token in
            # column 0 means the batch is left-padded, whatever the task flag says.
            left_padded = bool(src_tokens[:, 0].eq(self.padding_idx).any())
        else:
            left_padded = self.left_pad
        if left_padded:
            # pack_padded_sequence needs right padding.
            src_tokens = left_to_right_padding(src_tokens, src_lengths)
            if self.embed_factor is not None:
                src_factor = left_to_right_padding(src_factor, src_lengths)
        bsz, src_len = src_tokens.shape[:2]

        if self.embed_tokens is not None:
            x = self.embed_tokens(src_tokens)
        else:
            x = self.input_proj(src_tokens)
        if self.embed_factor is not None:
            x = torch.cat([x, self.embed_factor(src_factor)], dim=2)
        x = self.dropout_in_module(x)
        x = x.transpose(0, 1)  # B x S x C -> S x B x C

        # Batches need not be sorted by length (SEARNN reorders and duplicates rows).
        packed = nn.utils.rnn.pack_padded_sequence(
            x, src_lengths.cpu(), enforce_sorted=False
        )
        packed_out, final_hidden = self.gru(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(packed_out, total_length=src_len)

        # (layers * directions) x B x H -> top layer, directions concatenated: B x (dirs * H)
        final_hidden = final_hidden.view(self.num_layers, self.num_directions, bsz, -1)[-1]
        final_hidden = final_hidden.transpose(0, 1).reshape(bsz, self.output_units)

        positions = torch.arange(src_len, device=src_lengths.device)
        padding_mask = positions.unsqueeze(0) >= src_lengths.unsqueeze(1)
        return {
            "encoder_out": [x] if self.keep_outputs else [],
            "encoder_padding_mask": [padding_mask.to(x.device)],
            "encoder_final_hidden": [final_hidden],
            "src_lengths": [src_lengths],
        }

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Select batch rows ``new_order`` (may repeat or drop rows) of every tensor."""
        return {
            key: [t.index_select(1 if key == "encoder_out" else 0, new_order) for t in tensors]
            for key, tensors in encoder_out.items()
        }

    def max_positions(self):
        return DEFAULT_MAX_POSITIONS


class AdditiveAttention(nn.Module):
    """Bahdanau et al.'s attention: a_s = softmax_s(v . tanh(W h + U e_s)) over the
    non-padding source positions, context = sum_s a_s e_s.

    Keys, values and the padding mask are held once per source sentence and each
    decoder row names its sentence: SEARNN branches hundreds of roll-out rows off
    one sentence, and copying its encoder outputs into every row at every
    reordering would cost more than the attention itself."""

    def __init__(self, query_dim, key_dim, attention_dim):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_proj = nn.Linear(key_dim, attention_dim)
        self.score_proj = nn.Linear(attention_dim, 1, bias=False)

    def project_keys(self, encoder_outs: Tensor) -> Tensor:
        """S x B x C -> B x S x A. Done once per source, not at every decoding step:
        it costs more than the GRU step itself."""
        return self.key_proj(encoder_outs.transpose(0, 1))

    # Rows per slice of the R x S x A energy when nothing needs its gradient: about 1 MB, so
    # that a roll-out step's 10^4-10^5 rows reuse one cached buffer instead of allocating and
    # page-faulting a fresh 100 MB tensor for each of the gather, add and tanh.
    ENERGY_ELEMENTS_PER_SLICE = 2 ** 18

    def scores(self, projected_query: Tensor, keys: Tensor, source_index: Tensor) -> Tensor:
        """v . tanh(W h + U e_s) for each row and source position (R x S)."""
        rows = source_index.size(0)
        slice_rows = max(1, self.ENERGY_ELEMENTS_PER_SLICE // (keys.size(1) * keys.size(2)))
        needs_grad = torch.is_grad_enabled() and (projected_query.requires_grad or keys.requires_grad)
        if rows <= slice_rows or needs_grad:
            return self._scores_in_one_pass(projected_query, keys, source_index)
        return torch.cat([
            self._scores_in_one_pass(projected_query[start:start + slice_rows], keys,
                                     source_index[start:start + slice_rows])
            for start in range(0, rows, slice_rows)
        ])

    def _scores_in_one_pass(self, projected_query: Tensor, keys: Tensor, source_index: Tensor) -> Tensor:
        energy = keys.index_select(0, source_index)
        energy += projected_query.unsqueeze(1)
        return self.score_proj(energy.tanh_()).squeeze(2)

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor, padding_mask: Tensor, source_index: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """query: R x H, one per decoder row; keys: B x S x A, values: B x S x C and
        padding_mask: B x S, one per source; source_index: R, each row's source.
        Returns the context (R x C) and the attention weights (R x S)."""
        rows, src_len = source_index.size(0), keys.size(1)
        scores = self.scores(self.query_proj(query), keys, source_index)
        scores = scores.masked_fill(padding_mask.index_select(0, source_index), float("-inf"))
        weights = F.softmax(scores, dim=1)
        # sum_s a_s e_s as one weighted bag per row: reads each row's values in
        # place instead of gathering an R x S x C copy of them
        positions = source_index.unsqueeze(1) * src_len + torch.arange(src_len, device=keys.device)
        context = F.embedding_bag(
            positions.view(-1),
            values.reshape(-1, values.size(2)),
            offsets=torch.arange(0, rows * src_len, src_len, device=keys.device),
            per_sample_weights=weights.reshape(-1),
            mode="sum",
        )
        return context, weights


class SearnnGRUDecoder(FairseqIncrementalDecoder):
    """GRU decoder with optional additive attention, input feeding and aligned input.

    Step t: h_t = GRU([emb(y_{t-1}); e_t if aligned input; o_{t-1} if input feeding], h_{t-1}),
    e_t the encoder output at source position t (zero past the source's end);
    with attention o_t = tanh(W_o [h_t; c_t]) where c_t attends with h_t, else o_t = h_t;
    logits_t = W_out dropout(o_t).
    """

    def __init__(
        self,
        dictionary,
        embed_dim=256,
        hidden_size=256,
        num_layers=1,
        encoder_output_units=512,
        attention=True,
        input_feeding=True,
        aligned_input=False,
        dropout=0.1,
        dropout_out=0.1,
        share_input_output_embed=False,
    ):
        super().__init__(dictionary)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_feeding = input_feeding
        self.aligned_input = aligned_input
        self.share_input_output_embed = share_input_output_embed

        self.embed_tokens = Embedding(len(dictionary), embed_dim, dictionary.pad())
        self.dropout_in_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.dropout_out_module = FairseqDropout(
            dropout_out, module_name=self.__class__.__name__
        )
        # Initial state of every layer: tanh(Linear(final encoder state)).
        self.init_hidden_proj = nn.Linear(encoder_output_units, num_layers * hidden_size)
        # One nn.GRU serves both the whole-sequence pass (no attention, no input
        # feeding) and the step-by-step pass (a length-1 sequence per step), so both
        # use the same weights; on CPU a length-1 nn.GRU is as fast as a GRUCell loop.
        aligned_size = encoder_output_units if aligned_input else 0
        self.gru = nn.GRU(
            input_size=embed_dim + aligned_size + (hidden_size if input_feeding else 0),
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        if attention:
            self.attention = AdditiveAttention(hidden_size, encoder_output_units, hidden_size)
            self.attention_out_proj = nn.Linear(hidden_size + encoder_output_units, hidden_size)
        else:
            self.attention = None
            self.attention_out_proj = None

        if share_input_output_embed:
            # The tied output matrix has embed_dim columns.
            self.out_embed_proj = (
                nn.Linear(hidden_size, embed_dim, bias=False)
                if hidden_size != embed_dim
                else None
            )
            self.fc_out = None
        else:
            self.out_embed_proj = None
            self.fc_out = nn.Linear(hidden_size, len(dictionary))
        # not saved: checkpoints from before them load unchanged
        self.register_buffer("actions", action_mask(dictionary), persistent=False)
        # What a target can hold: the actions, and UNK for words outside the dictionary.
        target_symbols = action_mask(dictionary)
        target_symbols[dictionary.unk()] = True
        self.register_buffer("target_symbols", target_symbols, persistent=False)

    @property
    def stepwise(self) -> bool:
        """Attention and input feeding make each step's GRU input depend on the
        previous step's output, which forces a Python loop over time."""
        return self.attention is not None or self.input_feeding

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[EncoderOut] = None,
        incremental_state: Optional[IncrementalState] = None,
        **kwargs,
    ):
        """
        Args:
            prev_output_tokens: (batch, tgt_len) shifted target tokens (teacher forcing)
            encoder_out: output of :class:`SearnnGRUEncoder`
            incremental_state: cache for step-by-step decoding. Once it holds this
                decoder's state, only the last token of ``prev_output_tokens`` is read;
                while it is empty, all of them are (a roll-in prefix, or the first step).

        Returns:
            logits (batch, tgt_len or 1, vocab) and {"attn": [(batch, tgt_len, src_len)
            attention weights, or None without attention], "decoding": whether they come
            from step-by-step decoding (an incremental state)}
        """
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[EncoderOut] = None,
        incremental_state: Optional[IncrementalState] = None,
        **kwargs,
    ):
        assert encoder_out is not None, "the decoder is initialised from the encoder"
        cached = self._get_cached_state(incremental_state)
        if cached is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        bsz, tgt_len = prev_output_tokens.size()

        x = self.dropout_in_module(self.embed_tokens(prev_output_tokens))
        x = x.transpose(0, 1)  # B x T x C -> T x B x C

        if cached is None:
            init = torch.tanh(self.init_hidden_proj(encoder_out["encoder_final_hidden"][0]))
            hidden = init.view(bsz, self.num_layers, self.hidden_size).transpose(0, 1)
            hidden = hidden.contiguous()
            input_feed = x.new_zeros(bsz, self.hidden_size) if self.input_feeding else None
            source_index = torch.arange(bsz, device=x.device)
            position = torch.zeros(bsz, dtype=torch.long, device=x.device)
            keys = values = padding_mask = None
            if self.attention is not None or self.aligned_input:
                encoder_outs = encoder_out["encoder_out"][0]
                values = encoder_outs.transpose(0, 1).contiguous()
                padding_mask = encoder_out["encoder_padding_mask"][0]
            if self.attention is not None:
                keys = self.attention.project_keys(encoder_outs)
        else:
            hidden = cached["hidden"].transpose(0, 1).contiguous()
            input_feed = cached.get("input_feed")
            source_index = cached["source_index"]
            position = cached["position"]
            keys = cached.get("attention_keys")
            values = cached.get("attention_values")
            padding_mask = cached.get("padding_mask")

        if self.aligned_input:
            positions = position.unsqueeze(1) + torch.arange(tgt_len, device=x.device)
            aligned = aligned_encoder_states(values, padding_mask, source_index, positions)
            x = torch.cat((x, aligned.transpose(0, 1)), dim=2)

        attn: Optional[Tensor] = None
        if self.stepwise:
            outs, attns = [], []
            for t in range(tgt_len):
                rnn_input = x[t] if input_feed is None else torch.cat((x[t], input_feed), 1)
                top, hidden = self.gru(rnn_input.unsqueeze(0), hidden)
                top = top[0]
                if self.attention is not None:
                    context, weights = self.attention(top, keys, values, padding_mask, source_index)
                    out = torch.tanh(self.attention_out_proj(torch.cat((top, context), 1)))
                    attns.append(weights)
                else:
                    out = top
                out = self.dropout_out_module(out)
                if input_feed is not None:
                    input_feed = out
                outs.append(out)
            x = torch.stack(outs, dim=1)
            if attns:
                attn = torch.stack(attns, dim=1)
        else:
            x, hidden = self.gru(x, hidden)
            x = self.dropout_out_module(x.transpose(0, 1))

        if incremental_state is not None:
            self._set_cached_state(
                incremental_state,
                {
                    "hidden": hidden.transpose(0, 1),
                    "input_feed": input_feed,
                    "source_index": source_index,
                    "position": position + tgt_len,
                    "attention_keys": keys,
                    "attention_values": values,
                    "padding_mask": padding_mask,
                },
            )
        return x, {"attn": [attn], "decoding": incremental_state is not None}

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """In eval mode, step-by-step decoding (fairseq-generate) predicts only real tokens, as
        SEARNN's roll-ins, roll-outs and validation decoding do: a sampled loss (sLL, sLLCAS)
        never trains the scores of BOS, UNK or padding, and a model trained with top-k sampling
        was seen to rank BOS first in most test sentences, which fairseq-generate then emitted
        and printed as nothing. Scoring given targets (the validation loss, --score-reference)
        masks only what no target holds (BOS, padding, fillers): a target may hold UNK, whose
        log-probability must stay finite. Training (MLE's and LL's full softmax included) is
        unchanged."""
        if not self.training:
            extra = net_output[1] if len(net_output) > 1 else None
            decoding = isinstance(extra, dict) and extra.get("decoding", False)
            allowed = self.actions if decoding else self.target_symbols
            net_output = (net_output[0].masked_fill(~allowed, float("-inf")), *net_output[1:])
        return super().get_normalized_probs(net_output, log_probs, sample)

    def output_layer(self, features: Tensor) -> Tensor:
        """Project decoder features (B x T x H) to vocabulary logits."""
        if self.fc_out is not None:
            return self.fc_out(features)
        if self.out_embed_proj is not None:
            features = self.out_embed_proj(features)
        return F.linear(features, self.embed_tokens.weight)

    # Cached state, batch-first. Per decoder row: "hidden" (B x layers x H),
    # "input_feed", "source_index" (the row's source sentence) and "position" (the
    # output position of its next step); per source
    # sentence, never reordered: the projected encoder outputs "attention_keys"
    # (cached because recomputing them would dominate a step's cost), the outputs
    # themselves "attention_values", and "padding_mask". So after its first step the
    # decoder reads nothing from ``encoder_out``, and reordering rows copies only
    # small tensors however many rows share a source.
    reads_encoder_out_once = True
    PER_ROW_STATE = ("hidden", "input_feed", "source_index", "position")

    def _get_cached_state(
        self, incremental_state: Optional[IncrementalState]
    ) -> Optional[Dict[str, Optional[Tensor]]]:
        if incremental_state is None:
            return None
        return self.get_incremental_state(incremental_state, "cached_state")

    def _set_cached_state(
        self, incremental_state: IncrementalState, state: Dict[str, Optional[Tensor]]
    ):
        present: Dict[str, Optional[Tensor]] = {k: t for k, t in state.items() if t is not None}
        self.set_incremental_state(incremental_state, "cached_state", present)

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: Tensor
    ):
        """Select batch rows ``new_order`` (may repeat or drop rows) of the cache."""
        cached = self._get_cached_state(incremental_state)
        if cached is None:
            return
        reordered: Dict[str, Optional[Tensor]] = {
            key: (t.index_select(0, new_order) if key in self.PER_ROW_STATE and t is not None else t)
            for key, t in cached.items()
        }
        self.set_incremental_state(incremental_state, "cached_state", reordered)

    def max_positions(self):
        return DEFAULT_MAX_POSITIONS


def aligned_encoder_states(values: Tensor, padding_mask: Tensor, source_index: Tensor, positions: Tensor) -> Tensor:
    """Row b's encoder output at source position positions[b, t] (B x T x C), zero where that
    position is padding or past the source: ``values`` (sources x S x C, right-padded) and
    ``padding_mask`` (sources x S) are read through each row's ``source_index``."""
    src_len = values.size(1)
    rows = source_index.unsqueeze(1).expand_as(positions)
    within = positions.clamp(max=src_len - 1)
    valid = positions.lt(src_len) & ~padding_mask[rows, within]
    return values[rows, within] * valid.unsqueeze(2).to(values.dtype)


def left_to_right_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """Move each row's ``lengths[b]`` trailing positions (dim 1) to the front.
    Works for token ids (B x S) and dense features (B x S x D)."""
    src_len = x.size(1)
    positions = torch.arange(src_len, device=x.device).unsqueeze(0)
    shift = (src_len - lengths.to(x.device)).unsqueeze(1)
    index = (positions + shift) % src_len  # B x S: padding wraps around to the end
    if x.dim() == 3:
        index = index.unsqueeze(2).expand_as(x)
    return x.gather(1, index)


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def Embedding(num_embeddings, embedding_dim, padding_idx):
    # fairseq's LSTM initialisation; the padding row stays zero.
    m = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    nn.init.uniform_(m.weight, -0.1, 0.1)
    nn.init.constant_(m.weight[padding_idx], 0)
    return m


# Named architectures. fairseq's parser leaves flags that were not given unset, then the
# arch function fills them: explicit flags win, then the arch's settings, then (via
# base_architecture) the dataclass defaults. `--arch searnn_gru` itself needs no function:
# fairseq fills a missing field of the plain model name from the dataclass.


def base_architecture(args):
    for f in fields(SearnnGRUConfig):
        if not f.name.startswith("_"):
            setattr(args, f.name, getattr(args, f.name, f.default))


@register_model_architecture("searnn_gru", "searnn_gru_ocr")
def searnn_gru_ocr(args):
    # Section 4: "an encoder-decoder model with GRU cells of size 128". Each source
    # position is a 16x8 binary letter image, i.e. a 128-d dense vector.
    args.encoder_input_dim = getattr(args, "encoder_input_dim", 128)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 128)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 128)
    args.encoder_layers = getattr(args, "encoder_layers", 1)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 128)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 128)
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    args.decoder_attention = getattr(args, "decoder_attention", False)
    args.decoder_input_feeding = getattr(args, "decoder_input_feeding", False)
    # The paper mentions no dropout for OCR.
    args.dropout = getattr(args, "dropout", 0.0)
    args.decoder_dropout_out = getattr(args, "decoder_dropout_out", 0.0)
    base_architecture(args)


@register_model_architecture("searnn_gru", "searnn_gru_spelling")
def searnn_gru_spelling(args):
    # Section 4: "GRU cells of size 100 with the attention mechanism described in
    # (Bahdanau et al., 2017)".
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 100)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 100)
    args.encoder_layers = getattr(args, "encoder_layers", 1)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 100)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 100)
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    args.decoder_attention = getattr(args, "decoder_attention", True)
    args.decoder_input_feeding = getattr(args, "decoder_input_feeding", False)
    args.dropout = getattr(args, "dropout", 0.0)
    args.decoder_dropout_out = getattr(args, "decoder_dropout_out", 0.0)
    base_architecture(args)


@register_model_architecture("searnn_gru", "searnn_gru_conll")
def searnn_gru_conll(args):
    # Appendix B: 50-d word embeddings and 44-d POS embeddings, concatenated (the POS
    # tags are the source factor of --task factored_translation); two GRU layers of size
    # 172 in encoder and decoder, bidirectional encoder, Bahdanau attention, input
    # feeding, dropout 0.3 between the two layers and on the output of the attention.
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 50)
    args.encoder_factor_embed_dim = getattr(args, "encoder_factor_embed_dim", 44)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 172)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_bidirectional = getattr(args, "encoder_bidirectional", True)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 50)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 172)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention = getattr(args, "decoder_attention", True)
    args.decoder_input_feeding = getattr(args, "decoder_input_feeding", True)
    args.dropout = getattr(args, "dropout", 0.3)
    args.decoder_dropout_out = getattr(args, "decoder_dropout_out", 0.3)
    base_architecture(args)
