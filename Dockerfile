# One image for every Corral service; docker-compose.yml picks the service by command.
# Build args select the llama.cpp backend: the default is CPU; for NVIDIA GPUs build with
#   --build-arg BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 --build-arg CMAKE_ARGS=-DGGML_CUDA=on
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG CMAKE_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CORRAL_MODELS=/models CMAKE_ARGS=${CMAKE_ARGS}

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git python3 python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first so source edits do not rebuild llama.cpp.
COPY pyproject.toml README.md ./
COPY corral/__init__.py corral/__init__.py
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir "llama-cpp-python==0.3.36"
COPY . .
RUN /venv/bin/pip install --no-cache-dir .
ENV PATH=/venv/bin:$PATH

# Services run unprivileged; a named volume mounted on /models takes this directory's owner.
RUN useradd --system --uid 10001 --create-home --home-dir /home/corral corral \
 && mkdir -p /models && chown corral:corral /models
USER 10001
ENV HOME=/home/corral

VOLUME ["/models"]
EXPOSE 11434
ENTRYPOINT ["corral"]
CMD ["serve"]
