#!/usr/bin/env bash
# The CUDA acceptance run for a lent GPU machine (H100/H200), in one command of under 8 minutes:
#
#   bash bench/gpu.sh --prepare            # here: fill .gpu/ with what that machine lacks (timm wheel, data)
#   bash bench/gpu.sh OUT_DIR              # there: CUDA tests, torchrun end to end, throughput
#   bash bench/gpu.sh --cpu-smoke OUT_DIR  # anywhere: the same steps on CPU at toy sizes (the suite runs it)
#
# The lent machine has its own Python (torch 2.11, a timm that may predate 1.0.31), no network and
# no .venv; the device tool carries the ignored folder .gpu/ (carry: [".gpu"]): .gpu/wheels/*.whl
# are installed into /tmp/site when its timm is older than this package needs, and
# .gpu/fashion-mnist/ holds the four Fashion-MNIST idx files. Each step writes its log (and JSON)
# to OUT_DIR and its outcome to OUT_DIR/steps.tsv; a failed step does not stop the others, and the
# script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

if [ "${1:-}" = --prepare ]; then
    set -e
    mkdir -p .gpu/wheels .gpu/fashion-mnist
    grep -qx '/.gpu/' .gitignore || echo '/.gpu/' >> .gitignore
    PIP="${PYTHON:-.venv/bin/python} -m pip"
    $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels timm==1.0.31
    cp "${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"/*-ubyte.gz .gpu/fashion-mnist/
    du -sh .gpu
    exit 0
fi

SMOKE=0
if [ "${1:-}" = --cpu-smoke ]; then
    SMOKE=1
    shift
fi
OUT_DIR="$(mkdir -p "${1:-${OUT:-output/gpu}}" && cd "${1:-${OUT:-output/gpu}}" && pwd)"
: > "$OUT_DIR/steps.tsv"
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
    PY="${PYTHON:-$REPO/.venv/bin/python}"
    DATA="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
    DEVICE=cpu
else
    PY="${PYTHON:-python3}"
    DATA="$REPO/.gpu/fashion-mnist"
    DEVICE=cuda
    if ! "$PY" -c 'import sys, timm; v = tuple(int(p) for p in timm.__version__.split(".")[:3]); sys.exit(v < (1, 0, 31))'; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$REPO"/.gpu/wheels/*.whl || { echo "cannot install the carried wheels (bash bench/gpu.sh --prepare here)"; exit 2; }
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, record the outcome
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name"
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%ss\n' "$name" "$([ $rc = 0 ] && echo ok || echo "failed ($rc)")" "$((SECONDS - start))" \
        | tee -a "$OUT_DIR/steps.tsv"
}

step env 60 "$PY" -c 'import torch, timm, timm_r2kd, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
      "timm_r2kd", timm_r2kd.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")'

# 1. the CUDA tests (skipped on CPU, where the smoke run only checks that they collect)
step cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda "$REPO/tests/test_cuda.py" \
    --junitxml="$OUT_DIR/cuda_tests.xml"

# 2. the trainer end to end through torchrun (nccl on CUDA, gloo on CPU): teacher, R2KD student with
# bf16 autocast, channels_last and a cutmix view, a resume, a Hub export loaded back with timm
if [ "$SMOKE" = 1 ]; then
    size=(--train-num-samples 256 --val-num-samples 128 -b 32 --workers 0)
    teacher=test_resnet student=test_resnet
else
    size=(--val-num-samples 2000 -b 256 --workers 8 --amp --amp-dtype bfloat16 --channels-last)
    teacher=resnet18 student=resnet10t
fi
common=(--dataset torch/fashion_mnist --data-dir "$DATA" --in-chans 1 --img-size 28 --num-classes 10
        --mean 0.2860 --std 0.3530 --device "$DEVICE" --lr 0.05 --warmup-epochs 0 --sched cosine
        --output "$OUT_DIR/runs" --log-interval 50 --no-progress "${size[@]}")
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_r2kd=("$PY" -m torch.distributed.run --nproc_per_node 1 --master_addr 127.0.0.1 --master_port "$port"
          "$REPO/train_r2kd.py" "${common[@]}")
step train_teacher 180 "${run_r2kd[@]}" --model "$teacher" --epochs 1 --experiment teacher
step train_student 180 "${run_r2kd[@]}" --model "$student" --teacher "$teacher" \
    --teacher-checkpoint "$OUT_DIR/runs/teacher/last.pth.tar" --r2kd --r2kd-view cutmix --allow-weak-teacher \
    --epochs 1 --recovery-interval 10 --experiment student
step resume_student 180 "${run_r2kd[@]}" --model "$student" --teacher "$teacher" \
    --teacher-checkpoint "$OUT_DIR/runs/teacher/last.pth.tar" --r2kd --r2kd-view cutmix --allow-weak-teacher \
    --epochs 2 --experiment student --resume "$OUT_DIR/runs/student/last.pth.tar" --save-hf "$OUT_DIR/export"
step export_loads 120 "$PY" -c "
import sys, torch, timm
from timm_r2kd.hub import build_student
loaded = timm.create_model('local-dir:$OUT_DIR/export', pretrained=True).eval()
original, _, _ = build_student('$OUT_DIR/runs/student/model_best.pth.tar')
x = torch.randn(4, 1, 28, 28)
with torch.no_grad():
    torch.testing.assert_close(loaded(x), original(x))
print('export reproduces the student:', loaded.pretrained_cfg['label_names'][:2])"

# 3. throughput at 224 px with bf16 and channels_last, eager and compiled, and the loss alone
if [ "$SMOKE" = 1 ]; then
    bench=(--device cpu --teacher resnet18 --student resnet10t --img-size 32 --batch-size 4 --num-classes 10
           --rounds 2 --warmup 1 --no-memory)
    compiled=()
else
    bench=(--device cuda --teacher resnet50 --student resnet18 --img-size 224 --batch-size 128 --num-classes 1000
           --amp bf16 --channels-last --rounds 20 --warmup 5)
    compiled=(student full full+compile)
fi
step throughput_eager 240 "$PY" "$REPO/bench/throughput.py" "${bench[@]}" \
    --rows student kd r2kd-plain full full+batched full+split reference bare --json "$OUT_DIR/throughput_eager.json"
if [ ${#compiled[@]} -gt 0 ]; then
    step throughput_compile 200 "$PY" "$REPO/bench/throughput.py" "${bench[@]}" --rows "${compiled[@]}" --no-memory \
        --json "$OUT_DIR/throughput_compile.json"
fi

echo "== steps (logs in $OUT_DIR)"
cat "$OUT_DIR/steps.tsv"
! grep -q failed "$OUT_DIR/steps.tsv"
