# camrt in containers, two targets from one file (docs/tensorrt.md has more):
#
#   runtime (the default, the last stage): camrt's engine and CLI on ONNX Runtime with CUDA, no torch.
#     docker build --target runtime -t camrt .
#     docker run --rm --gpus all -v "$PWD:/data" camrt explain /data/model.cam.onnx /data/photos -o /data/out
#     docker run --rm --gpus all -v "$PWD:/data" camrt video /data/model.cam.onnx /data/clip.mp4 -o /data/explained.mp4
#   exporter: `camrt export` on a CPU build of PyTorch.
#     docker build --target exporter -t camrt-export .
#     docker run --rm -v "$PWD:/data" camrt-export export /data/model.pt2 --layer layer4 -o /data/model.cam.onnx
#
# The installs are README's set-up command split by target: the same extras (gpu and overlay for
# the runtime; gpu and export for the exporter, whose self-check runs ONNX Runtime on the CPU as
# CI does) and the same torch and torchvision pins. tests/test_dockerfile.py checks that they stay
# so, and lints this file with hadolint.

# The base image follows onnxruntime-gpu's CUDA major. onnxruntime-gpu 1.31 (what `camrt[gpu]`
# installs from PyPI today) is built for CUDA 13 and cuDNN 9: its CUDA provider links
# libcudart.so.13 and libcublas.so.13, its TensorRT provider libcudnn.so.9 and libnvinfer.so.10,
# and its `cuda` extra asks for nvidia-cuda-runtime ~=13.0. So: a CUDA 13 runtime image with
# cuDNN 9. ONNX Runtime built with CUDA 13.x runs on any 13.y (CUDA minor version compatibility),
# so 13.0 is the oldest base that fits; the host needs an NVIDIA driver for CUDA 13 (580 or
# newer) and the NVIDIA Container Toolkit (`--gpus all`). The build stops if the image lacks a
# library the CUDA provider links (the `ldd` check below), instead of camrt silently falling
# back to the CPU at run time.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Ubuntu 24.04's python3 is 3.12; the exporter uses the same version.
ARG PYTHON_IMAGE=python:3.12-slim

# --- exporter: torch (CPU build) + camrt[export] -------------------------------------------------
FROM ${PYTHON_IMAGE} AS exporter
# The CPU build of torch comes from PyTorch's own index: PyPI's Linux wheels bring CUDA (GBs).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /opt/camrt
COPY pyproject.toml README.md ./
COPY camrt ./camrt
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1
# camrt from this source tree: its dependencies take pyproject.toml's ranges, as in CI (the torch
# installed above satisfies camrt[export]'s range, so pip keeps it). A RUN of its own, so that
# hadolint's pin rule (DL3013) still checks the line above.
# hadolint ignore=DL3013,DL3059
RUN pip install --no-cache-dir ".[gpu,export]"
WORKDIR /data
ENTRYPOINT ["camrt"]
CMD ["--help"]

# --- runtime build: a virtual environment with camrt[gpu,overlay] --------------------------------
FROM ${CUDA_IMAGE} AS runtime-build
# Ubuntu's python3 refuses pip installs into the system (PEP 668): camrt goes into /opt/venv,
# which the runtime stage copies. Distribution package versions follow the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/camrt
COPY pyproject.toml README.md ./
COPY camrt ./camrt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[gpu,overlay,metrics]" \
    && lib=$(/opt/venv/bin/python -c "import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / 'capi' / 'libonnxruntime_providers_cuda.so')") \
    && missing=$(ldd "$lib" | grep 'not found' | grep -v 'libcuda\.so' || true) \
    && if [ -n "$missing" ]; then echo "the CUDA provider needs libraries this base image lacks:" >&2; echo "$missing" >&2; exit 1; fi

# --- runtime (default): CUDA 13 + cuDNN 9, ONNX Runtime and camrt, no torch ----------------------
FROM ${CUDA_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=runtime-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /data
ENTRYPOINT ["camrt"]
CMD ["--help"]
