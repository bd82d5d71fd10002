"""The spelling error breakdown on a hand-built fairseq-generate output."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.spelling import error_breakdown  # noqa: E402

# 0: the corruption at position 1 is corrected; 1: the corruption at position 4 is missed and
# the clean "a" is made wrong (edit 2); 2: one symbol too many (edit 1). 3 errors / 12 symbols.
LOG = """\
S-0\th 3 l l o
T-0\th e l l o
H-0\t-0.1\th e l l o
D-0\t-0.1\th e l l o
P-0\t-0.1 -0.1 -0.1 -0.1 -0.1 -0.1
S-1\tc a t _ x
T-1\tc a t _ s
H-1\t-0.5\tc o t _ x
S-2\ta b
T-2\ta c
H-2\t-0.9\ta c c
Generate test with beam=1: EDIT = 25.00 ({errors} errors / 12 reference tokens, 3 sentences)
"""


def write_log(tmp_path, errors=3):
    path = tmp_path / "generate_test.log"
    path.write_text(LOG.format(errors=errors))
    return str(path)


def test_counts_missed_corrections_false_corrections_and_wrong_lengths(tmp_path):
    result = error_breakdown.breakdown(error_breakdown.read_generate_log(write_log(tmp_path)))
    assert (result.sentences, result.reference_tokens, result.edit_errors) == (3, 12, 3)
    assert result.edit_error == 25.0
    assert (result.wrong_length, result.corrupted, result.missed, result.clean, result.broken) == (1, 2, 1, 8, 1)
    assert (result.missed_rate, result.broken_rate, result.broken_share) == (50.0, 12.5, 50.0)


def test_a_count_that_disagrees_with_fairseq_generate_is_an_error(tmp_path, capsys):
    assert error_breakdown.main([write_log(tmp_path)]) == 0
    assert "| 25.00 | 33.3 | 50.0 | 12.50 | 50.0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="fairseq-generate printed 4 / 12"):
        error_breakdown.main([write_log(tmp_path, errors=4)])


def test_a_log_that_is_not_a_spelling_log_is_refused(tmp_path):
    path = tmp_path / "generate_test.log"
    path.write_text("S-0\ta b c\nT-0\ta b\nH-0\t-0.1\ta b\n")
    with pytest.raises(ValueError, match="not a spelling log"):
        error_breakdown.breakdown(error_breakdown.read_generate_log(str(path)))


def test_a_spelling_results_row_keeps_the_breakdown_of_its_test_output():
    from examples.spelling import run as spelling

    fields = error_breakdown.row_fields(LOG.format(errors=3))
    assert fields == {"wrong_length_pct": 33.33, "corrupted_left_wrong_pct": 50.0, "clean_made_wrong_pct": 12.5,
                      "wrong_chars_clean_pct": 50.0}
    row = {"config": "sLL policy", "seed": 2, "test_error": 25.0, **fields}
    assert "| sLL policy | 2 | 25.00 | 33.3 | 50.0 | 12.50 | 50.0 |" in spelling.format_breakdowns([row, {"config": "MLE"}])
