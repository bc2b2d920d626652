# Builds `sluice` (librdkafka is compiled in by the rdkafka crate) and ships it on a slim Debian.
#   docker build -t sluice .
#   docker run --rm -v "$PWD/pipelines:/pipelines" sluice run /pipelines/quickstart.yaml
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/sluice sluice && mkdir -p /var/lib/sluice && chown sluice /var/lib/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER sluice
WORKDIR /var/lib/sluice
ENV SLUICE_STATE_DIR=/var/lib/sluice/state
ENTRYPOINT ["sluice"]
CMD ["plugins"]
