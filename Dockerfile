# One image for every role: `api` (the default), `worker`, `mock-llm` (the scripted model).
#   docker build -t orchestrator:local .
#   docker run orchestrator:local worker        # settings from ORCHESTRATOR_* variables
# Linted by hadolint in `make test` (ops-check); no container engine runs in CI, so the
# image itself is built by you, not by the test suite.

ARG PYTHON_VERSION=3.12

# -- build: a virtualenv with the package and the api, metrics and fast (uvloop) extras --
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/orchestrator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
# A path install pins nothing: the versions are the ranges pyproject.toml allows.
# hadolint ignore=DL3013
RUN /opt/orchestrator/bin/pip install --no-cache-dir ".[api,metrics,fast]" \
    && /opt/orchestrator/bin/python -m compileall -q /opt/orchestrator/lib

# -- runtime: the virtualenv on a clean slim base, as an unprivileged user ---------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid orchestrator --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin orchestrator \
    && install -d -o orchestrator -g orchestrator /var/run/orchestrator
COPY --from=build /opt/orchestrator /opt/orchestrator
ENV PATH=/opt/orchestrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORCHESTRATOR_API_HOST=0.0.0.0 \
    ORCHESTRATOR_API_PORT=8000 \
    ORCHESTRATOR_LOG_FORMAT=json \
    ORCHESTRATOR_WORKER_STATE_DIR=/var/run/orchestrator
USER 10001:10001
EXPOSE 8000 8765
# A worker is healthy while it heartbeats; the API while /healthz answers (`orchestrator
# probe` tells which it is). Compose and Kubernetes set their own probes per role.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["orchestrator", "probe"]
ENTRYPOINT ["orchestrator"]
CMD ["api"]
