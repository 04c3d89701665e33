# syntax=docker/dockerfile:1
# Build stage: the dependencies, pinned by constraints.txt, into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt .

# Runtime stage: the virtualenv (with the app) and the migrations; no build tools, no pip cache.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --user-group avatar \
 && mkdir /data && chown avatar:avatar /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
# `avatar-service migrate` finds alembic.ini and alembic/ in its working directory.
COPY alembic.ini ./
COPY alembic ./alembic
# The image is production unless told otherwise: it refuses to start without AVATAR_JWT_SECRET
# or an identity provider, and never serves development tokens.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AVATAR_ENV=production \
    AVATAR_DATA_DIR=/data \
    AVATAR_HOST=0.0.0.0 \
    AVATAR_PORT=8000 \
    AVATAR_PROCESSES=1
USER avatar
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AVATAR_PORT', '8000'), timeout=2)"]
# Migrations are a separate command (`avatar-service migrate`), never run at every start.
# SIGTERM lets in-flight uploads finish (AVATAR_SHUTDOWN_TIMEOUT) and refuses new ones.
STOPSIGNAL SIGTERM
CMD ["avatar-service", "serve"]
