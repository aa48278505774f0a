FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# torch first, pinned, so the project's "torch>=2.3" is already satisfied.
RUN pip install torch==2.13.0

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY engine ./engine
COPY models ./models
COPY streams ./streams
COPY workers ./workers
COPY evaluation ./evaluation
COPY ops ./ops
RUN pip install .

VOLUME ["/data"]
EXPOSE 6066
CMD ["kindling", "worker"]
