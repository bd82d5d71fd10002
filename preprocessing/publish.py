"""Write a preprocessing output directory so that it is never half-written."""

import json
import os
import shutil
import tempfile
from typing import Callable


def publish_directory(build: Callable[[str], None], dest: str, force: bool = False) -> None:
    """Run ``build(tmpdir)`` in a fresh directory beside ``dest``, then rename it to ``dest``.

    ``dest`` is never half-written: either the old one (or nothing) or the complete new one.
    An existing non-empty ``dest`` is replaced only with ``force``.
    """
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise FileExistsError(f"{dest}: exists and is not a directory")
    if os.path.isdir(dest) and os.listdir(dest) and not force:
        raise FileExistsError(f"{dest}: exists and is not empty (pass --force to replace it)")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        if os.path.isdir(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
            os.rename(dest, os.path.join(old, "d"))
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_meta(directory: str, meta: dict) -> None:
    """The dataset's ``meta.json`` (counts, seeds, sources), which the examples look for to skip
    preprocessing."""
    with open(os.path.join(directory, "meta.json"), "w") as out:
        json.dump(meta, out, indent=2)
        out.write("\n")
