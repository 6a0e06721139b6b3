# syntax=docker/dockerfile:1
# VisionGuard gateway (tracker_service): pyproject's base dependencies only, no torch.
# Build from the repository root (gateway.Dockerfile.dockerignore keeps .venv/ and weights out):
#   docker build -f k8s/images/gateway.Dockerfile -t visionguard/gateway:0.1.0 .
# Run: docker run -p 8080:8080 -e VG_GATEWAY_TRITON_URL=triton:8001 visionguard/gateway:0.1.0
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/all.txt ./requirements/all.txt
COPY control_plane ./control_plane
COPY tracker_service ./tracker_service
COPY export ./export
# `.` = the project with its base dependencies (no extras): numpy, opencv-headless, litestar,
# tritonclient, ... at the lock's versions and hashes (requirements/all.txt, as constraints).
# Installed by uv (which stays in this stage) into a virtual environment that the runtime stage
# copies whole.
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && python -m venv /opt/venv \
 && uv pip install --compile-bytecode --python /opt/venv/bin/python --constraint requirements/all.txt .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 visionguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin visionguard
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VG_GATEWAY_SHARED_MEMORY=0
USER 10001:10001
EXPOSE 8080
# Docker's own check; Kubernetes uses the probes in k8s/base/gateway.yaml (/healthz, /readyz).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# One process per container: tracker state lives in it (no uvicorn --workers).
ENTRYPOINT ["visionguard", "serve", "gateway"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
