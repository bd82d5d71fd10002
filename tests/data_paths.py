"""Where the tests find the real datasets, and what they do when one is absent.

The data root is ``$SEARNN_DATA`` if set, else ``<repo>/../shared/data``. A test
that needs a dataset calls :func:`require_data`: when the file is missing the
test is skipped with a message naming the dataset, except under ``CI=true``,
where a missing dataset fails the test instead (CI must not pass by skipping).
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    configured = os.environ.get("SEARNN_DATA")
    return Path(configured) if configured else REPO.parent / "shared" / "data"


def require_data(relative: str, dataset: str) -> Path:
    """Path of ``relative`` under the data root; skip (or fail under CI=true) when absent."""
    path = data_root() / relative
    if not path.is_file():
        message = (
            f"dataset {dataset} not found: {path} is missing "
            f"(set SEARNN_DATA to the directory holding {relative})"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " [CI=true: missing data is an error]", pytrace=False)
        pytest.skip(message)
    return path
