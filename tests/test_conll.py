"""CoNLL-2000 chunking: preprocessing/conll.py (errors, normalisation, the staged files), the
two-stream source (--task factored_translation, searnn_gru's factor embedding), the chunk_f1
scorer against seqeval (an independent conlleval) and against the chunk_f1 cost, and a short
pipeline through the real command lines: fairseq-train --arch searnn_gru_conll --criterion
searnn_ll --cost normalized_hamming, fairseq-generate --scoring chunk_f1, seqeval on its output."""

import argparse
import gzip
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from fairseq.data import Dictionary

from data_paths import require_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, REPO)

from examples import runner  # noqa: E402
from examples.conll import run as conll_run  # noqa: E402
from preprocessing import conll  # noqa: E402
from searnn_fairseq.costs import build_cost  # noqa: E402
from searnn_fairseq.rollout import chunk_net_input  # noqa: E402
from searnn_fairseq.scoring import ChunkF1Scorer, conll_chunks  # noqa: E402

TYPES = ("NP", "VP", "PP")


def write(path, text, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)


def toy_sentence(i):
    words = [("The", "DT", "B-NP"), (f"Cat{i % 3}", "NN", "I-NP"), ("sat", "VBD", "B-VP"),
             ("on", "IN", "B-PP"), ("3,000", "CD", "B-NP"), ("mats", "NNS", "I-NP"), (".", ".", "O")]
    return "".join(f"{w} {p} {t}\n" for w, p, t in words[: 3 + i % 5]) + "\n"


def toy_files(root, train=40, gz=False):
    suffix = ".gz" if gz else ""
    write(root / f"train.txt{suffix}", "".join(toy_sentence(i) for i in range(train)), gz)
    write(root / f"test.txt{suffix}", "".join(toy_sentence(i + 1) for i in range(6)), gz)
    return str(root / f"train.txt{suffix}"), str(root / f"test.txt{suffix}")


def run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, **kwargs)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


# ---------------------------------------------------------------- preprocessing: errors


