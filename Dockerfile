# Images of the project, one target each; the last stage, `service`, is the default:
#
#   docker build -t cifar-serving .                          # the API: serving dependencies only
#   docker build --target train -t cifar-serving-train .     # + the [train] extra
#   docker build --target load -t cifar-serving-load .       # + the [load] extra and locustfile.py
#   docker build --build-arg TF_EXTRA=gpu -t cifar-serving:gpu .
#
# Dependencies are installed from pyproject.toml alone, before any code is copied, so editing
# the code rebuilds one small layer and never reinstalls TensorFlow. docker-compose.yml builds
# and runs the targets; docker-compose.gpu.yml is the GPU variant.
#
# The service image is multi-stage: the environment is built and trimmed in `deps`, and
# `service` copies that environment and the code alone onto the base image (no build tools,
# no pip, no pip cache, no tests, no training extras): 1.17 GB with TF_EXTRA=cpu, against
# 1.97 GB for one stage with the full TensorFlow build (README, "Footprint").

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# An unprivileged user to run as (numeric below, so runtimes can check it is not root); its
# home takes Keras' and matplotlib's caches. A virtual environment rather than the system
# site-packages: the same whether the base image's Python is Debian's or python.org's.
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app


# Serving dependencies with one TensorFlow build, pyproject's extra TF_EXTRA:
#   cpu  tensorflow-cpu: CPU only, a third of the full build's size; the default;
#   gpu  tensorflow[and-cuda]: the full build with NVIDIA's CUDA and cuDNN wheels (~3 GB), for
#        GPU hosts that have only the driver and the NVIDIA container toolkit.
# Then trimmed by docker/slim-venv.sh (binutils for its `strip`, in this stage only).
FROM base AS deps
ARG TF_EXTRA=cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml docker/requirements.py docker/slim-venv.sh /tmp/build/
RUN python -m venv /opt/venv \
    && python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml "${TF_EXTRA}" > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt \
    && /tmp/build/slim-venv.sh /opt/venv


# `python -m training cifar10|iris [options]`: serving dependencies plus the [train] extra.
FROM deps AS train
RUN python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml train > /tmp/build/train.txt \
    && pip install -r /tmp/build/train.txt
COPY pyproject.toml README.md* /tmp/src/
COPY model_repository /tmp/src/model_repository
COPY training /tmp/src/training
# the model card measures the service's own resizing of large uploads
COPY service /tmp/src/service
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]


# `locust -f /app/locustfile.py ...`: the [load] extra on top of the serving dependencies (the
# locustfile builds its payloads with numpy and Pillow).
FROM deps AS load
RUN python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml load > /tmp/build/load.txt \
    && pip install -r /tmp/build/load.txt
COPY locustfile.py ./
USER 10001:10001
ENTRYPOINT ["locust", "-f", "/app/locustfile.py"]
CMD ["--help"]


# The service's environment: the trimmed one less pip, which serving never runs.
FROM deps AS service-venv
RUN python -m pip uninstall --yes --quiet pip


# The API, the default target: the trimmed environment and the project's code, nothing more.
# The code runs from /app, one COPY per top-level package the service imports (model_repository
# reads the exports): a new package is one more line here.
FROM base AS service
COPY --from=service-venv /opt/venv /opt/venv
COPY model_repository /app/model_repository
COPY service /app/service
# HOST=0.0.0.0: a container is reached through its published port; without API_KEY the ready
# line warns that predictions are open (docs/operating/security.md). MALLOC_*: memory freed after a burst
# goes back to the system (service/process/serve.py says why; here for the one-worker case too).
ENV PYTHONPATH=/app \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/app/models \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MALLOC_ARENA_MAX=2
USER 10001:10001
EXPOSE 8000 8081
# Healthy once /readyz answers 200: models loaded and warmed up. The start period covers
# loading (docker-compose.yml sets its own).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
