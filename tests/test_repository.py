"""The repository carries code, results and small figures, never checkpoints or other large files:
a clone stays small, and runs are snapshotted outside it (examples/runner.py --snapshot-dir)."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BYTES = 1_000_000  # the results figures take 100-140 KB


def tracked_files() -> list:
    """``git ls-files`` from the repository root; outside a git checkout the test is skipped,
    except under CI (``CI=true``), where the check must run."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        reason = f"not a git checkout, or git is missing ({error}): the tracked files cannot be listed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return [name for name in out.stdout.decode().split("\0") if name]


def test_no_tracked_file_is_a_checkpoint_or_larger_than_1_mb():
    files = tracked_files()
    assert files, "git ls-files listed nothing"
    checkpoints = [name for name in files if name.endswith(".pt")]
    assert not checkpoints, f"checkpoints are tracked (they belong in a snapshot directory): {checkpoints}"
    large = {name: os.path.getsize(os.path.join(REPO, name)) for name in files
             if os.path.isfile(os.path.join(REPO, name)) and os.path.getsize(os.path.join(REPO, name)) > MAX_BYTES}
    assert not large, f"tracked files over {MAX_BYTES} bytes: {large}"
