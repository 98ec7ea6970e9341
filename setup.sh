#!/usr/bin/env bash
# Set up a machine for NanoPhi: idempotent, quick when everything is already there.
#   bash setup.sh          what running needs (Colab: this one)
#   bash setup.sh --test   that, plus the test suite's packages (requirements-test.txt) and its browser
#  - torch: installed only when missing (pip install torch==2.13.0 takes the local CPU build here;
#    Colab ships its own CUDA torch, which is left alone)
#  - the Python requirements
#  - GPT-2's tokenizer ranks file, fetched with pip from openai-whisper's sdist (never committed)
#  - on a machine without CUDA: the bf16 gemv kernel for CPU decoding (nanophi/gemv.py), compiled once
#    into torch's extension cache; where it cannot build, a warning and oneDNN
#  - optional system packages when root with apt, each a note when missing, never a failed set-up:
#    python3.11-doc (offline textbook corpus); with --test, a chromium and its driver (the web page's
#    browser test) under Debian's names (chromium, chromium-driver) or Ubuntu's (chromium-browser,
#    chromium-chromedriver)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (known: --test)" >&2; exit 2 ;;
  esac
done
pip_quiet() {  # pip's noise about this machine's local indexes and root is not ours to show; its failure is
  local out rc=0
  out=$($PY -m pip install --quiet --disable-pip-version-check "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e "ignored: it is neither" -e "Running pip as the 'root'" -e '^$' || true
  return "$rc"
}
if ! $PY -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  pip_quiet torch==2.13.0
fi
pip_quiet -r requirements.txt
[ "$TEST" = 0 ] || pip_quiet -r requirements-test.txt
$PY -m nanophi.tokenizer --setup 2>&1 | grep -v "ignored: it is neither" || true
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "setup: CUDA found, the CPU bf16 kernel is not built"
else
  $PY -m nanophi.gemv || true
fi

# optional system packages: the first name of each group that this distribution has
groups=("python3.11-doc")
[ "$TEST" = 0 ] || groups+=("chromium chromium-browser" "chromium-driver chromium-chromedriver")
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup: note: not installing optional system packages (needs root and apt-get); offline textbooks fall back to pydoc_data, the browser test is skipped"
else
  need=()
  updated=0
  for group in "${groups[@]}"; do
    have=0
    for pkg in $group; do dpkg -s "$pkg" >/dev/null 2>&1 && have=1 && break; done
    [ "$have" = 1 ] && continue
    [ "$updated" = 1 ] || { apt-get update -qq >/dev/null 2>&1 || true; updated=1; }
    found=""
    for pkg in $group; do
      if apt-cache show "$pkg" >/dev/null 2>&1; then found=$pkg; break; fi
    done
    if [ -n "$found" ]; then need+=("$found"); else echo "setup: note: none of '$group' is in this distribution's packages; skipped"; fi
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
      || echo "setup: note: apt-get install ${need[*]} failed; the offline textbooks fall back to pydoc_data, the browser test is skipped"
  fi
fi
echo "setup: done"
