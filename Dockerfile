# GPU serving image: FastAPI + ONNX Runtime (CUDA EP) / TensorRT + FAISS on GPU.
# The model (model.onnx or model.plan + model.plan.json) and the gallery directory are mounted as volumes;
# nothing of the training stack (torch) is installed.
#
#   docker build -t xmreid-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/artifacts:/models:ro -v $PWD/artifacts/gallery:/gallery xmreid-serve
#
# cuDNN 9 + CUDA 12 runtime: what onnxruntime-gpu >= 1.19 and the tensorrt-cu12 / faiss-gpu-cu12 wheels link against.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip libgl1 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements-serve.txt requirements-gpu.txt ./
RUN pip install --upgrade pip \
 && pip install -r requirements-serve.txt -r requirements-gpu.txt

COPY pyproject.toml README.md ./
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY index ./index
# --no-deps: the GPU flavours above replace the CPU onnxruntime / faiss-cpu wheels (never install both).
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 xmreid && mkdir -p /models /gallery && chown xmreid /gallery
USER xmreid

# Inside a container the server must listen on all interfaces; outside one the default stays 127.0.0.1.
ENV XMREID_MODEL=/models/model.onnx \
    XMREID_GALLERY=/gallery \
    XMREID_HOST=0.0.0.0 \
    XMREID_PORT=8000
EXPOSE 8000
VOLUME ["/models", "/gallery"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${XMREID_PORT}/healthz" || exit 1

CMD ["sh", "-c", "python -m serving serve --model \"$XMREID_MODEL\" --gallery \"$XMREID_GALLERY\" --host \"$XMREID_HOST\" --port \"$XMREID_PORT\""]
