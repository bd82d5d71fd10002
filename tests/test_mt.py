"""Translation: preprocessing/mt.py (its error cases and its output), and a tiny pipeline through the
real command lines: sentencepiece on a few hundred Multi30k lines, a few ``searnn_kl --cost bleu
--reference-rollout best`` updates of a transformer, ``fairseq-generate --scoring sacrebleu
--post-process sentencepiece``, and examples/mt's sacreBLEU against the raw references."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from data_paths import require_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, REPO)

from preprocessing import mt  # noqa: E402
from examples.mt import run as mt_run  # noqa: E402

TINY_TRANSFORMER = [
    "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def write(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def toy_corpus(root, train=60, gz=False):
    """A small parallel corpus: counting words, so that sentencepiece has something to learn."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    german = ["eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht"]
    suffix = ".gz" if gz else ""
    for split, count in (("train", train), ("valid", 8), ("test", 8)):
        en = [" ".join(words[(i + j) % 8] for j in range(1 + i % 5)) for i in range(count)]
        de = [" ".join(german[(i + j) % 8] for j in range(1 + i % 5)) for i in range(count)]
        write(root / f"{split}.en{suffix}", en, gz)
        write(root / f"{split}.de{suffix}", de, gz)
    return {split: str(root / split) for split in mt.SPLITS}


# ---------------------------------------------------------------- preprocessing: errors


def test_missing_file_is_named_and_nothing_is_written(tmp_path):
    prefixes = toy_corpus(tmp_path)
    os.remove(tmp_path / "valid.de")
    dest = tmp_path / "out"
    with pytest.raises(mt.ParallelDataError, match=r"valid\.de: no such file"):
        mt.prepare(str(dest), prefixes, "en", "de", vocab_size=40)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_unequal_line_counts_name_both_files_and_counts(tmp_path):
    prefixes = toy_corpus(tmp_path)
    write(tmp_path / "train.de", ["eins"] * 59)
    with pytest.raises(mt.ParallelDataError, match=r"train\.en has 60 lines but .*train\.de has 59"):
        mt.prepare(str(tmp_path / "out"), prefixes, "en", "de", vocab_size=40)
    assert not (tmp_path / "out").exists()


def test_empty_and_non_utf8_files_are_refused(tmp_path):
    prefixes = toy_corpus(tmp_path)
    write(tmp_path / "test.en", [])
    with pytest.raises(mt.ParallelDataError, match=r"test\.en: empty file"):
        mt.prepare(str(tmp_path / "out"), prefixes, "en", "de", vocab_size=40)
    (tmp_path / "test.en").write_bytes(b"caf\xe9\n" * 8)
    with pytest.raises(mt.ParallelDataError, match=r"test\.en: not UTF-8"):
        mt.prepare(str(tmp_path / "out"), prefixes, "en", "de", vocab_size=40)


def test_command_line_errors_exit_nonzero_with_the_message(tmp_path, capsys):
    prefixes = toy_corpus(tmp_path)
    args = [str(tmp_path / "out"), "--trainpref", prefixes["train"], "--validpref", prefixes["valid"],
            "--testpref", str(tmp_path / "nowhere"), "-s", "en", "-t", "de", "--vocab-size", "40"]
    assert mt.main(args) == 1
    assert "nowhere.en: no such file" in capsys.readouterr().err
    assert mt.main(args[:5] + ["--testpref", prefixes["test"], "-s", "en", "-t", "en"]) == 1
    assert "both 'en'" in capsys.readouterr().err


def test_too_many_pieces_asks_for_a_smaller_vocabulary(tmp_path):
    prefixes = toy_corpus(tmp_path, train=10)
    with pytest.raises(mt.ParallelDataError, match="smaller --vocab-size"):
        mt.prepare(str(tmp_path / "out"), prefixes, "en", "de", vocab_size=8000)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_without_force(tmp_path):
    prefixes = toy_corpus(tmp_path, gz=True)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me\n")
    with pytest.raises(FileExistsError):
        mt.prepare(str(dest), prefixes, "en", "de", vocab_size=40)
    assert (dest / "mine.txt").read_text() == "keep me\n"


# ---------------------------------------------------------------- preprocessing: output


