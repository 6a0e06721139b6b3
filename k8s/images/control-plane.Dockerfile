# syntax=docker/dockerfile:1
# VisionGuard control plane: `visionguard serve control-plane` (registry, promotion, routing for
# gateways, drift, the log RAG, the OTLP trace receiver). The project with its `export` extra
# (promotion's golden-image checks and the accuracy gate use ultralytics/torch, the parity check
# onnxruntime) and its `control` extra (mlflow, alibi-detect, haystack). Like the exporter image,
# torch comes from PyPI: the exporter does not use the PyTorch CPU index either.
# perf_analyzer (the latency gate) is the binary in the tritonclient wheel; it needs Debian's
# libb64-0d and libcudart.so.12 from nvidia-cuda-runtime-cu12, even without a GPU
# (control_plane/perf.py points LD_LIBRARY_PATH at that wheel). WeasyPrint lays out the release
# report's PDF (GET /v1/models/{version}/report?format=pdf) with Debian's pango.
#   docker build -f k8s/images/control-plane.Dockerfile -t visionguard/control-plane:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG LIBB64_VERSION=1.2-5+b1
ARG PANGO_VERSION=1.50.12+ds-1
ARG CUDA_RUNTIME_VERSION=12.9.79
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1
WORKDIR /app
RUN apt-get update \
 && apt-get install --yes --no-install-recommends "libb64-0d=${LIBB64_VERSION}" \
      "libpango-1.0-0=${PANGO_VERSION}" "libpangoft2-1.0-0=${PANGO_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY requirements/all.txt ./requirements/all.txt
COPY control_plane ./control_plane
COPY tracker_service ./tracker_service
COPY export ./export
# Promotion materialises versions with export/'s templates (<root>/model_repository/*).
COPY model_repository ./model_repository
# The project's extras at the lock's versions and hashes: requirements/all.txt, the lock that
# `python3 -m control_plane` installs, as constraints (only what these extras need is installed).
# Ultralytics pulls opencv-python, which needs libGL; the headless build (the project's own
# dependency) is the same cv2 without it, so it is the one left installed. uv, which installs
# them, is removed again.
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && uv pip install --compile-bytecode --system --constraint requirements/all.txt ".[export,control,opensearch]" \
      "nvidia-cuda-runtime-cu12==${CUDA_RUNTIME_VERSION}" \
 && uv pip uninstall --system opencv-python \
 && uv pip install --system --no-deps --reinstall --constraint requirements/all.txt \
      opencv-python-headless \
 && pip uninstall --yes uv \
 && groupadd --system --gid 10001 visionguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin visionguard
# Run the sources from /app, not the copy in site-packages: export/ finds its templates beside
# itself. Every writable path is a volume (the root filesystem is read-only in the cluster).
ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VG_CONTROL_PORT=8090 \
    VG_MODEL_REPOSITORY=/models \
    VG_RUNTIME_DIR=/var/lib/visionguard \
    HOME=/tmp \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/tmp/huggingface
USER 10001:10001
EXPOSE 8090
# Docker's own check; Kubernetes uses the probes in k8s/base/control-plane.yaml (/healthz).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=2)"]
ENTRYPOINT ["visionguard", "serve", "control-plane"]
CMD ["--host", "0.0.0.0"]
