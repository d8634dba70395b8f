# Prometheus for the compose test, in place of prom/prometheus (no registry is reachable in CI): Debian's
# package on the stand-in base, with prom/prometheus's entrypoint, data path and non-root user.
ARG BASE_IMAGE
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /prometheus \
    && chown prometheus:prometheus /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
