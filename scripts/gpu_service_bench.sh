#!/bin/sh
# The service-level benchmark (scripts/service_bench.py) on a lent GPU machine that has
# torch but not the service's other packages and no network: installs the wheels carried
# in .whl (Python 3.12 manylinux: diffusers, torchao, fastapi, starlette, pydantic,
# pydantic_core, annotated_types, annotated_doc, typing_inspection, uvicorn, openai, jiter,
# distro, sniffio, importlib_metadata, typing_extensions; `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux...`), records the GPUs'
# nvidia-smi outputs as fixtures, writes a random-weight SD3.5 pipeline to local disk, then
# runs the services. Everything lands in $OUT (default ./out).
#
#   scripts/gpu_service_bench.sh MODEL DEADLINE_S --run NAME:GPU:VAR=VALUE,... ...
set -u
model=$1; deadline=$2; shift 2
out=${OUT:-out}; mkdir -p "$out"
wheels=${WHEELS:-.whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
fx=/tmp/fixtures; mkdir -p $fx
nvidia-smi >$fx/nvidia-smi.txt 2>&1
nvidia-smi -L >$fx/nvidia-smi-L.txt 2>&1
nvidia-smi -q -x >$fx/nvidia-smi-q-x.xml 2>&1
nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id,uuid \
    --format=csv,noheader,nounits >$fx/nvidia-smi-query-gpu.txt 2>&1
bash tests/fixtures/h100/capture.sh $fx/capture >/dev/null 2>&1
python3 -c 'import torch, diffusers, torchao; print(torch.__version__, torch.cuda.device_count(), diffusers.__version__, torchao.__version__)'
begin=$(date +%s)
python3 scripts/service_bench.py prepare --model "$model" /tmp/model 2>&1 | tee "$out/prepare.log"
left=$((deadline - ($(date +%s) - begin)))
python3 scripts/service_bench.py run --model-dir /tmp/model --json "$out/service.json" --log-dir /tmp/logs \
    --snapshot $fx/nvidia-smi-two-services.txt --deadline-s "$left" "$@" 2>&1 | tee "$out/run.log"
nvidia-smi -q -x >$fx/nvidia-smi-q-x-after.xml 2>&1
tar czf "$out/fixtures.tgz" -C /tmp fixtures
tar czf "$out/logs.tgz" -C /tmp logs
