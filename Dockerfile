# mxkeys as a container sidecar: a static binary on a minimal base.
#
#   docker build -t mxkeys .
#   docker run -v acme:/acme:ro -v tls:/tls -e SSL_DOMAIN=mail.example.com mxkeys
#
# This image has no Postfix, so with ACME_POSTHOOK unset no reload command
# runs (said once at start): the files are installed and the mail container
# picks them up on its own reload. To reload it at once, share its PID
# namespace and mount its pid directory, and name its master's pid file:
#
#   docker run --pid container:mailserver -v acme:/acme:ro -v tls:/tls \
#     -v postfix-pid:/run/postfix-pid:ro -e SSL_DOMAIN=mail.example.com \
#     -e MXKEYS_RELOAD_PIDFILE=/run/postfix-pid/master.pid mxkeys
#
# (the mail container mounting postfix-pid at /var/spool/postfix/pid). The
# pid file must belong to root (or mxkeys' user) and be writable by nobody
# else, and never name PID 1: a mail container running `postfix start-fg`
# needs an init (--init). A first install whose reload fails keeps its
# files and the reload is retried on the next pass.
#
# Configured by the environment alone (see README: Container sidecar), or by
# a file mounted at /etc/mxkeys/mxkeys.toml.

# The bases are build arguments (defaults: the public images), so the image
# builds where no registry is reachable, on local bases of the same kind.
# PREBUILT names an mxkeys binary in the build context, built elsewhere for
# the runtime base's C library, instead of building from source here:
#
#   podman build --pull=never --build-arg BUILD_IMAGE=localhost/bookworm \
#     --build-arg RUNTIME_IMAGE=localhost/bookworm --build-arg PREBUILT=mxkeys \
#     -f Dockerfile -t mxkeys DIR-HOLDING-ONLY-mxkeys
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=alpine:3

FROM ${BUILD_IMAGE} AS build
ARG PREBUILT=
# protoc (and the well-known .proto files) compile etcd's API for the etcd
# client ([cluster], cargo feature `etcd`).
RUN if [ -z "$PREBUILT" ]; then \
      if command -v apk >/dev/null; then \
        apk add --no-cache musl-dev protobuf-dev; \
      else \
        apt-get update \
        && apt-get install -y --no-install-recommends musl-tools protobuf-compiler libprotobuf-dev \
        && rm -rf /var/lib/apt/lists/*; \
      fi \
      && rustup target add x86_64-unknown-linux-musl; \
    fi
WORKDIR /src
COPY . .
RUN if [ -n "$PREBUILT" ]; then \
      mkdir -p /out && cp "$PREBUILT" /out/mxkeys && chmod 0755 /out/mxkeys; \
    else \
      cargo build --release --locked --target x86_64-unknown-linux-musl -p mxkeys --features etcd \
      && install -D -m 0755 target/x86_64-unknown-linux-musl/release/mxkeys /out/mxkeys; \
    fi

# Alpine only for /bin/sh (ACME_POSTHOOK is a shell command) and the CA
# roots (DNS providers' APIs); a Debian base brings its own ca-certificates.
FROM ${RUNTIME_IMAGE}
RUN if command -v apk >/dev/null; then apk add --no-cache ca-certificates; fi \
 && mkdir -p -m 0700 /var/lib/mxkeys
COPY --from=build /out/mxkeys /usr/local/bin/mxkeys
# Root: it reads acme.json (0600, Traefik's) and sets owners of the files
# it writes. Nothing else runs in this container.
USER root
VOLUME ["/var/lib/mxkeys"]
ENTRYPOINT ["/usr/local/bin/mxkeys"]
CMD ["run"]
