# syntax=docker/dockerfile:1
# Exporter (CPU target): the project with its `export` extra (torch, ultralytics, onnx,
# onnxruntime). The export Job (k8s/base/model-repository.yaml) runs
# `visionguard export WEIGHTS --target cpu --repo /models` with it to write a model version into
# the repository volume. For `--target gpu` build exporter-gpu.Dockerfile instead.
#   docker build -f k8s/images/exporter.Dockerfile -t visionguard/exporter:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements/all.txt ./requirements/all.txt
COPY control_plane ./control_plane
COPY tracker_service ./tracker_service
COPY export ./export
# model.py and config.pbtxt templates: export copies model.py into every version folder.
COPY model_repository ./model_repository
# The project's export extra at the lock's versions and hashes: requirements/all.txt, the lock that
# `python3 -m control_plane` installs, as constraints (only what this extra needs is installed).
# Ultralytics pulls opencv-python, which needs libGL; the headless build (the project's own
# dependency) is the same cv2 without it, so it is the one left installed. uv, which installs
# them, is removed again.
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && uv pip install --compile-bytecode --system --constraint requirements/all.txt ".[export]" \
 && uv pip uninstall --system opencv-python \
 && uv pip install --system --no-deps --reinstall --constraint requirements/all.txt \
      opencv-python-headless \
 && pip uninstall --yes uv \
 && groupadd --system --gid 10001 visionguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin visionguard
# export/ finds its templates beside itself (<root>/model_repository): run it from /app, not
# from the copy in site-packages.
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
