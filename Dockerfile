# mxkeys as a container sidecar: a static binary on a minimal base.
#
#   docker build -t mxkeys .
#   docker run -v acme:/acme:ro -v tls:/tls -e SSL_DOMAIN=mail.example.com mxkeys
#
# This image has no Postfix, so with ACME_POSTHOOK unset no reload command
# runs (said once at start): the files are installed and the mail container
# picks them up on its own reload. To reload it at once, share its PID
# namespace and name its master's pid file:
#
#   docker run --pid container:mailserver -v acme:/acme:ro -v tls:/tls \
#     -e SSL_DOMAIN=mail.example.com \
#     -e MXKEYS_RELOAD_PIDFILE=/var/spool/postfix/pid/master.pid mxkeys
#
# The pid file must belong to root (or mxkeys' user) and be writable by
# nobody else; a first install whose reload fails keeps its files and the
# reload is retried on the next pass.
#
# Configured by the environment alone (see README: Container sidecar), or by
# a file mounted at /etc/mxkeys/mxkeys.toml.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p mxkeys \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/mxkeys /out/mxkeys

# Alpine only for /bin/sh: ACME_POSTHOOK is a shell command.
FROM alpine:3
RUN apk add --no-cache ca-certificates \
 && install -d -m 0700 /var/lib/mxkeys
COPY --from=build /out/mxkeys /usr/local/bin/mxkeys
# Root: it reads acme.json (0600, Traefik's) and sets owners of the files
# it writes. Nothing else runs in this container.
USER root
VOLUME ["/var/lib/mxkeys"]
ENTRYPOINT ["/usr/local/bin/mxkeys"]
CMD ["run"]
