# Build the venv of one lock beside the running one (deploys/python_env.py); only a finished
# build is stamped complete, and only a stamped venv is ever used.
set -u
name=@venv_name@
log=$(mktemp /tmp/sd35-venv.XXXXXX)
# An unstamped venv is a half-built one (e.g. an earlier run was cut off): start again.
rm -rf @venv@
if ! @interpreter@ -m venv @venv@ >"$log" 2>&1 ||
        ! @venv@/bin/python -m pip install --quiet @pip_options@ -r @lock@ >>"$log" 2>&1 ||
        ! @venv@/bin/python -c 'import torch, diffusers, transformers' >>"$log" 2>&1; then
    # pip's own words name the package: a hash mismatch, or no wheel for it.
    grep -E -A2 'DO NOT MATCH THE HASHES|^ +[A-Za-z0-9_.+-]+==.* from |No matching distribution|Could not find a version|^ERROR' "$log" | grep -v 'Expected     or' | head -20 >&2
    bad=$(sed -n 's/^ *\([A-Za-z0-9_.+-]*==[^ ]*\) from .*/\1/p' "$log" | sort -u | paste -sd, -)
    if [ -n "$bad" ]; then why="wheels do not match the lock's hashes: $bad"; else why="pip failed (above)"; fi
    rm -rf @venv@ "$log"
    echo "venv $name not built, $why; the running environment is unchanged" >&2
    exit 1
fi
rm -f "$log"
cp @lock@ @venv@/@stamp@
