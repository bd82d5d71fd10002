"""preprocessing/spelling.py --text: the spelling task built from plain UTF-8 text files."""

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from preprocessing import spelling  # noqa: E402

# Sentences that exercise the normalisation: case, runs of whitespace, characters outside the
# alphabet (apostrophe, accent, hyphen, quotes), digits, punctuation, texts longer than 10 characters.
SENTENCES = [
    "The President's  speech\twas short .",
    "Café prices rose 3.5 % in May !",
    "  leading and trailing spaces  ",
    "Why ?",
    "x",
    "A well-known \"quoted\" phrase",
] + [f"Sentence number {i} of the little corpus ." for i in range(34)]


def write_text(path: Path, lines, line_end="\n") -> Path:
    path.write_bytes(line_end.join(lines).encode("utf-8") + line_end.encode())
    return path


def tiny_abc(path: Path, lines) -> Path:
    """An abc.zip holding only abc/rural.txt (UTF-8), the member read_abc reads first."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("abc/rural.txt", "\n".join(lines) + "\n")
    return path


def raw_files(dest: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((dest / "raw").iterdir())}


def test_text_files_give_the_same_dataset_as_the_same_sentences_in_a_zip(tmp_path):
    # blank lines are skipped as in the zips, CRLF line ends and a byte-order mark are read as text
    lines = SENTENCES[:20] + ["", "   "] + SENTENCES[20:]
    first = write_text(tmp_path / "a.txt", lines[:10], line_end="\r\n")
    first.write_bytes(b"\xef\xbb\xbf" + first.read_bytes())
    second = write_text(tmp_path / "b.txt", lines[10:])
    from_text = spelling.prepare(str(tmp_path / "text"), text=[str(first), str(second)], p=0.3)
    from_zip = spelling.prepare(str(tmp_path / "zip"), abc=str(tiny_abc(tmp_path / "abc.zip", SENTENCES)), p=0.3)

    assert raw_files(tmp_path / "text") == raw_files(tmp_path / "zip")
    assert from_text["splits"] == from_zip["splits"]
    assert sum(from_text["splits"][s]["sentences"] for s in spelling.SPLITS) == len(SENTENCES)
    targets = [spelling.from_tokens(line) for s in spelling.SPLITS
               for line in (tmp_path / "text" / "raw" / f"{s}.tgt").read_text().splitlines()]
    assert sorted(targets) == sorted(spelling.clip(spelling.normalise(x), 10) for x in SENTENCES)
    assert "the presid" in targets and "caf# price" in targets and "a well#kno" in targets

    # binarised for fairseq, and the inputs recorded
    for split in spelling.SPLITS:
        for side in ("src", "tgt"):
            assert (tmp_path / "text" / f"{split}.src-tgt.{side}.bin").stat().st_size > 0
    meta = json.loads((tmp_path / "text" / "meta.json").read_text())
    assert [entry["path"] for entry in meta["inputs"]["text"]] == [str(first), str(second)]
    assert meta["inputs"]["text"][0]["bytes"] == first.stat().st_size and len(meta["inputs"]["text"][0]["sha256"]) == 64
    assert meta["inputs"]["brown"] is None and meta["inputs"]["abc"] is None
    assert meta["per_source"][f"text:{first}"] == {"sentences": 10, "kept": 10}


def test_text_and_zip_inputs_combine_in_order(tmp_path):
    text = write_text(tmp_path / "more.txt", SENTENCES[20:])
    abc = tiny_abc(tmp_path / "abc.zip", SENTENCES[:20])
    meta = spelling.prepare(str(tmp_path / "both"), abc=str(abc), text=[str(text)], p=0.5)
    alone = spelling.prepare(str(tmp_path / "zip"), abc=str(tiny_abc(tmp_path / "all.zip", SENTENCES)), p=0.5)
    assert raw_files(tmp_path / "both") == raw_files(tmp_path / "zip")
    assert list(meta["per_source"]) == ["abc", f"text:{text}"] and meta["inputs"]["abc"] == str(abc)
    assert meta["splits"] == alone["splits"]


def test_bad_text_inputs_stop_with_a_message_naming_the_file(tmp_path, capsys):
    good = write_text(tmp_path / "good.txt", SENTENCES)
    missing = tmp_path / "missing.txt"
    with pytest.raises(spelling.SpellingDataError, match=f"{missing}: no such file"):
        spelling.prepare(str(tmp_path / "d"), text=[str(good), str(missing)])

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\nsecond line\ncaf\xe9 third\n".encode("latin-1"))
    with pytest.raises(spelling.SpellingDataError, match=f"{latin1}: line 3: not valid UTF-8"):
        spelling.prepare(str(tmp_path / "d"), text=[str(latin1)])

    blank = write_text(tmp_path / "blank.txt", ["", "  ", "\t"])
    with pytest.raises(spelling.SpellingDataError, match=f"{blank}: no non-empty sentence"):
        spelling.prepare(str(tmp_path / "d"), text=[str(good), str(blank)])

    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))
    # the command line: exit status 1 and the message on stderr
    assert spelling.main([str(tmp_path / "d"), "--text", str(latin1)]) == 1
    assert f"error: {latin1}: line 3: not valid UTF-8" in capsys.readouterr().err
    assert spelling.main([str(tmp_path / "d")]) == 1
    assert "--text" in capsys.readouterr().err
    assert spelling.main([str(tmp_path / "d"), "--text", str(good)]) == 0
    assert (tmp_path / "d" / "meta.json").exists()
