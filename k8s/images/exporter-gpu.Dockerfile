# syntax=docker/dockerfile:1
# Exporter (GPU target): builds the TensorRT plan of `visionguard export --target gpu`.
# Based on NGC's TensorRT image of the same release as triton-gpu.Dockerfile (NGC_RELEASE must
# match): the plan is built by, and only loads in, that TensorRT version. Runs on a GPU node.
#   docker build -f k8s/images/exporter-gpu.Dockerfile -t visionguard/exporter-gpu:0.1.0-ngc24.12 .
ARG NGC_RELEASE=24.12
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3
ARG OPENCV_HEADLESS_VERSION=4.11.0.86
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
COPY tracker_service ./tracker_service
COPY export ./export
COPY model_repository ./model_repository
# The image's TensorRT Python bindings stay as they are; torch comes from PyPI (CUDA 12 build).
# The project's own extra, at pyproject.toml's version ranges (the repository has no lock
# file yet): hadolint's pin rule cannot see them.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir ".[export]" \
 && python3 -m pip uninstall --yes opencv-python \
 && python3 -m pip install --no-cache-dir --no-deps --force-reinstall "opencv-python-headless==${OPENCV_HEADLESS_VERSION}" \
 && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)" \
 && groupadd --system --gid 10001 visionguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin visionguard
ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VG_MODEL_REPOSITORY=/models \
    VG_RUNTIME_DIR=/tmp/visionguard \
    HOME=/tmp \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
# A batch job: no server to health-check (the Job's completion status is its health).
HEALTHCHECK NONE
ENTRYPOINT ["visionguard"]
CMD ["export", "--help"]
