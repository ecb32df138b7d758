# The relay image used by compose.yaml.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry-relay /usr/local/bin/ferry-relay
RUN mkdir -p /var/lib/ferry && chown nobody /var/lib/ferry
USER nobody
ENTRYPOINT ["ferry-relay"]
CMD ["serve", "--listen", "0.0.0.0:7070"]