@pytest.mark.parametrize("line, message", [
    ("The DT\n", r"line 2: 2 columns, expected 3"),
    ("The DT B-NP extra\n", r"line 2: 4 columns"),
    ("The DT \n", r"line 2: empty chunk tag"),
    ("The  B-NP\n", r"line 2: empty POS tag"),
    ("The DT NP\n", r"line 2: chunk tag 'NP' is not O, B-X or I-X"),
])
def test_malformed_line_is_named_and_nothing_is_written(tmp_path, line, message):
    bad = tmp_path / "bad.txt"
    write(bad, "He PRP B-NP\n" + line + "\n")
    _, test = toy_files(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(conll.ConllFormatError, match=re.escape(str(bad)) + ", " + message):
        conll.prepare(str(dest), str(bad), test, valid_size=1)
    assert not dest.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temporary directory left


def test_missing_file_and_bad_options(tmp_path):
    train, test = toy_files(tmp_path)
    with pytest.raises(conll.ConllFormatError, match="nope.txt: no such file"):
        conll.prepare(str(tmp_path / "out"), str(tmp_path / "nope.txt"), test)
    with pytest.raises(ValueError, match="--valid-size must be between 1 and 39"):
        conll.prepare(str(tmp_path / "out"), train, test, valid_size=40)
    assert conll.main([str(tmp_path / "out"), "--train", train, "--test", test, "--min-count", "0"]) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- preprocessing: output


def test_words_are_normalised_and_the_split_is_seeded(tmp_path):
    train, test = toy_files(tmp_path, gz=True)
    meta = conll.prepare(str(tmp_path / "a"), train, test, valid_size=5, split_seed=3, min_count=2)
    conll.prepare(str(tmp_path / "b"), train, test, valid_size=5, split_seed=3, min_count=2)
    conll.prepare(str(tmp_path / "c"), train, test, valid_size=5, split_seed=4, min_count=2)
    read = lambda d, name: (tmp_path / d / "raw" / name).read_text()  # noqa: E731
    assert read("a", "valid.words") == read("b", "valid.words") != read("c", "valid.words")
    assert meta["splits"]["train"]["sentences"] == 35 and meta["splits"]["valid"]["sentences"] == 5
    first_test = read("a", "test.words").splitlines()[0].split()
    assert first_test == ["the", "cat1", "sat", "on"]
    assert "<NUM>" in read("a", "train.words") and "3,000" not in read("a", "train.words")
    assert read("a", "test.chunk").splitlines()[0] == "B-NP I-NP B-VP B-PP"
    assert read("a", "test.pos").splitlines()[0] == "DT NN VBD IN"
    words = [line.split()[0] for line in (tmp_path / "a" / "dict.words.txt").read_text().splitlines()]
    assert "the" in words and "<NUM>" in words
    for split in conll.SPLITS:  # the three streams of the binarised data, aligned
        for stream in ("words", "pos", "chunk"):
            assert (tmp_path / "a" / f"{split}.words-chunk.{stream}.bin").exists()


def test_min_count_and_pretrained_embeddings(tmp_path):
    train, test = toy_files(tmp_path, train=12)
    vectors = tmp_path / "vectors.txt"
    write(vectors, "sat 0.5 0.5\nCAT0 1 2\nzebra 3 3\n")
    meta = conll.prepare(str(tmp_path / "out"), train, test, valid_size=2, min_count=100,
                         pretrained_embeddings=str(vectors))
    words = {line.split()[0] for line in (tmp_path / "out" / "dict.words.txt").read_text().splitlines()}
    assert words == {"sat", "cat0"}  # nothing is frequent enough; the words with a vector stay
    lines = (tmp_path / "out" / "embeddings.words.txt").read_text().splitlines()
    assert lines[0] == "2 2" and sorted(lines[1:]) == ["cat0 1 2", "sat 0.5 0.5"]
    assert meta["words"]["with_pretrained_vector"] == 2

    meta = conll.prepare(str(tmp_path / "all"), train, test, valid_size=2, min_count=100,
                         pretrained_embeddings=str(vectors), all_pretrained_words=True)
    words = [line.split() for line in (tmp_path / "all" / "dict.words.txt").read_text().splitlines()]
    assert sorted(w for w, _ in words) == ["cat0", "sat", "zebra"] and dict(words)["zebra"] == "0"
    assert meta["words"]["with_pretrained_vector"] == 3
    with pytest.raises(ValueError, match="needs --pretrained-embeddings"):
        conll.prepare(str(tmp_path / "none"), train, test, valid_size=2, all_pretrained_words=True)


def test_staged_conll2000_counts(conll_data):
    import json

    meta = json.loads((conll_data / "meta.json").read_text())
    assert {s: meta["splits"][s]["sentences"] for s in conll.SPLITS} == {"train": 7936, "valid": 1000, "test": 2012}
    assert meta["splits"]["test"]["tokens"] == 47377 and meta["splits"]["test"]["max_length"] == 70
    assert meta["words"]["dictionary_size"] == 7855
    assert meta["unknown_tokens"]["test"]["chunk"] == 2  # I-LST, absent from the training file
    assert meta["unknown_tokens"]["train"]["pos"] == 0


# ---------------------------------------------------------------- chunks and chunk F1


@pytest.mark.parametrize("tags, chunks", [
    ("B-NP I-NP O B-VP", [(0, 2, "NP"), (3, 4, "VP")]),
    ("I-NP I-NP B-NP", [(0, 2, "NP"), (2, 3, "NP")]),  # I- at the start opens a chunk
    ("B-NP I-VP I-VP", [(0, 1, "NP"), (1, 3, "VP")]),  # I- of another type opens one
    ("O <unk> B-PP", [(2, 3, "PP")]),  # anything but B-X / I-X is outside
    ("", []),
])
def test_conll_chunks_by_hand(tags, chunks):
    assert conll_chunks(tags.split()) == chunks


def random_tags(rng, n):
    return [rng.choice(["O", *(f"{p}-{t}" for p in "BI" for t in TYPES)]) for _ in range(n)]


def test_chunk_f1_scorer_agrees_with_seqeval_and_with_the_cost():
    """Corpus F1 equals seqeval's (conlleval's rules) on random tag sequences; per sentence,
    1 - F1 equals the chunk_f1 cost, the costs' own implementation."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = random.Random(0)
    refs = [random_tags(rng, rng.randint(1, 12)) for _ in range(400)]
    hyps = [[t if rng.random() < 0.7 else rng.choice(["O", "B-NP", "I-VP"]) for t in ref] for ref in refs]
    scorer = ChunkF1Scorer()
    for ref, hyp in zip(refs, hyps):
        scorer.add_string(" ".join(ref), " ".join(hyp))
    assert scorer.score() == pytest.approx(100 * f1_score(refs, hyps), abs=1e-9)
    assert scorer.precision() == pytest.approx(100 * precision_score(refs, hyps), abs=1e-9)
    assert scorer.recall() == pytest.approx(100 * recall_score(refs, hyps), abs=1e-9)
    assert "CHUNK_F1 = " in scorer.result_string()

    tags = Dictionary()
    for s in ["O", *(f"{p}-{t}" for p in "BI" for t in TYPES)]:
        tags.add_symbol(s)
    cost = build_cost("chunk_f1", tags)
    for ref, hyp in zip(refs[:60], [h[: rng.randint(0, len(h))] + random_tags(rng, 2) for h in hyps[:60]]):
        one = ChunkF1Scorer()
        one.add_string(" ".join(ref), " ".join(hyp))
        expected = 1 - one.score() / 100 if (one.gold or one.predicted) else 0.0
        as_ids = lambda seq: torch.tensor([[tags.index(t) for t in seq] or [tags.pad()]])  # noqa: E731
        got = cost(as_ids(hyp), torch.tensor([len(hyp)]), as_ids(ref), torch.tensor([len(ref)]))
        assert got.item() == pytest.approx(expected, abs=1e-6), (ref, hyp)


def test_chunk_scores_fit_hypotheses_to_the_reference_length():
    output = "H-0\t-0.1\tB-NP I-NP B-VP I-VP\nH-1\t-0.2\tB-PP\n"
    scores = conll_run.chunk_scores(output, ["B-NP I-NP B-VP", "B-PP B-NP"])
    assert scores["length_mismatches"] == 2
    # 4 reference chunks; as generated: NP, VP (too long) and PP predicted, 2 correct
    assert scores["chunk_f1"] == pytest.approx(round(100 * 2 * 2 / (3 + 4), 2))
    # fitted: the VP cut to the reference length is correct, the missing tag padded with O
    assert scores["chunk_f1_fitted"] == scores["seqeval_f1_fitted"] == pytest.approx(round(100 * 2 * 3 / (3 + 4), 2))


def test_tag_errors_are_split_by_whether_the_word_is_in_the_dictionary():
    gold = [["B-NP", "I-NP", "B-VP"], ["B-PP", "B-NP"]]
    hyps = [["B-NP", "B-NP", "B-VP"], ["O", "B-NP"]]
    words = [["the", "zorp", "ran"], ["of", "glim"]]
    errors = conll_run.tag_errors_by_dictionary(gold, hyps, words, {"the", "ran", "of"})
    # known: the, ran, of (1 wrong of 3); unknown: zorp, glim (1 wrong of 2)
    assert errors == {"tag_error_known_words": 33.33, "tag_error_unknown_words": 50.0, "unknown_word_share": 40.0}
    with pytest.raises(ValueError, match="a sentence of 2 words has 3 tags"):
        conll_run.tag_errors_by_dictionary(gold, hyps, [["the", "ran"], ["of", "glim"]], {"the"})


# ---------------------------------------------------------------- the two-stream source


def factored_task(data, left_pad_source=True):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", os.path.join(REPO, "searnn_fairseq"), *conll_run.TASK,
        "--arch", "searnn_gru_conll", "--encoder-hidden-size", "8", "--decoder-hidden-size", "8",
        "--encoder-embed-dim", "6", "--decoder-embed-dim", "6", "--encoder-factor-embed-dim", "4",
        "--criterion", "searnn_ll", "--cost", "normalized_hamming",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    cfg.task.left_pad_source = left_pad_source
    return tasks.setup_task(cfg.task), cfg


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll-toy")
    train, test = toy_files(root, train=30)
    conll.prepare(str(root / "data"), train, test, valid_size=4, min_count=1)
    return root / "data"


@pytest.mark.parametrize("left_pad", [True, False])
def test_batches_carry_the_factor_aligned_with_the_source(toy_data, left_pad):
    from fairseq.utils import strip_pad

    task, _ = factored_task(toy_data, left_pad)
    task.load_dataset("train")
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[i] for i in range(8)])
    src, factor = batch["net_input"]["src_tokens"], batch["net_input"]["src_factor"]
    assert factor.shape == src.shape
    assert torch.equal(factor.eq(task.factor_dict.pad()), src.eq(task.src_dict.pad()))
    for row, index in enumerate(batch["id"].tolist()):
        words = task.src_dict.string(strip_pad(src[row], task.src_dict.pad())).split()
        tags = task.factor_dict.string(strip_pad(factor[row], task.factor_dict.pad())).split()
        raw_words = (toy_data / "raw" / "train.words").read_text().splitlines()[index].split()
        raw_pos = (toy_data / "raw" / "train.pos").read_text().splitlines()[index].split()
        assert (words, tags) == (raw_words, raw_pos)


def test_the_encoder_reads_the_factor_and_chunks_keep_it_aligned(toy_data):
    task, cfg = factored_task(toy_data, left_pad_source=True)
    task.load_dataset("train")
    model = task.build_model(cfg.model).eval()
    dataset = task.dataset("train")
    net_input = dataset.collater([dataset[i] for i in range(6)])["net_input"]
    out = model.encoder(net_input["src_tokens"], net_input["src_lengths"], src_factor=net_input["src_factor"])
    other = net_input["src_factor"].clone()
    other[net_input["src_factor"].ne(task.factor_dict.pad())] = task.factor_dict.index("NN")
    changed = model.encoder(net_input["src_tokens"], net_input["src_lengths"], src_factor=other)
    assert not torch.allclose(out["encoder_final_hidden"][0], changed["encoder_final_hidden"][0])
    with pytest.raises(ValueError, match="reads a source factor"):
        model.encoder(net_input["src_tokens"], net_input["src_lengths"])
    # a chunk of sentences loses the all-padding columns of both streams together
    chunk = chunk_net_input(net_input, slice(0, 1), task.src_dict.pad())
    assert chunk["src_factor"].shape == chunk["src_tokens"].shape
    single = model.encoder(**chunk)
    assert torch.allclose(single["encoder_final_hidden"][0], out["encoder_final_hidden"][0][:1], atol=1e-6)


def test_misaligned_factor_and_missing_task_are_clear_errors(toy_data, tmp_path):
    import shutil

    from fairseq import options, tasks

    from searnn_fairseq.tasks.factored_translation import check_aligned

    broken = tmp_path / "broken"
    shutil.copytree(toy_data, broken)
    for ext in ("bin", "idx"):  # the test split's POS stream replaced by the training split's
        shutil.copy(broken / f"train.words-chunk.pos.{ext}", broken / f"test.words-chunk.pos.{ext}")
    task, _ = factored_task(broken)
    with pytest.raises(ValueError, match=r"test.words-chunk.pos: 26 factor sentences for 6 source sentences"):
        task.load_dataset("test")
    with pytest.raises(ValueError, match=r"sentence 0 has 1 factor tokens but 3 source tokens \(1 sentences differ\)"):
        check_aligned([3, 4], [1, 4], "x")

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(toy_data), "--user-dir", os.path.join(REPO, "searnn_fairseq"), "--task", "translation",
        "-s", "words", "-t", "chunk", "--arch", "searnn_gru_conll"])
    with pytest.raises(ValueError, match="needs a task with a source factor"):
        tasks.setup_task(args).build_model(args)


# ---------------------------------------------------------------- the real command lines


@pytest.fixture(scope="module")
def conll_data(tmp_path_factory):
    train = require_data("conll2000/train.txt.gz", "CoNLL-2000")
    test = require_data("conll2000/test.txt.gz", "CoNLL-2000")
    dest = tmp_path_factory.mktemp("conll") / "data"
    assert conll.main([str(dest), "--train", str(train), "--test", str(test)]) == 0
    return dest


def test_the_finetune_grid_starts_each_seed_from_table_1s_mle_run():
    main = {run.name: run for run in conll_run.runs("main", [1, 2])}
    finetune = conll_run.runs("finetune", [1, 2])
    sources = [run for run in finetune if run.init_from is None]
    # the same run directories and flags as Table 1's MLE: fine-tuning trains no second baseline
    assert [(run.name, run.flags) for run in sources] == [(f"mle-seed{s}", main[f"mle-seed{s}"].flags) for s in (1, 2)]
    tuned = [run for run in finetune if run.init_from is not None]
    assert sorted(run.name for run in tuned) == ["ll-learned-mixed-from-mle-seed1", "ll-learned-mixed-from-mle-seed2",
                                                 "mle-continued-seed1", "mle-continued-seed2"]
    experiment = runner.Experiment(task="conll", data="DATA", work_dir="WORK", common=conll_run.COMMON,
                                   scoring="hamming", generate_flags=conll_run.GENERATE)
    for run in tuned:
        command = runner.train_command(experiment, run, "SAVE")
        assert command[command.index("--finetune-from-model") + 1] == os.path.join("WORK", f"mle-seed{run.seed}",
                                                                                    "checkpoint_best.pt")
        # the budget comes after COMMON's, and argparse keeps a flag's last value
        parsed = argparse.ArgumentParser()
        parsed.add_argument("--max-epoch", type=int)
        parsed.add_argument("--patience", type=int)
        assert vars(parsed.parse_known_args(command)[0]) == {"max_epoch": 10, "patience": 3}


def test_every_grid_row_reads_the_aligned_input_and_the_paper_decoder_and_the_vectors_are_recorded_apart():
    for grid in ("all", "finetune"):
        assert all(run.flags[-1:] == conll_run.ALIGNED_DECODER for run in conll_run.runs(grid))
        assert not any("--decoder-aligned-input" in run.flags for run in conll_run.runs(grid, model=[]))
    aligned, paper = conll_run.arguments([]), conll_run.arguments(["--paper-decoder"])
    vectors, paper_vectors = (conll_run.arguments([*flags, "--word-vectors"]) for flags in ([], ["--paper-decoder"]))
    assert (conll_run.model_flags(aligned), conll_run.model_flags(paper)) == (conll_run.ALIGNED_DECODER, [])
    embeddings = os.path.join(REPO, "runs", "conll-vectors", "data", "embeddings.words.txt")
    assert conll_run.model_flags(vectors) == [*conll_run.ALIGNED_DECODER, "--encoder-embed-path", embeddings]
    assert vectors.word_vectors == conll_run.BUILT_VECTORS
    # apart in results, snapshots and run directories: a run of one model never resumes from the
    # other's checkpoint (their run names are the same)
    for args, key in ((aligned, "conll"), (paper, "conll-paper-decoder"), (vectors, "conll-vectors"),
                      (paper_vectors, "conll-paper-decoder-vectors")):
        experiment = conll_run.experiment(args, "DATA")
        assert experiment.task == key
        assert experiment.results == runner.default_results(key)
        assert args.work_dir == os.path.join(REPO, "runs", key)
    finetune = conll_run.experiment(conll_run.arguments(["--paper-decoder", "--grid", "finetune"]), "DATA")
    assert finetune.results == runner.default_results("conll-paper-decoder-finetune")
    diagnostic = conll_run.experiment(conll_run.arguments(["--paper-decoder", "--extra-flags=--clip-norm 5"]), "DATA")
    assert diagnostic.results == runner.default_results("conll-paper-decoder-diagnostics")


def test_prepare_refuses_data_made_with_other_word_vectors(tmp_path, monkeypatch):
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    (data / "meta.json").write_text('{"words": {"pretrained_embeddings": null}}')
    monkeypatch.setattr(conll_run.subprocess, "run", lambda *a, **k: pytest.fail("the data exists: nothing to make"))
    assert conll_run.prepare(str(tmp_path), str(tmp_path / "work")) == str(data)
    with pytest.raises(SystemExit, match="made with word vectors None"):
        conll_run.prepare(str(tmp_path), str(tmp_path / "work"), str(tmp_path / "vectors.txt"))


def test_train_and_generate_with_chunk_f1_agree_with_seqeval(conll_data, tmp_path):
    """A tiny searnn_gru_conll: MLE for 300 updates, then searnn_ll from it; chunk F1 of its test
    predictions by fairseq-generate --scoring chunk_f1, by the example's scorer on the raw tags,
    and by seqeval."""
    tiny = ["--arch", "searnn_gru_conll", "--encoder-embed-dim", "16", "--encoder-factor-embed-dim", "8",
            "--decoder-embed-dim", "16", "--encoder-hidden-size", "24", "--decoder-hidden-size", "24",
            "--encoder-layers", "1", "--decoder-layers", "1"]
    common = [os.path.join(BIN, "fairseq-train"), str(conll_data), "--user-dir", "searnn_fairseq", *conll_run.TASK,
              *tiny, "--cost", "normalized_hamming", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "64",
              "--valid-max-len-a", "1", "--valid-max-len-b", "5", "--max-valid-steps", "2", "--cpu",
              "--num-workers", "0", "--no-epoch-checkpoints", "--log-interval", "20", "--seed", "1"]
    run([*common, "--criterion", "searnn_mle", "--max-update", "300", "--validate-interval-updates", "300",
         "--save-dir", str(tmp_path / "mle")])
    log = run([*common, "--criterion", "searnn_ll", "--rollin", "learned", "--rollout", "mixed", *conll_run.SEARCH,
               "--max-update", "10", "--validate-interval-updates", "10", "--save-dir", str(tmp_path / "ll"),
               "--finetune-from-model", str(tmp_path / "mle" / "checkpoint_best.pt")])
    assert "done training" in log and "rollout_cost" in log
    out = run([os.path.join(BIN, "fairseq-generate"), str(conll_data), "--user-dir", "searnn_fairseq",
               *conll_run.GENERATE, "--path", str(tmp_path / "ll" / "checkpoint_best.pt"), "--gen-subset", "test",
               "--beam", "1", "--batch-size", "512", "--scoring", "chunk_f1", "--cpu"])
    line = re.search(r"CHUNK_F1 = ([0-9.]+) \(precision ([0-9.]+), recall ([0-9.]+); (\d+) correct", out)
    assert line, out[-2000:]
    scores = conll_run.test_metrics(str(conll_data))(out)
    # the scorer in fairseq-generate (T- lines: <unk> for the 2 I-LST tags) and on the raw tags
    assert abs(float(line.group(1)) - scores["chunk_f1"]) < 0.05
    # conlleval's rules, implemented twice, on the model's predictions
    assert scores["chunk_f1_fitted"] == scores["seqeval_f1_fitted"]
    # thousands of chunks, right and wrong ones: the comparison is not vacuous
    predicted = int(re.search(r"of (\d+) predicted", out).group(1))
    assert int(line.group(4)) > 500 and predicted - int(line.group(4)) > 500, line.group(0)
    # test words outside the training words seen twice (7,855 of them)
    assert scores["unknown_word_share"] == 8.52
    # the exposure diagnostic on the same checkpoint, through its command line
    gap = run([sys.executable, os.path.join(runner.REPO, "examples", "exposure_gap.py"), str(conll_data),
               "--path", str(tmp_path / "ll" / "checkpoint_best.pt"), "--user-dir", "searnn_fairseq",
               *conll_run.TASK, "--criterion", "searnn_mle", "--cost", "normalized_hamming",
               "--valid-max-len-a", "1", "--valid-max-len-b", "5", "--batches", "2", "--cpu"])
    assert "| sentences / reference tokens | 256 / " in gap and "| disagreements on the reference's path | 0 |" in gap
