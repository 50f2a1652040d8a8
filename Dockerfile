# casm: one image with every casm program, for compose.yaml (and
# Kubernetes). Two stages:
#
#   build    Debian bookworm; installs the build dependencies with
#            scripts/deps.sh and compiles with `make build`, the very steps
#            of a developer machine and of CI (the CTest entry
#            compose_dockerfile checks that they stay the same).
#   (final)  Debian bookworm slim with the run-time libraries and the
#            binaries, run as an unprivileged user.
#
#   docker build -t casm .
#   docker run --rm casm casm-gateway      (see compose.yaml for the rest)

FROM debian:bookworm AS build

# deps.sh comes alone first, so that the package layer stays cached while
# the sources change. "build" installs only what compiling needs (make
# comes with build-essential).
WORKDIR /src
COPY scripts/deps.sh scripts/deps.sh
RUN scripts/deps.sh build && rm -rf /var/lib/apt/lists/*

COPY . .
RUN make build DEPS=build BUILD_DIR=/build BUILD_TYPE=RelWithDebInfo


FROM debian:bookworm-slim

# The run-time halves of the -dev packages deps.sh installs, and curl for
# the gateway's healthcheck.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
       --no-install-recommends \
       libzmq5 libczmq4 libjansson4 libpq5 librdkafka1 libmicrohttpd12 \
       libnettle8 libtcmalloc-minimal4 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home \
               --shell /usr/sbin/nologin casm

COPY --from=build /build/broker/casm-broker \
                  /build/gateway/casm-gateway \
                  /build/validator/casm-validator \
                  /build/worker/casm-worker \
                  /build/publisher/casm-publisher \
                  /build/dwh/casm-dwh \
                  /build/dwh/casm-dwh-load \
                  /build/tools/kafka-mock/casm-kafka \
                  /build/tools/keygen/casm-keygen \
                  /usr/local/bin/

USER casm
ENV HTTP_BIND=0.0.0.0
EXPOSE 8080
CMD ["casm-gateway"]
