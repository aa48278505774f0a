# Kindling worker image: CPU-only PyTorch, runs as a non-root user.
#
#   docker build -t kindling .
#   docker run --rm -e KINDLING_BROKER=kafka://broker:9092 -p 9108:9108 kindling
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# The CPU wheel from PyTorch's CPU index, pinned, before the project: on Linux the PyPI
# "torch" wheel is the CUDA build (gigabytes of NVIDIA libraries this image never uses).
# The project's "torch>=2.3" is then already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY engine ./engine
COPY models ./models
COPY streams ./streams
COPY workers ./workers
COPY evaluation ./evaluation
COPY ops ./ops
RUN pip install .

# Not root: the worker needs nothing but its data directory (RocksDB tables, model versions).
# Docker copies this ownership into named volumes mounted at /data and /data/models.
RUN useradd --create-home --uid 10001 --user-group kindling \
    && mkdir -p /data/models \
    && chown -R kindling:kindling /data
USER kindling

ENV KINDLING_DATA_DIR=/data \
    KINDLING_METRICS_PORT=9108
VOLUME ["/data"]
EXPOSE 9108 6066
# 200 once table recovery is done and partitions are assigned (workers/web.py)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['KINDLING_METRICS_PORT'], timeout=4)"
CMD ["kindling", "worker"]
