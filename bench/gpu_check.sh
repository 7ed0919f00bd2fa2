#!/usr/bin/env bash
# The GPU check of issue 10 in one go, for a session lent a machine with an NVIDIA GPU:
#
#   bash bench/gpu_check.sh            # PYTHON=... to choose the interpreter
#
# 1. finds a Python with the project's dependencies (PYTHON, else .venv/bin/python, else python3);
# 2. installs torch with pip if it is missing (the only download; nothing else is fetched);
# 3. generates the gRPC code if it is not there (grpc_tools, already a dependency);
# 4. lists the GPUs, then measures where a committed step's time goes (python bench/gpu_budget.py:
#    each precision's product at its cap and half of it, the copies to the host, host SHA-256
#    with 1 and all threads, SHA-256 of fixed-size chunks on the device): numpy, torch and
#    triton only, so it runs first, even where the project's dependencies are missing; its
#    failure or timeout (BUDGET_TIMEOUT seconds, default 300) stops nothing after it;
#    BUDGET_ARGS passes options (--quick, --precisions bf16);
# 5. measures one device's BF16 throughput on the challenge chain
#    (python -m agent measure --backend torch --precision bf16 --n 8192), timed on the host;
# 6. runs the tests marked gpu (tests/verification/test_gpu.py: an H200 passes its own BF16
#    declaration, the same H200 declared as two fails, FP8 arithmetic under a BF16
#    declaration fails), each judged by the real verifier against a real agent process;
# 7. prints a summary: the budget's BUDGET lines, the measured throughput, the verifier's
#    measured figure and each verdict.
#
# Exit status: 0 when the three gpu tests passed; 1 when one failed; 2 when there is no GPU or
# the Python lacks the project's dependencies (then nothing is counted as passed). The budget
# step does not change it. The full log is kept in $OUT or a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
LOG_DIR="${OUT:-$(mktemp -d)}"
LOG="$LOG_DIR/gpu_check.log"
echo "gpu_check: python $PY, log $LOG"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: installing torch with pip"
    "$PY" -m pip install --quiet torch || { echo "gpu_check: pip install torch failed" >&2; exit 2; }
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device: nothing measured, nothing passed" >&2
    exit 2
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version \
    --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'devices', torch.cuda.device_count(), torch.cuda.get_device_name(0))"

echo "== budget: product, copies, host and device SHA-256 per precision (bench/gpu_budget.py)"
BUDGET_RUN=("$PY" bench/gpu_budget.py ${BUDGET_ARGS:-})
command -v timeout >/dev/null && BUDGET_RUN=(timeout "${BUDGET_TIMEOUT:-300}" "${BUDGET_RUN[@]}")
"${BUDGET_RUN[@]}" 2>&1 | tee "$LOG.budget"
BUDGET_STATUS=${PIPESTATUS[0]}
cat "$LOG.budget" >>"$LOG"
echo "budget: exit status $BUDGET_STATUS (0 measured, 1 a part failed or mismatched, 2 no GPU," \
    "124 timed out)" | tee -a "$LOG"

budget_summary() {
    grep -E "^BUDGET" "$LOG.budget" | cut -c1-2000
    echo "budget: exit status $BUDGET_STATUS"
}

if ! "$PY" -c "import django, grpc, numpy, ml_dtypes" 2>/dev/null; then
    echo "gpu_check: $PY lacks the project's dependencies (make venv, or PYTHON=...)" >&2
    echo "== summary"
    budget_summary
    echo "VERDICT: gpu tests not run (no project dependencies): nothing passed"
    exit 2
fi
if [ ! -f protos/agent_pb2.py ]; then
    "$PY" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto
fi

echo "== measure: one device, BF16 chain of 8 products at n = 8192 (host clock)"
MEASURED=$("$PY" -m agent measure --backend torch --precision bf16 --n 8192 --steps 8 2>>"$LOG")
echo "$MEASURED"

echo "== tests marked gpu (real agent process, real verifier)"
export DJANGO_SETTINGS_MODULE=interconnect.settings
export INTERCONNECT_VAR_DIR="${INTERCONNECT_VAR_DIR:-$(mktemp -d)}"  # SQLite, never used by them
"$PY" -m pytest -m gpu tests/verification/test_gpu.py -s -q -p no:cacheprovider \
    -rA 2>&1 | tee "$LOG.pytest"
STATUS=${PIPESTATUS[0]}
cat "$LOG.pytest" >>"$LOG"

echo "== summary"
budget_summary
echo "measured (agent, host clock): $MEASURED"
grep -E "^GPU" "$LOG.pytest" | cut -c1-2000
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)" "$LOG.pytest"
if [ "$STATUS" -eq 0 ] && grep -q "3 passed" "$LOG.pytest"; then
    echo "VERDICT: the three gpu tests passed"
    exit 0
fi
echo "VERDICT: gpu tests did not all pass (pytest status $STATUS)"
exit 1
