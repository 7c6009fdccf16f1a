#!/usr/bin/env bash
# Prepare, on this machine, the wheels bench/gpu.sh needs on the device machine (see gpu.sh's header), in the
# git-ignored folder .whl/:
#
#   .whl/av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl                 35.8 MB  (PyAV: decode and encode video)
#   .whl/insightface-2.1-py3-none-any.whl                                1.2 MB  (the engine's detector/swapper code)
#   .whl/ort/part-00 .. part-04   onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl (255.6 MB, built for
#                                 CUDA 13.0, as the image's nvidia-* packages are) cut in parts of 57 MiB: one
#                                 call may carry 64 MiB with the working tree (about 5 MB), the wheel does not fit
#
# then prints the device calls to make. Usage, from the repository root:  bash bench/gpu_pack.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PART_MIB=57
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
mkdir -p .whl/ort
# The pip download command of the device's README (/work/.library/device/README.md), one package at a time.
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "$2"
}
download .whl av==18.1.0
download .whl insightface==2.1
download .whl/ort onnxruntime-gpu==1.31.1

# The checksums gpu.sh checks after putting the parts back together (the wheels as PyPI served them on 2026-12-05).
sha256sum -c - <<'EOF'
8a032e8d8ebc73dec079364b9b4a6837638a2d106e8472314e685ffbf163e700  .whl/av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl
dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399  .whl/insightface-2.1-py3-none-any.whl
05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  .whl/ort/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
EOF
# What travels with every call: the tracked and the untracked, not ignored files (device/README.md).
tree_bytes=$( (git ls-files; git ls-files --others --exclude-standard) | sort -u | xargs -d '\n' du -cb 2>/dev/null | tail -1 | cut -f1)
if [ $((tree_bytes + PART_MIB * 1048576)) -gt $((64 * 1048576)) ]; then
    echo "the working tree ($((tree_bytes / 1048576)) MiB) and a part of $PART_MIB MiB exceed 64 MiB: lower PART_MIB" >&2
    exit 1
fi
rm -f .whl/ort/part-*
split -b "${PART_MIB}M" -d -a 2 ".whl/ort/$ORT_WHEEL" .whl/ort/part-
rm ".whl/ort/$ORT_WHEEL"
echo
echo "working tree that travels: $((tree_bytes / 1048576)) MiB; parts:"
ls -l .whl/*.whl .whl/ort/
parts=(.whl/ort/part-*)
last=$((${#parts[@]} - 1))
echo
echo "Device calls (each within 30 s of the last: the machine and its /tmp go back when idle):"
for i in $(seq 0 $((last - 1))); do
    printf '  %d. run(command="bash bench/gpu.sh stage", carry=[".whl/ort/part-%02d"], timeout_s=120)\n' $((i + 1)) "$i"
done
printf '  %d. run(command="bash bench/gpu.sh", carry=[".whl/av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl", ' $((last + 1))
printf '".whl/insightface-2.1-py3-none-any.whl", ".whl/ort/part-%02d"], timeout_s=600)\n' "$last"
echo "then give_back. Without the parts, the last call alone reports 'CUDA provider unavailable' and measures the CPU."
