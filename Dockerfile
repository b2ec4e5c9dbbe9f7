# scim-gateway: the same install step as the README (`pip install .`), then `scim-gateway serve`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
COPY mappings ./mappings
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data gateway \
    && mkdir -p /data /etc/scim-gateway \
    && cp mappings/*.yaml /etc/scim-gateway/ \
    && chown gateway /data

USER gateway
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# Liveness: the process answers (docs/operations.md, "Health probes"); the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

# The demo by default; mount mappings and pass --config /etc/scim-gateway/app.yaml for real apps.
# Set SCIM_GATEWAY_TOKEN (or --token) so the demo does not use its built-in token.
CMD ["scim-gateway", "serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]
