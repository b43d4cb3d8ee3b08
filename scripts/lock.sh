#!/usr/bin/env bash
# Regenerates the hash-locked requirements of the host venv, one per torch
# flavour, from sd35_provision/locks/*.in (uv resolves; every distribution
# file of each pinned version gets its sha256, so hosts install with
# pip --require-hashes). Commit the .in change and the .txt files together.
#
#   scripts/lock.sh              # all flavours
#   scripts/lock.sh cpu          # one flavour
#
# cu128/cu130 torch come from PyPI (its Linux wheels are CUDA builds).
# cpu takes torch's CPU build from TORCH_CPU_FIND_LINKS (default: the
# PyTorch CPU index); it only gets the hashes of the files found there.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv
[ -x "$uv" ] || .venv/bin/python -m pip install -q uv
cpu_source=${TORCH_CPU_FIND_LINKS:-https://download.pytorch.org/whl/cpu}
for flavour in "${@:-cpu cu128 cu130}"; do
    for f in $flavour; do
        extra=()
        [ "$f" = cpu ] && extra=(--find-links "$cpu_source")
        "$uv" pip compile "sd35_provision/locks/$f.in" --generate-hashes --universal \
            --python-version 3.11 --no-config --no-header --quiet "${extra[@]}" \
            -o "sd35_provision/locks/$f.txt"
        echo "locked $f: $(grep -cE '^[a-z0-9]' "sd35_provision/locks/$f.txt") packages"
    done
done
