# syntax=docker/dockerfile:1
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY requirements.txt pyproject.toml README.md ./
COPY telchat ./telchat
RUN python -m venv /opt/telchat \
 && /opt/telchat/bin/pip install --no-cache-dir -r requirements.txt . \
 && /opt/telchat/bin/python -m compileall -q /opt/telchat

FROM python:3.11.7-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin telchat \
 && mkdir -p /data && chown telchat /data
COPY --from=build /opt/telchat /opt/telchat
ENV PATH=/opt/telchat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TELCHAT_HOST=0.0.0.0 \
    TELCHAT_PORT=2323 \
    TELCHAT_LOG_FORMAT=json \
    TELCHAT_STORE=sqlite:////data/telchat.db
USER telchat
WORKDIR /data
VOLUME ["/data"]
EXPOSE 2323
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('TELCHAT_PORT', '2323'))), 2).close()"]
# Options come from TELCHAT_* (above, or `docker run -e`); arguments after the image name add flags.
CMD ["telchat"]
