#!/usr/bin/env bash
# Build fastopt with AddressSanitizer + UndefinedBehaviorSanitizer and run the test suite on it.
#   bash tools/sanitize.sh            (from the repository root; GCC on Linux)
# CPython itself is not instrumented, so libasan is preloaded; leak detection is off because
# the interpreter's own allocations at exit would drown the report (leaks are covered by
# tests/test_reliability.py). Any ASan/UBSan report aborts the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-sanitize}
rm -rf "$VENV" build
"$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
FASTOPT_SANITIZE=1 python -m pip install --quiet --no-cache-dir '.[test]'
# the torch frontend's native path is sanitized too when torch installs (the CPU pin of .ci/run)
python -m pip install --quiet torch==2.13.0 scikit-learn ml_dtypes \
    || echo "sanitize: torch not installable: the fastopt.torch (and bfloat16) tests will be skipped"
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The disassembly test is left out: instrumented loops are not vectorised, so its check that the
# AVX-512 kernels use zmm registers does not apply to this build.
LD_PRELOAD="$LIBASAN $LIBUBSAN" pytest -q -k "not baseline_code" "$@"
echo "sanitize: the test suite passed under ASan + UBSan"
