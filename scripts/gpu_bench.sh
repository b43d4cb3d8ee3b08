#!/bin/sh
# The benchmark (and, with FACTS=1, the facts/preflight layer over pyinfra's @local
# connector) on a lent GPU machine that has torch but not our other packages and no
# network: installs the wheels carried in .whl-h100 (Python 3.12, manylinux) to
# /tmp/site, then runs. Everything lands in $OUT (default ./out).
#
#   [FACTS=1] scripts/gpu_bench.sh NAME [sd35-provision bench options...]
#
# writes NAME.json and NAME.log (and facts.log, h100-facts.json with FACTS=1).
#
# .whl-h100 (ignored by git; in .git/info/exclude) holds one wheel of each of: diffusers,
# torchao, importlib_metadata, zipp, pyinfra, gevent, greenlet, zope_event, zope_interface,
# paramiko, bcrypt, pynacl, cryptography, cffi, pycparser, invoke, distro, typeguard,
# types_paramiko, pydantic, pydantic_core, annotated_types, typing_inspection,
# typing_extensions, jsonschema, jsonschema_specifications, referencing, rpds_py, ruamel_yaml
# (`pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux...`,
# about 23 MB): what the machine's image (torch 2.11, transformers 5.17) lacks.
set -u
name=$1; shift
out=${OUT:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl-h100/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ "${FACTS:-0}" = 1 ]; then
    python3 scripts/gpu_facts_local.py --json "$out/h100-facts.json" >"$out/facts.log" 2>&1
    cat "$out/facts.log"
fi
python3 -m sd35_provision.bench --json "$out/$name.json" --markdown "/tmp/$name.md" "$@" 2>&1 | tee "$out/$name.log"
