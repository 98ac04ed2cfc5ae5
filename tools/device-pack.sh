#!/bin/bash
# device-pack.sh - pack what tools/device-check.sh needs on the GPU machine into .devpack/ (in
# .gitignore), xz-compressed under the device tool's 64 MiB carry limit: the binaries
# (build/ropeserve, build/tools/{bench,make_model}, build/tests/kernels/check_*), the sm_90a and
# FA2 kernels' ptxas reports and cubin (tests/test_cuda_build.sh reads them there), and the
# shared libraries the GPU machine lacks (../shared/device/bundle-libs.sh -> .devlibs).
# Build first: make CUDA=1 all build/tests/kernels/check_attention (make test builds them all).
# Then: run with carry [".devpack"] and command tools/device-check.sh
set -eu
cd "$(dirname "$0")/.."
for f in build/ropeserve build/tools/bench build/tools/make_model build/tests/kernels/check_attention; do
    [ -x "$f" ] || { echo "device-pack: $f is not built (make CUDA=1 all test-cuda)"; exit 1; }
done
bundle=${BUNDLE_LIBS:-/work/shared/device/bundle-libs.sh}
rm -rf .devlibs .devpack
mkdir -p .devpack
"$bundle" build/ropeserve .devlibs
"$bundle" build/tools/bench .devlibs >/dev/null
tar cJf .devpack/devlibs.tar.xz .devlibs
files="build/ropeserve build/tools/bench build/tools/make_model build/tests/kernels build/kernels/cuda/attention_prefill_sm90.o"
files="$files $(ls build/kernels/cuda/sm90a/ptxas.log build/kernels/cuda/sm90a/*90a.cubin build/kernels/cuda/fa2/ptxas.log 2>/dev/null | tr '\n' ' ')"
# shellcheck disable=SC2086
tar cJf .devpack/build.tar.xz --exclude='*.d' $files
du -ch .devpack/* | tail -n 1 | awk '{print "device-pack: .devpack is " $1 " (limit 64 MiB)"}'
