# Runtime image: camrt's engine and CLI on ONNX Runtime (CPU), for explaining exported models.
#   docker build -t camrt .
#   docker run --rm -v "$PWD:/work" camrt explain /work/model.cam.onnx /work/photos -o /work/out
# For exporting (PyTorch) build with --build-arg EXTRAS=cpu,overlay,export; for NVIDIA GPUs use
# EXTRAS=gpu,overlay on a CUDA base image.
FROM python:3.11-slim
ARG EXTRAS=cpu,overlay
WORKDIR /opt/camrt
COPY pyproject.toml README.md ./
COPY camrt ./camrt
RUN pip install --no-cache-dir ".[${EXTRAS}]"
WORKDIR /work
ENTRYPOINT ["camrt"]