def test_output_round_trips_and_binarises_with_one_dictionary(tmp_path):
    prefixes = toy_corpus(tmp_path, gz=True)
    dest = tmp_path / "out"
    meta = mt.prepare(str(dest), prefixes, "en", "de", vocab_size=40, model_type="bpe")
    for name in ("spm.model", "dict.en.txt", "dict.de.txt", "train.en-de.en.bin", "test.en-de.de.idx", "raw/test.de"):
        assert (dest / name).exists(), name
    assert (dest / "dict.en.txt").read_text() == (dest / "dict.de.txt").read_text()
    assert meta["splits"]["train"]["en"]["lines"] == 60
    assert all(meta["splits"][s][lang]["not_round_trip"] == 0 for s in mt.SPLITS for lang in ("en", "de"))
    assert json.loads((dest / "meta.json").read_text())["sentencepiece"]["model_type"] == "bpe"
    # the sentencepiece model was trained on train only: a word seen only in test is split up
    decoded = mt.decode(str(dest / "spm.model"), (dest / "spm" / "test.de").read_text().splitlines())
    assert decoded == (dest / "raw" / "test.de").read_text().splitlines()


# ---------------------------------------------------------------- scoring


def test_sacrebleu_score_matches_sacrebleu_and_refuses_missing_hypotheses():
    import sacrebleu

    refs = ["Ein Hund läuft im Park.", "Zwei Männer spielen Fußball."]
    hyps = {0: "Ein Hund rennt im Park.", 1: "Zwei Männer spielen Fußball."}
    result = mt_run.sacrebleu_score(hyps, refs)
    assert result["bleu"] == round(sacrebleu.corpus_bleu(list(hyps.values()), [refs]).score, 2)
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    with pytest.raises(RuntimeError, match="1 hypotheses for 2 references"):
        mt_run.sacrebleu_score({0: "x"}, refs)


def test_hypotheses_are_read_from_generate_output():
    output = "S-1\tsrc\nT-1\tref\nH-1\t-0.5\tZwei Männer.\nD-1\t-0.5\tZwei Männer.\nH-0\t-0.1\t\n"
    assert mt_run.runner.generated_hypotheses(output) == {1: "Zwei Männer.", 0: ""}


# ---------------------------------------------------------------- the pipeline, end to end


@pytest.fixture(scope="module")
def multi30k_subset(tmp_path_factory):
    source = require_data("multi30k/train.en.gz", "Multi30k").parent
    root = tmp_path_factory.mktemp("multi30k")
    sizes = {"train": 300, "val": 24, "test_2016_flickr": 24}
    for name, count in sizes.items():
        for lang in ("en", "de"):
            with gzip.open(source / f"{name}.{lang}.gz", "rt", encoding="utf-8") as f:
                write(root / f"{name}.{lang}", [next(f).rstrip("\n") for _ in range(count)])
    dest = root / "bin"
    run([sys.executable, "preprocessing/mt.py", str(dest), "--trainpref", str(root / "train"),
         "--validpref", str(root / "val"), "--testpref", str(root / "test_2016_flickr"),
         "-s", "en", "-t", "de", "--vocab-size", "400"])
    return dest


def test_searnn_kl_bleu_trains_and_generate_scores_with_sacrebleu(multi30k_subset, tmp_path):
    data = str(multi30k_subset)
    save = tmp_path / "ckpt"
    log = run([f"{BIN}/fairseq-train", data, "--user-dir", "searnn_fairseq", *mt_run.TASK, *TINY_TRANSFORMER,
               "--criterion", "searnn_kl", "--cost", "bleu", "--reference-rollout", "best",
               "--rollin", "learned", "--rollout", "mixed", "--token-sampling", "topk", "--sampled-tokens", "3",
               "--sampled-cells", "2", "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "600",
               "--max-update", "4", "--save-dir", str(save), "--cpu", "--num-workers", "0", "--no-epoch-checkpoints",
               "--log-format", "simple", "--log-interval", "1", "--seed", "1"])
    assert "rollout_cost" in log
    assert (save / "checkpoint_best.pt").exists()
    result = mt_run.evaluate(data, str(save), beam=2, threads=1)
    assert 0.0 <= result["bleu"] <= 100.0
    assert result["fairseq_bleu"] is not None
    assert "tok:13a" in result["signature"]
    generate_log = (save / "generate_test_beam2.log").read_text()
    # --post-process sentencepiece: the hypotheses are text, not pieces
    assert "▁" not in "".join(mt_run.runner.generated_hypotheses(generate_log).values())
