#!/usr/bin/env bash
# GPU check: every registered erasure method on the SD 1.5-shaped pipeline (random weights,
# 512 px, erase/synthetic.py) on one CUDA GPU, timed against the targets, with per-step times
# and peak memory. The suite itself is erase/benchmarks/gpu.py (scripts/benchmark.py --suite gpu);
# this script installs diffusers from carried wheels where it is missing and calls it.
#
# 1. Here, once (needs pip and the network; writes the gitignored .whl/ with the diffusers wheel
#    of the version installed in .venv, about 6.4 MB; py3-none-any, so any Python 3.10+ takes it):
#        bash scripts/gpu_check.sh --prepare
# 2. On the device machine, one call of the device tool (the image has torch, transformers,
#    accelerate, safetensors, peft, no diffusers):
#        run(command='bash scripts/gpu_check.sh "$OUT"', carry=[".whl"], timeout_s=540)
#    Expected: about 4 minutes of work; the suite stops starting cases after ERASE_GPU_BUDGET
#    seconds (420) and the whole script after ERASE_GPU_TIMEOUT (480), so it ends before
#    timeout_s even when a case hangs. Extra arguments go to scripts/benchmark.py, e.g.
#        bash scripts/gpu_check.sh "$OUT" --cases fmn/full,salun --no-smoke
# 3. What comes back (in files_at): results.json (rewritten after every case, so a crash or a
#    timeout keeps the cases before it), results.md (the tables), log.txt (everything printed).
#    A dry run of the whole script on a CPU (tiny pipeline): ERASE_GPU_PIPELINE=tiny bash scripts/gpu_check.sh /tmp/x
#    To put the tables into BENCHMARKS.md, here:
#        .venv/bin/python scripts/benchmark.py --suite gpu --from-json <files_at>/results.json
#
# Cases: tiny/<method> (smoke settings, seconds; a dtype clash there makes the big cases run
# with the frozen VAE/text encoder in fp32 and says so), then sd15/<method>[/<variant>]: paper
# defaults, work bounded (<= 50 steps, 20 iterations, 1 epoch, 5 sampling steps for generated
# training images) and projected to the defaults; one process and one timeout (150 s) per case.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WHEELS=${ERASE_WHEELS:-$ROOT/.whl}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3
fi

usage() { echo "usage: bash scripts/gpu_check.sh OUTDIR [benchmark.py options]  |  bash scripts/gpu_check.sh --prepare" >&2; exit 2; }

if [ "${1:-}" = "--prepare" ]; then
    version=$("$PY" -c 'import diffusers; print(diffusers.__version__)')
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/diffusers-*.whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "diffusers==$version"
    ls -l "$WHEELS"
    echo "carry [\".whl\"] in the device call; see the top of this script"
    exit 0
fi

[ $# -ge 1 ] || usage
case "$1" in -*) usage ;; esac
OUTDIR=$1
shift
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

main() {
set -euo pipefail
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S') UTC in $ROOT, python $PY, results in $OUTDIR"

if ! "$PY" -c 'import diffusers' 2>/dev/null; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "error: diffusers is not installed and $WHEELS holds no wheels: run 'bash scripts/gpu_check.sh --prepare' here and carry .whl" >&2
        exit 2
    fi
    SITE=${ERASE_SITE:-/tmp/erase-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed ${wheels[*]##*/} into $SITE"
fi

PIPELINE=${ERASE_GPU_PIPELINE:-sd15}
PIPELINE=$PIPELINE "$PY" - <<'EOF'
import os
import accelerate, diffusers, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}, accelerate {accelerate.__version__}")
if not torch.cuda.is_available() and os.environ["PIPELINE"] == "tiny":
    print("no CUDA device: a dry run of the whole check on the tiny pipeline (ERASE_GPU_PIPELINE=tiny)")
elif not torch.cuda.is_available():
    raise SystemExit("error: no CUDA device visible; this check needs a GPU (a CPU smoke run: "
                     "python scripts/benchmark.py --suite gpu --gpu-pipeline tiny --print-only)")
else:
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
EOF

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
status=0
timeout --signal=TERM --kill-after=15 "${ERASE_GPU_TIMEOUT:-480}" \
    "$PY" scripts/benchmark.py --suite gpu --json-dir "$OUTDIR" --print-only --gpu-pipeline "$PIPELINE" \
    --budget "${ERASE_GPU_BUDGET:-420}" --case-timeout "${ERASE_CASE_TIMEOUT:-150}" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "gpu_check: the suite ended with status $status (124: the ${ERASE_GPU_TIMEOUT:-480}s limit); $OUTDIR/results.json holds the cases finished before"
fi
echo "gpu_check: done $(date -u '+%H:%M:%S') UTC"
return "$status"
}

set +e
main "$@" 2>&1 | tee -a "$OUTDIR/log.txt"
exit "${PIPESTATUS[0]}"
