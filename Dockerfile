# GPU serving image: FastAPI + ONNX Runtime (CUDA EP) / TensorRT + FAISS on GPU, CUDA 12 throughout.
# The model (model.onnx, or model.plan + model.plan.json) and the gallery directory are mounted as volumes;
# nothing of the training stack (torch) is installed.
#
#   docker build -t xmreid-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/artifacts:/models:ro -v $PWD/artifacts/gallery:/gallery xmreid-serve
#
# Base: the official Python image on Debian 12, the same Python minor (3.11) as the CPU side (CI, `make test`),
# so the image gets the same wheels the project is tested with. The CUDA 12 user-space libraries (runtime,
# cuBLAS, cuFFT, cuRAND, NVRTC, cuDNN 9) come from NVIDIA's pip wheels pinned through requirements-gpu.txt,
# all on the public registry; only the driver comes from the host (NVIDIA Container Toolkit, driver
# >= 525.60.13, 570+ recommended). tests/deploy/test_gpu_stack.py checks that this file, the pins and the
# CPU side agree, and that the pins resolve to wheels from the public registry alone (`make docker-check`);
# no Docker engine is needed for that.
#
# TensorRT is opt-in: its libraries come only from NVIDIA's index (see requirements-gpu.txt), so
#   docker build --build-arg TENSORRT=1 -t xmreid-serve .
# needs that index reachable, and adds TensorRT at the version of the tensorrt-cu12-bindings pin. Without it
# the image serves model.onnx on the GPU through ONNX Runtime's CUDA provider, and builds from a mirror of the
# public registry alone.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# curl for the HEALTHCHECK; libgl/libglib are not needed by opencv-python-headless.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements-serve.txt requirements-gpu.txt ./
ARG TENSORRT=0
RUN pip install --upgrade pip \
 && pip install -r requirements-gpu.txt -r requirements-serve.txt \
 && if [ "$TENSORRT" = 1 ]; then \
      trt=$(sed -n 's/^tensorrt-cu12-bindings==\([0-9.]*\).*/\1/p' requirements-gpu.txt) \
      && pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu12-libs==$trt" "tensorrt-cu12==$trt"; \
    fi

COPY pyproject.toml README.md ./
COPY xmreid ./xmreid
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY index ./index
# --no-deps: the GPU flavours above replace the CPU onnxruntime / faiss-cpu wheels (never install both).
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 xmreid && mkdir -p /models /gallery && chown xmreid /gallery
USER xmreid

# Settings come from XMREID_* variables (serving/core/config.py). Inside a container the server must listen on
# all interfaces; outside one the default stays 127.0.0.1.
ENV XMREID_MODEL=/models/model.onnx \
    XMREID_GALLERY=/gallery \
    XMREID_HOST=0.0.0.0 \
    XMREID_PORT=8000
EXPOSE 8000
VOLUME ["/models", "/gallery"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${XMREID_PORT}/healthz" || exit 1

# Exec form: python itself is PID 1 and receives SIGTERM (uvicorn's graceful shutdown); `sh -c` would swallow it.
CMD ["python", "-m", "serving", "serve"]
