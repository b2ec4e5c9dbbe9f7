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

# The demo by default; mount mappings and pass --config /etc/scim-gateway/app.yaml for real apps.
# Set SCIM_GATEWAY_TOKEN (or --token) so the demo does not use its built-in token.
CMD ["scim-gateway", "serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]
