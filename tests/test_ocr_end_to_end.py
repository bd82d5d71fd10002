"""A tiny OCR run through the real command lines: preprocess -> fairseq-train -> fairseq-generate."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_paths import REPO, require_data

SLICE_LINES = 2000
TIMEOUT_S = 300


def tool(name: str) -> str:
    """A console script of the interpreter running the tests (the project's venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} not found next to {sys.executable}: run the tests with the project's venv")
    return str(path)


def run(cmd):
    # cwd=REPO so that `--user-dir searnn_fairseq` resolves; the environment is inherited unchanged.
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"command failed ({done.returncode}): {' '.join(cmd)}\n{output[-6000:]}"
    return done.stdout, output


@pytest.fixture(scope="module")
def ocr_bin(tmp_path_factory):
    source = require_data("ocr/letter.data.gz", "OCR (ocr/letter.data.gz)")
    lines = []
    with gzip.open(source, "rt", newline="") as f:
        for line in f:
            lines.append(line)
            if len(lines) >= SLICE_LINES:
                break
    last_end = max(i for i, line in enumerate(lines) if line.split("\t")[2] == "-1")
    work = tmp_path_factory.mktemp("ocr_e2e")
    sliced = work / "letter.data"
    sliced.write_text("".join(lines[: last_end + 1]))
    dest = work / "bin"
    stdout, _ = run([sys.executable, "preprocessing/ocr.py", str(sliced), str(dest)])
    assert "wrote" in stdout
    return dest


@pytest.fixture(scope="module")
def checkpoint(ocr_bin):
    save_dir = ocr_bin.parent / "checkpoints"
    _, output = run(
        [
            tool("fairseq-train"), str(ocr_bin),
            "--user-dir", "searnn_fairseq",
            "--task", "dense_seq2seq",
            "--arch", "searnn_gru_ocr",
            "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
            "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
            "--criterion", "searnn_llcas", "--cost", "hamming",
            "--rollin", "learned", "--rollout", "mixed",
            "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "16",
            "--max-update", "3", "--cpu", "--seed", "1", "--num-workers", "0",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--log-format", "simple", "--log-interval", "1",
        ]
    )
    assert "valid on 'valid' subset" in output  # validation ran (criterion in eval mode)
    assert re.search(r"num_updates 3", output)
    best = save_dir / "checkpoint_best.pt"
    assert best.is_file()
    return best


@pytest.mark.parametrize("beam, scoring", [(1, "hamming"), (5, "edit")])
def test_generate_scores_every_test_word(ocr_bin, checkpoint, beam, scoring):
    n_test = json.loads((ocr_bin / "meta.json").read_text())["words"]["test"]
    stdout, output = run(
        [
            tool("fairseq-generate"), str(ocr_bin),
            "--user-dir", "searnn_fairseq",
            "--task", "dense_seq2seq",
            "--path", str(checkpoint),
            "--gen-subset", "test",
            "--scoring", scoring,
            "--beam", str(beam),
            "--batch-size", "16",
            # An untrained model rarely emits EOS: cap the output at source length + 2.
            "--max-len-a", "1", "--max-len-b", "2",
            "--cpu", "--num-workers", "0",
        ]
    )
    label = scoring.upper()
    match = re.search(rf"Generate test with beam={beam}: {label} = (\d+\.\d\d) \((\d+) errors / (\d+) reference tokens, (\d+) sentences\)", stdout)
    assert match, output[-4000:]
    score, errors, ref_tokens, sentences = float(match.group(1)), *map(int, match.group(2, 3, 4))
    # Every test word is scored (fairseq 0.12 would drop a last partial batch).
    assert sentences == n_test
    targets = (ocr_bin / "test.tgt").read_text().splitlines()
    assert ref_tokens == sum(len(t.split()) for t in targets)
    assert score == pytest.approx(100.0 * errors / ref_tokens, abs=0.005)
    hyps = [line for line in stdout.splitlines() if line.startswith("H-")]
    refs = sorted(line.split("\t", 1)[1] for line in stdout.splitlines() if line.startswith("T-"))
    assert len(hyps) == n_test and refs == sorted(targets)
    assert not any(line.startswith("S-") for line in stdout.splitlines())  # no source dictionary


def load_task(data, *extra):
    from fairseq import options, tasks

    import searnn_fairseq.tasks  # noqa: F401  (registers dense_seq2seq)

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data), "--task", "dense_seq2seq", "--arch", "searnn_gru", "--cpu", *extra]
    )
    return tasks.setup_task(args), args


def test_dense_batches_have_the_language_pair_layout(ocr_bin):
    import numpy as np
    import torch

    task, _ = load_task(ocr_bin)
    assert task.source_dictionary is None and len(task.target_dictionary) == 30
    task.load_dataset("test")
    dataset = task.dataset("test")
    features = np.load(ocr_bin / "test.src.npy")
    offsets = np.load(ocr_bin / "test.src.offsets.npy")
    eos, pad = task.target_dictionary.eos(), task.target_dictionary.pad()
    seen = []
    # 5 per batch with the default --required-batch-size-multiple 8: the tail batch must survive.
    itr = task.get_batch_iterator(dataset, max_sentences=5, max_positions=task.max_positions(),
                                  required_batch_size_multiple=8)
    for batch in itr.next_epoch_itr(shuffle=False):
        src, lengths = batch["net_input"]["src_tokens"], batch["net_input"]["src_lengths"]
        target, prev = batch["target"], batch["net_input"]["prev_output_tokens"]
        assert src.dtype == torch.float32 and src.dim() == 3 and src.size(2) == 128
        assert src.size(1) == int(lengths.max()) and lengths.tolist() == sorted(lengths.tolist(), reverse=True)
        tgt_lengths = target.ne(pad).sum(1)
        assert batch["ntokens"] == int(tgt_lengths.sum()) and batch["nsentences"] == len(lengths)
        for row, example in enumerate(batch["id"].tolist()):
            n = int(lengths[row])
            expected = torch.from_numpy(features[offsets[example] : offsets[example + 1]].astype(np.float32))
            assert torch.equal(src[row, :n], expected) and not src[row, n:].any()  # right padding with zeros
            m = int(tgt_lengths[row])
            assert m == n + 1 and target[row, m - 1] == eos  # OCR: one letter per image, then EOS
            assert prev[row, 0] == eos and torch.equal(prev[row, 1:m], target[row, : m - 1])
            assert prev[row, m:].eq(pad).all()
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(len(dataset)))


def test_build_model_gets_the_input_dim_from_the_task(ocr_bin):
    task, args = load_task(ocr_bin, "--encoder-hidden-size", "8", "--decoder-hidden-size", "8")
    assert getattr(args, "encoder_input_dim", 0) == 0  # plain searnn_gru: token input unless told otherwise
    model = task.build_model(args)
    assert model.encoder.input_dim == 128 and args.encoder_input_dim == 128
    task, args = load_task(ocr_bin, "--encoder-input-dim", "64")
    with pytest.raises(ValueError, match="--encoder-input-dim 64 does not match"):
        task.build_model(args)
