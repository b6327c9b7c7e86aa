#!/bin/bash
# On a lent GPU machine (bench/gpu_lease.py packs .gpu/ and .whl/ first): build llama.cpp's CUDA libraries, install the project's dependencies, run bench/gpu.py.
set -u
export PYTHONUNBUFFERED=1
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
nvcc --version | tail -1; cmake --version | head -1; python3 --version
mkdir -p /tmp/ll && tar -xJf .gpu/llama-src.tar.xz -C /tmp/ll
cmake -S /tmp/ll -B /tmp/ll/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > $OUT/cmake.log 2>&1 \
  || { tail -40 $OUT/cmake.log; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 &
timeout ${BUILD_LIMIT:-390} cmake --build /tmp/ll/build --target llama -j 16 > $OUT/build.log 2>&1 \
  || { tail -30 $OUT/build.log; echo "build failed or timed out after $(( $(date +%s) - t0 )) s"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
wait
cp -r .gpu/llama_cpp /tmp/site/llama_cpp && mkdir -p /tmp/site/llama_cpp/lib
find /tmp/ll/build -name "*.so*" -exec cp -P {} /tmp/site/llama_cpp/lib/ \;
ls -la /tmp/site/llama_cpp/lib
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())"
timeout ${BENCH_LIMIT:-240} python3 bench/gpu.py --bisect-load --rounds 3 --tokens 256 --streams 8 2>&1 | tee $OUT/gpu.log
echo "total $(( $(date +%s) - t0 )) s"
