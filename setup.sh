#!/usr/bin/env bash
# Set up a machine for NanoPhi: idempotent, quick when everything is already there.
#  - torch: installed only when missing (pip install torch==2.13.0 takes the local CPU build here;
#    Colab ships its own CUDA torch, which is left alone)
#  - the Python requirements
#  - GPT-2's tokenizer ranks file, fetched with pip from openai-whisper's sdist (never committed)
#  - the bf16 gemv kernel (nanophi/gemv.py), compiled once into torch's extension cache so that the
#    first bf16 generation does not pay the ~15 s build; where it cannot build, a warning and oneDNN
#  - Debian packages when root with apt: python3.11-doc (offline textbook corpus), chromium and
#    chromium-driver (the web page's browser test)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  $PY -m pip install --quiet torch==2.13.0
fi
$PY -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | grep -v -e "ignored: it is neither" -e "Running pip as the 'root'" || true
$PY -m nanophi.tokenizer --setup 2>&1 | grep -v "ignored: it is neither" || true
$PY -m nanophi.gemv || true
need=()
for pkg in python3.11-doc chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: not installing ${need[*]} (needs root and apt-get); offline textbooks fall back to pydoc_data, the browser test is skipped"
  fi
fi
echo "setup: done"
