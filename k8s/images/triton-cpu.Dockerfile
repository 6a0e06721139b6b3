# syntax=docker/dockerfile:1
# Triton for CPU clusters: the tritonserver binary that nvidia-pytriton ships (python backend
# only), laid out like NVIDIA's images (/opt/tritonserver/{bin,backends,lib}), with the python
# backend's stub for this image's Python and the detector's runtimes (OpenVINO, onnxruntime).
# This is what `visionguard up` runs and what the README's CPU figures were measured with.
# The model repository is not in the image: it is a volume written by the export Job.
# Build from the repository root (the allow-list in triton-cpu.Dockerfile.dockerignore):
#   docker build -f k8s/images/triton-cpu.Dockerfile -t visionguard/triton-cpu:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS pytriton
ARG PYTRITON_VERSION=0.5.10
WORKDIR /tmp/pytriton
# Only the server files are taken from the wheel (pytriton's Python API is not needed).
RUN pip download --no-cache-dir --no-deps --dest /tmp/wheel "nvidia-pytriton==${PYTRITON_VERSION}" \
 && python -m zipfile -e /tmp/wheel/nvidia_pytriton-*.whl /tmp/pytriton \
 && py="$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
 && src=/tmp/pytriton/pytriton/tritonserver \
 && mkdir -p /opt/tritonserver/backends/python \
 && cp -r "$src/bin" "$src/caches" /opt/tritonserver/ \
 && cp "$src/backends/python/libtriton_python.so" "$src/backends/python/triton_python_backend_utils.py" \
       "$src/python_backend_stubs/$py/triton_python_backend_stub" /opt/tritonserver/backends/python/ \
 && cp -r /tmp/pytriton/nvidia_pytriton.libs /opt/tritonserver/lib \
 && chmod 0755 /opt/tritonserver/bin/* /opt/tritonserver/backends/python/triton_python_backend_stub

FROM ${PYTHON_IMAGE}
# requirements/all.txt's versions, what `visionguard up` runs with (tests/test_environment.py).
ARG NUMPY_VERSION=1.26.4
ARG ONNXRUNTIME_VERSION=1.32.0
ARG OPENVINO_VERSION=2026.4.1
# model.py's imports, into the system Python that the python backend stub embeds: numpy, the
# runtimes, and this project for `tracker_service.nms` (its NMS, numpy only), installed without
# its dependencies (those are the gateway's, not Triton's).
COPY pyproject.toml README.md /tmp/visionguard/
COPY tracker_service /tmp/visionguard/tracker_service
RUN pip install --no-cache-dir --disable-pip-version-check \
      "numpy==${NUMPY_VERSION}" "onnxruntime==${ONNXRUNTIME_VERSION}" "openvino==${OPENVINO_VERSION}" \
 && pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/visionguard \
 && rm -rf /tmp/visionguard \
 && groupadd --system --gid 10001 triton \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin triton
COPY --from=pytriton /opt/tritonserver /opt/tritonserver
# bin/../lib is the binary's own RPATH; the backend and its stub find the libraries through
# LD_LIBRARY_PATH. libpython3.11.so (the stub needs it) is in /usr/local/lib in this image.
ENV PATH=/opt/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=/opt/tritonserver/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000 8001 8002
# Docker's own check; Kubernetes uses /v2/health/{ready,live} probes (k8s/base/triton.yaml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=detector", \
     "--backend-directory=/opt/tritonserver/backends", "--allow-gpu-metrics=false", \
     "--backend-config=python,shm-default-byte-size=16777216", "--strict-readiness=true"]
