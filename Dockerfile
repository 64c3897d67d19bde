# meter-state monitor: the service image started by docker-compose.yml.
#
#   docker build -t meter-state-monitor .
#   docker run -p 8080:8080 -p 1883:1883 meter-state-monitor   # embedded broker and store
#
# Configuration follows docs/configuration.md: every MONITOR_* variable below can be
# overridden with `docker run -e` or in the compose file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The whole project (filtered by .dockerignore): pyproject.toml, README.md
# (named as the package readme), the package and the default config/.
COPY . /app

RUN pip install --no-cache-dir . \
    && rm -rf /app/build /app/*.egg-info \
    && groupadd --system --gid 10001 monitor \
    && useradd --system --uid 10001 --gid monitor --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin monitor \
    && mkdir -p /data \
    && chown monitor:monitor /data

# Code and default config stay owned by root (read-only to the service);
# only the data directory is writable. A named volume mounted on /data
# inherits this ownership on first use.
ENV MONITOR_CONFIG=/app/config \
    MONITOR_DATA_DIR=/data \
    MONITOR_HTTP=0.0.0.0:8080 \
    MONITOR_EMBEDDED_MQTT=0.0.0.0:1883
# MONITOR_EMBEDDED_MQTT only matters when MONITOR_MQTT_URL is unset (the
# embedded broker); binding it to all interfaces lets meters outside the
# container publish to it. The compose deployment uses Mosquitto instead.

VOLUME ["/data"]

USER monitor

EXPOSE 8080 1883

# /healthz answers 200 only when the broker is connected and the store is
# writable; urlopen raises (exit status 1) on any other status or no answer.
# python -c with urllib because the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["monitor", "run"]
