# indextts-server container images (docs/container.md). Plain OCI images, built by docker
# (BuildKit, the default since Docker 23) or podman/buildah; RUN --mount needs one of those.
#
#   docker build -t indextts-server .                          the IndexTTS2 engine, NVIDIA GPUs (full)
#   docker build --target light -t indextts-server:light .     the tone engine, no torch (light)
#
# Build arguments:
#   BASE    the Python 3.11 base image (default python:3.11-slim-bookworm; PyPI's torch wheels
#           carry their own CUDA libraries, so no CUDA base image is needed)
#   WHEELS  a folder in the build context; when it holds wheels, everything is installed from it
#           and no package index is contacted (air-gapped builds):
#             pip wheel ".[indextts,cluster,zeroconf]" -w wheels      (on a machine with network)
#             docker build --build-arg WHEELS=wheels -t indextts-server .
# podman: add --format docker, or the OCI format drops the HEALTHCHECK.

ARG BASE=python:3.11-slim-bookworm
ARG WHEELS=wheels

# --- shared by every stage: the user, the folders, the environment --------------------------
FROM ${BASE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# A fixed uid/gid (10001), so that bind-mounted folders can be given to it: chown 10001:10001 DIR.
RUN groupadd --system --gid 10001 indextts \
 && useradd --system --uid 10001 --gid indextts --create-home --home-dir /home/indextts \
        --shell /usr/sbin/nologin indextts \
 && install -d -o indextts -g indextts /models /models/huggingface /models/cache /voices

# --- what both images run --------------------------------------------------------------------
FROM base AS runtime
# The bundled voice ("default", the contract's asset/zero_shot_prompt.wav) and the warm-up prompt.
COPY asset /app/asset
WORKDIR /app
# Configuration is by environment (INDEXTTS_SERVER_ + a flag's name) or by flags appended to
# `docker run IMAGE …`; a flag wins over its variable.
# Caches live on the /models volume, so a new container does not rebuild them: the Hugging Face
# cache, and XDG_CACHE_HOME for the rest (IndexTTS-2.5's text-normalizer grammars take minutes to
# compile on first use; they land in /models/cache/indextts25/nemo_tn).
ENV HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    INDEXTTS_SERVER_MODEL_DIR=/models/IndexTTS-2 \
    INDEXTTS_SERVER_CFG_PATH=/models/IndexTTS-2/config.yaml \
    INDEXTTS_SERVER_VOICES_DIR=/voices \
    INDEXTTS_SERVER_HOST=0.0.0.0
# 8770: the WebSocket protocol; 8771: the HTTP API (OpenAI speech, voices, /healthz, /readyz, /metrics).
EXPOSE 8770 8771
VOLUME ["/models", "/voices"]
# SIGTERM drains (waiting tasks end, the running one gets --drain-timeout, 30 s): give the
# container more than that to stop (docker stop -t 45, compose stop_grace_period: 45s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["indextts-server"]

# Each target installs one virtualenv in /opt/venv, as root, from the build context mounted for
# that step only (no copy of the context or of the wheels stays in any layer; the full image's
# torch is several GB): from the wheel folder when it holds wheels, else from the source.

# --- light: the tone engine, no torch (protocol trials, client development, CI, a gateway) ---
FROM runtime AS light
ARG WHEELS
RUN --mount=type=bind,target=/src,rw sh /src/deploy/container-install.sh "/src/${WHEELS}" "[cluster,zeroconf]"
ENV INDEXTTS_SERVER_ENGINE=tone
USER indextts
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-m", "indextts_server.io.operations.healthcheck"]

# --- full (the default target): IndexTTS2 on NVIDIA GPUs (docker run --gpus all …) -----------
FROM runtime AS full
ARG WHEELS
RUN --mount=type=bind,target=/src,rw sh /src/deploy/container-install.sh "/src/${WHEELS}" "[indextts,cluster,zeroconf]"
USER indextts
# The model loads (or downloads, with --download) before the ports open: a long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python", "-m", "indextts_server.io.operations.healthcheck"]
