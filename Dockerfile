# One tag for both stages: the virtualenv built in the first links to the second's Python.
# Pinned (never `latest`) so a rebuild gets the same interpreter; bump it on purpose.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Build stage: pip, setuptools and the build tree stay here.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Requirements first, so a code change does not reinstall the dependencies.
COPY requirements.txt ./
RUN python -m venv /opt/telchat \
 && /opt/telchat/bin/pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY telchat ./telchat
# Hash-based .pyc files: valid whatever mtimes COPY gives the sources, so the read-only
# runtime never needs to (and, with PYTHONDONTWRITEBYTECODE, never tries to) write one.
RUN /opt/telchat/bin/pip install --no-deps . \
 && /opt/telchat/bin/pip uninstall --yes pip setuptools \
 && /opt/telchat/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/telchat

# Runtime stage.
FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid: `USER 10001` lets Kubernetes' runAsNonRoot check it, and the
# /data volume's owner stays the same across rebuilds.
RUN groupadd --system --gid 10001 telchat \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin telchat \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /opt/telchat /opt/telchat
# Every TELCHAT_* is an option (docs/CONFIGURATION.md); `docker run -e` overrides any of them.
# The SQLite default lives on the /data volume, the only place the container writes, so it
# runs with `--read-only`. Metrics are on so that the HEALTHCHECK asks /healthz, which also
# checks the store; the listener binds 0.0.0.0 so a published port reaches it.
ENV PATH=/opt/telchat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TELCHAT_HOST=0.0.0.0 \
    TELCHAT_PORT=2323 \
    TELCHAT_LOG_FORMAT=json \
    TELCHAT_STORE=sqlite:////data/telchat.db \
    TELCHAT_METRICS_HOST=0.0.0.0 \
    TELCHAT_METRICS_PORT=9100 \
    TELCHAT_WEB_PORT=8080 \
    TELCHAT_SSH_PORT=2022
USER 10001:10001
WORKDIR /data
# Declared after the chown: a new named volume is seeded with this directory's owner.
VOLUME ["/data"]
# 8080 and 2022: the web and SSH doors (docs/FRONT_DOORS.md); `-e TELCHAT_WEB_PORT=` and
# `-e TELCHAT_SSH_PORT=` turn them off. The SSH host key is made in /data on the first start.
EXPOSE 2323 2022 8080 9100
# telchat handles SIGTERM: stops accepting, says goodbye, flushes the store, exits within 8 s
# (Docker's default stop timeout is 10 s).
STOPSIGNAL SIGTERM
# GET /healthz on TELCHAT_METRICS_PORT; a TCP connect to TELCHAT_PORT if that is emptied.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "telchat.healthcheck"]
# Options come from the TELCHAT_* environment; arguments after the image name replace this
# CMD, so give the program too: `docker run telchat telchat --history-replay=50`.
CMD ["telchat"]
