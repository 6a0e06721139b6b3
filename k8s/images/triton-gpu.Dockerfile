# syntax=docker/dockerfile:1
# Triton for GPU clusters: NVIDIA's NGC image (TensorRT, python and onnxruntime backends) serving
# the ensemble that `visionguard export --target gpu` writes (detector_trt -> detector_postprocess).
# NGC_RELEASE must equal exporter-gpu.Dockerfile's: a TensorRT plan only loads in the TensorRT
# version that built it. 24.12: Triton 2.53, TensorRT 10.7, Ubuntu 24.04 with Python 3.12.
# The model repository is not in the image: it is a volume written by the export Job.
# Build from the repository root (the allow-list in triton-gpu.Dockerfile.dockerignore):
#   docker build -f k8s/images/triton-gpu.Dockerfile -t visionguard/triton-gpu:0.1.0-ngc24.12 .
ARG NGC_RELEASE=24.12
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3
# The versions in requirements/all.txt, the project's lock (tests/test_environment.py).
ARG NUMPY_VERSION=1.26.4
ARG ONNXRUNTIME_VERSION=1.32.0
# detector_postprocess is model_repository/detector/model.py (it imports onnxruntime at module
# level, and its NMS from `tracker_service.nms`, numpy only): its imports go into the Python the
# python backend embeds, this project without its dependencies (those are the gateway's).
COPY pyproject.toml README.md /tmp/visionguard/
COPY tracker_service /tmp/visionguard/tracker_service
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --break-system-packages \
      "numpy==${NUMPY_VERSION}" "onnxruntime==${ONNXRUNTIME_VERSION}" \
 && python3 -m pip install --no-cache-dir --disable-pip-version-check --break-system-packages \
      --no-deps /tmp/visionguard \
 && rm -rf /tmp/visionguard \
 && groupadd --system --gid 10001 visionguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin visionguard
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000 8001 8002
# Docker's own check; Kubernetes uses /v2/health/{ready,live} probes (k8s/base/triton.yaml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# The NGC entrypoint (driver checks, banner) stays; the server command line is the CMD.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", \
     "--load-model=detector", "--load-model=detector_trt", "--load-model=detector_postprocess", \
     "--backend-config=python,shm-default-byte-size=16777216", "--strict-readiness=true"]
