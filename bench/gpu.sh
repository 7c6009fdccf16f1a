#!/usr/bin/env bash
# Issue 11's GPU benchmark, prepared for the device machine (docs/benchmarks.md, Part 6; not run yet: no GPU was
# lent to the task that wrote it). Stand-in models (the real architectures, random weights) through onnxruntime-gpu's
# CUDA provider, and TensorRT's if it loads: images/s at 1080p with one face (threads 1/4/8/16, enhancer off and
# on), each model alone with and without IO binding, video frames/s at 1080p, GPU memory, and what bounds each
# figure (GPU busy % against the CPU). Goal: at least 100 images/s on one H100-class GPU.
#
# The image (device/KINDS.md) has python3 3.12 with torch, numpy, onnx 1.23, onnxruntime 1.30 (a CPU build),
# opencv-python-headless, scikit-image, psutil, nvidia-ml-py, httpx, and CUDA 13's libraries as pip packages
# (nvidia-cuda-runtime, nvidia-cublas, nvidia-cudnn-cu13, nvidia-cufft, nvidia-curand, nvidia-cuda-nvrtc). It has no
# onnxruntime-gpu, insightface or av, and nothing can be downloaded there. What to carry, prepared here by
# `bash bench/gpu_pack.sh` (the pip download command of device/README.md; sizes as PyPI served them):
#
#   .whl/av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl        35.8 MB
#   .whl/insightface-2.1-py3-none-any.whl                       1.2 MB
#   onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl   255.6 MB, built for CUDA 13.0 (its CUDA needs:
#       cuda-runtime 13, cublas 13, cufft 12, curand 10, nvrtc 13, cudnn-cu13 9: all on the image). Over the 64 MiB
#       one call may carry, so it travels as .whl/ort/part-00..04 (57 MiB each, the last 16.5 MB) over several
#       calls onto the same warm machine; `gpu.sh stage` keeps each part in /tmp/facemint-ort, and the run puts
#       them back together and checks the wheel's sha256. The machine goes back 30 s after a call: make the calls
#       one after the other (gpu_pack.sh prints them). TensorRT's libraries (tensorrt-cu13-libs, hundreds of MB)
#       cannot travel: the TensorRT provider is reported unavailable unless libnvinfer.so.10 is on the machine.
#
# Calls:   run("bash bench/gpu.sh stage", carry=[".whl/ort/part-0N"])          for N = 0..3
#          run("bash bench/gpu.sh", carry=[<the two wheels>, ".whl/ort/part-04"], timeout_s=600); give_back
#
# Without onnxruntime-gpu (the parts not carried, or some missing) the run says "CUDA provider unavailable", measures
# the stand-ins on the machine's CPU cores instead (labelled as such) and exits 0. A wrong setup fails loudly
# (exit 2 or 3): no nvidia-smi, a wheel whose checksum is wrong, or a CUDA provider that onnxruntime lists but that
# does not load for every model (never a silent fallback to the CPU: inference/providers.py checks every session).
#
# Writes to $OUT: gpu.log (everything printed), nvidia-smi.txt, gpu_bench_<provider>.json. Bounded at 540 s.
set -uo pipefail

cd "$(dirname "$0")/.."
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
ORT_SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
ORT_PARTS=5
STAGE=/tmp/facemint-ort
SITE=/tmp/facemint-site
BUDGET=540
EXTRA=(${GPU_BENCH_EXTRA:-})  # extra gpu_bench.py arguments, e.g. "--smoke" for a dry run of this script without a GPU
mkdir -p "$STAGE"

stage_parts() {
    for part in .whl/ort/part-*; do
        [ -f "$part" ] && cp "$part" "$STAGE/"
    done
    return 0
}

if [ "${1:-}" = "stage" ]; then
    stage_parts
    ls -l "$STAGE"
    exit 0
fi

