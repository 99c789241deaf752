#!/usr/bin/env bash
# Every GPU check and benchmark in one command, for a lent GPU machine without a package registry.
#
#   bash benchmarks/gpu_session.sh WHEEL_DIR [OUT_DIR]
#
# WHEEL_DIR holds onnxruntime-gpu (whole, or split into ortgpu.part.* by `split -b 58M`) and the runtime's
# wheels the machine lacks (soundfile, cffi, pycparser, soxr). They are installed with --target into a
# private site directory that goes first on PYTHONPATH, so the image's own CPU onnxruntime is shadowed, not
# removed. The machine's python3 must have torch and transformers (>= 5.0) for the exports and the
# transformers side of run.py. Results (logs, JSON) go to OUT_DIR; a failing step does not stop the others.
set -uo pipefail
wheels=${1:?usage: gpu_session.sh WHEEL_DIR [OUT_DIR]}
out=${2:-${OUT:-/tmp/gpu-out}}
site=/tmp/musicgen-gpu-site
cache=/tmp/musicgen-gpu-bench
mkdir -p "$out" "$site" "$cache"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

step() {  # step NAME COMMAND...: run, log to $out/NAME.log, keep going
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n 25 "$out/$name.log"
    return 0
}

if ls "$wheels"/ortgpu.part.* > /dev/null 2>&1; then
    cat "$wheels"/ortgpu.part.* > "$wheels/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" . || exit 1
export PYTHONPATH="$site"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import onnxruntime as o, torch, transformers; o.preload_dlls(); \
print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, \
'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

threads=$(nproc)
step gpu_check python3 benchmarks/gpu_check.py --work /tmp/musicgen-gpu-check
step run_fp16 python3 benchmarks/run.py --device cuda --precision fp16 --batch 1 8 --duration 10 \
    --threads "$threads" --cache-dir "$cache" --out "$out" --name gpu-fp16
step run_fp16_plain python3 benchmarks/run.py --device cuda --precision fp16 --batch 1 8 --duration 10 \
    --threads "$threads" --cache-dir "$cache" --out "$out" --name gpu-fp16-plain --skip-transformers \
    --cuda-graph off --device-sampling off --reuse-export
export_dir=$cache/musicgen-stereo-small-fp16
step load_whole python3 benchmarks/load.py "$export_dir" --provider cuda --clients 8 --slots 8 --requests 16 \
    --threads "$threads" --no-stream --out "$out/load-gpu-fp16-whole.json"
step load_stream python3 benchmarks/load.py "$export_dir" --provider cuda --clients 8 --slots 8 --requests 16 \
    --threads "$threads" --out "$out/load-gpu-fp16-stream.json"
echo "=== done"
