# Images of the project, one target each; the last stage, `service`, is the default:
#
#   docker build -t cifar-serving .                          # the API: serving dependencies only
#   docker build --target train -t cifar-serving-train .     # + the [train] extra
#   docker build --target load -t cifar-serving-load .       # + the [load] extra and locustfile.py
#   docker build --build-arg TF_PACKAGE="tensorflow[and-cuda]" -t cifar-serving:gpu .
#
# Dependencies are installed from pyproject.toml alone, before any code is copied, so editing
# the code rebuilds one small layer and never reinstalls TensorFlow. The three targets share
# the dependency layers. docker-compose.yml builds and runs them; docker-compose.gpu.yml is
# the GPU variant.

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
RUN useradd --create-home --uid 10001 --user-group app \
    && python -m venv /opt/venv
WORKDIR /app


# Serving dependencies. TF_PACKAGE is installed together with pyproject's TensorFlow
# requirement, so pip merges the two (one version range, extras added):
#   tensorflow            CPU; also uses a GPU on hosts that have CUDA and cuDNN installed;
#   tensorflow[and-cuda]  adds NVIDIA's CUDA and cuDNN wheels (~3 GB), for GPU hosts that
#                         only have the driver and the NVIDIA container toolkit.
# TensorFlow's C++ headers (430 MB, for compiling custom ops) are of no use here.
FROM base AS deps
ARG TF_PACKAGE=tensorflow
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt "${TF_PACKAGE}" \
    && rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include


# `python -m training cifar10|iris [options]`: serving dependencies plus the [train] extra.
FROM deps AS train
RUN python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml train > /tmp/build/train.txt \
    && pip install -r /tmp/build/train.txt
COPY pyproject.toml README.md* /tmp/src/
COPY model_repository /tmp/src/model_repository
COPY training /tmp/src/training
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]


# `locust -f /app/locustfile.py ...`: the [load] extra on top of the serving dependencies (the
# locustfile builds its payloads with numpy and Pillow); shares every layer but one with `service`.
FROM deps AS load
RUN python /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml load > /tmp/build/load.txt \
    && pip install -r /tmp/build/load.txt
COPY locustfile.py ./
USER 10001:10001
ENTRYPOINT ["locust", "-f", "/app/locustfile.py"]
CMD ["--help"]


# The API, the default target: serving dependencies and the project's code (the service reads
# exports with model_repository), nothing more.
FROM deps AS service
COPY pyproject.toml README.md* /tmp/src/
COPY model_repository /tmp/src/model_repository
COPY service /tmp/src/service
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
ENV HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/app/models
USER 10001:10001
EXPOSE 8000
# Healthy once /readyz answers 200: models loaded and warmed up. The start period covers
# loading (docker-compose.yml sets its own).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