OUT=${OUT:-/tmp/facemint-gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
started=$SECONDS
left() { echo $((BUDGET - (SECONDS - started))); }
echo "## bench/gpu.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. The GPU.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; then
    echo "WRONG SETUP: nvidia-smi is missing or fails: no usable NVIDIA GPU here"
    cat "$OUT/nvidia-smi.txt" 2>/dev/null
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
env -u PYTHONPATH python3 -c "import onnxruntime as o; print('- the image\'s onnxruntime', o.__version__, o.get_available_providers())"

# 2. The carried wheels: onnxruntime-gpu from its parts, then everything into $SITE (ahead of the image's packages).
stage_parts
wheels=(.whl/*.whl)
have=$(find "$STAGE" -name 'part-*' | wc -l)
ort_note="onnxruntime-gpu not carried"
if [ "$have" -eq "$ORT_PARTS" ]; then
    cat "$STAGE"/part-* >"$STAGE/$ORT_WHEEL"
    if ! echo "$ORT_SHA256  $STAGE/$ORT_WHEEL" | sha256sum -c --quiet -; then
        echo "WRONG SETUP: the onnxruntime-gpu wheel put back together from $have parts has the wrong sha256"
        exit 2
    fi
    wheels+=("$STAGE/$ORT_WHEEL")
    ort_note="onnxruntime-gpu 1.31.1 from $have parts"
elif [ "$have" -gt 0 ]; then
    ort_note="onnxruntime-gpu incomplete: $have of $ORT_PARTS parts reached this machine"
fi
echo "- $ort_note"
if [ ! -e "${wheels[0]}" ]; then
    echo "WRONG SETUP: no wheels in .whl/: the engine needs insightface and av (carry them: see this script's header)"
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" ||
    { echo "WRONG SETUP: pip could not install ${wheels[*]}"; exit 2; }
export PYTHONPATH="$SITE:$PWD:$PWD/bench"

# 3. CUDA 13 and cuDNN from the image's nvidia-* packages, for onnxruntime-gpu (installed outside their site-packages).
nv_libs=$(env -u PYTHONPATH python3 - <<'EOF'
import glob, os, site
found = {os.path.dirname(p) for base in site.getsitepackages() for p in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(found)))
EOF
)
export LD_LIBRARY_PATH="${nv_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c "import onnxruntime as o; print('- onnxruntime', o.__version__, o.__file__, o.get_available_providers())"

# 4. The benchmark: CUDA (a finding and exit 0 if this onnxruntime has no CUDA provider; exit 3 on a wrong setup).
timeout --signal=INT --kill-after=15 "$(( $(left) - 120 ))" python3 bench/gpu_bench.py --out "$OUT" --provider cuda \
    --time-limit "$(( $(left) - 130 ))" "${EXTRA[@]}"
status=$?
finding=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('finding',''))" "$OUT/gpu_bench_cuda.json" 2>/dev/null)
if [ $status -ne 0 ]; then
    echo "gpu_bench.py --provider cuda exited $status (3: a wrong setup, see above; 124: its time limit)"
    exit $status
fi

# 5. What else fits: TensorRT when CUDA ran, else the stand-ins on this machine's CPU cores.
if [ -z "$finding" ]; then
    if [ "$(left)" -gt 150 ]; then
        timeout --signal=INT --kill-after=15 "$(( $(left) - 10 ))" python3 bench/gpu_bench.py --out "$OUT" --provider tensorrt \
            --threads 1,8,16 --seconds 5 --time-limit "$(( $(left) - 20 ))" "${EXTRA[@]}" || echo "(TensorRT run exited $?)"
    else
        echo "(TensorRT skipped: $(left) s left)"
    fi
else
    echo "$finding"
    echo "Measuring the stand-ins on this machine's $(nproc) CPU cores instead (CPU figures, not GPU figures):"
    timeout --signal=INT --kill-after=15 "$(( $(left) - 10 ))" python3 bench/gpu_bench.py --out "$OUT" --provider cpu \
        --threads 1,8,16 --seconds 5 --video-seconds 1 --runs 5 --time-limit "$(( $(left) - 20 ))" "${EXTRA[@]}" ||
        echo "(CPU run exited $?)"
fi
echo "## done in $((SECONDS - started)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit 0
