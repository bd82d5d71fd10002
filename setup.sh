#!/usr/bin/env bash
# Creates .venv with the pinned stack (torch 2.13.0 CPU wheel, fairseq-fixed 0.12.3.1)
# and installs searnn-fairseq in editable mode. Safe to rerun: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip wheel
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet torch==2.13.0
# fairseq-fixed compiles its extensions once (~3 min); pip's wheel cache reuses the build.
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import searnn_fairseq, fairseq, torch; print('searnn-fairseq ready: fairseq', fairseq.__version__, 'torch', torch.__version__)" 2>&1 | grep -v tensorboardX
