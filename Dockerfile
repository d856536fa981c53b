# syntax=docker/dockerfile:1
# Neutrino's container image: neutrino-gateway and neutrino-worker (Swift, embedding Debian's CPython 3.11),
# the Python SDK, the dashboard and the example app. One image for every pod except nats-server.
#
#   docker build -t neutrino:0.1.0 .
#   docker build --build-arg SWIFT_IMAGE=swift:6.3-bookworm -t neutrino:0.1.0 .   # another toolchain, 6.2 or later
#   (swift-otel's manifest needs swift-tools-version 6.2)
#
# Add your app with a derived image (see k8s/README.md):
#   FROM neutrino:0.1.0
#   COPY requirements.txt app.py /opt/neutrino/app/
#   RUN pip install --no-cache-dir -r /opt/neutrino/app/requirements.txt     # into /opt/neutrino/venv
#
# Not built on the development machine (it has no container engine); see k8s/README.md.

ARG SWIFT_IMAGE=swift:6.2-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------------------- build (Swift)
FROM ${SWIFT_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnats-dev libpython3-dev libsqlite3-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not refetch them.
COPY Package.swift Package.resolve[d] ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
# The Swift runtime is shared, not linked statically: libNeutrinoOTLP.so (swift-otel's exporter, loaded only by a
# process that traces; docs/architecture.md, "Tracing") must use the executables' runtime, not carry a second one.
RUN swift build -c release --product neutrino-gateway \
 && swift build -c release --product neutrino-worker \
 && swift build -c release --product NeutrinoOTLP \
 && bin="$(swift build -c release --show-bin-path)" \
 && mkdir -p /out/bin /out/swift \
 && cp "$bin/neutrino-gateway" "$bin/neutrino-worker" "$bin/libNeutrinoOTLP.so" /out/bin/ \
 && cp -a /usr/lib/swift/linux/*.so /out/swift/

# ------------------------------------------------------------------------------------------ runtime (Debian)
FROM ${RUNTIME_IMAGE}
# libnats3.4: the cnats runtime (Debian 12 ships 3.4.1); libpython3.11: the embedded interpreter;
# python3 + python3-venv: the SDK and your app's dependencies live in a venv made from that same interpreter.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnats3.4 libpython3.11 libsqlite3-0 libssl3 libstdc++6 python3 python3-venv ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 neutrino \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin neutrino

# The SDK (package `neutrino`; its one runtime dependency, PyYAML, is for `neutrino deploy`) in a venv from Debian's python3, which the workers'
# embedded libpython3.11 honours through VIRTUAL_ENV.
ENV VIRTUAL_ENV=/opt/neutrino/venv
ENV PATH=/opt/neutrino/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY python /tmp/neutrino-sdk
RUN python3 -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir /tmp/neutrino-sdk \
 && rm -rf /tmp/neutrino-sdk

# The runtime at the path the executables' RUNPATH names (the toolchain's), the exporter library beside them.
COPY --from=build /out/swift/ /usr/lib/swift/linux/
COPY --from=build /out/bin/ /usr/local/bin/
COPY dashboard /opt/neutrino/dashboard
# The default app (the manifests' --app /opt/neutrino/app/app.py); replace it in a derived image.
COPY examples/app.py /opt/neutrino/app/app.py

USER 10001:10001
WORKDIR /opt/neutrino/app
EXPOSE 8080 8000
CMD ["neutrino-gateway", "--help"]
