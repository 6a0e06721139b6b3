# syntax=docker/dockerfile:1
# Exporter (GPU target): builds the TensorRT plan of `visionguard export --target gpu`.
# Based on NGC's TensorRT image of the same release as triton-gpu.Dockerfile (NGC_RELEASE must
# match): the plan is built by, and only loads in, that TensorRT version. Runs on a GPU node.
#   docker build -f k8s/images/exporter-gpu.Dockerfile -t visionguard/exporter-gpu:0.1.0-ngc24.12 .
ARG NGC_RELEASE=24.12
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    UV_NO_CACHE=1 \
    UV_BREAK_SYSTEM_PACKAGES=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements/all.txt ./requirements/all.txt
COPY control_plane ./control_plane
COPY tracker_service ./tracker_service
COPY export ./export
COPY model_repository ./model_repository
# The image's TensorRT Python bindings stay as they are; torch comes from PyPI.
# The project's export extra at the lock's versions and hashes (requirements/all.txt, as
# constraints). The lock targets Python 3.11; this image's is 3.12, and every release the extra
# takes from it has a 3.12 wheel. opencv-python out, the headless build in, as in the exporter.
RUN python3 -m pip install --no-cache-dir "uv==${UV_VERSION}" \
 && uv pip install --compile-bytecode --system --constraint requirements/all.txt ".[export]" \
 && uv pip uninstall --system opencv-python \
 && uv pip install --system --no-deps --reinstall --constraint requirements/all.txt \
      opencv-python-headless \
 && python3 -m pip uninstall --yes uv \
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
