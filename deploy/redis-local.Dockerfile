# A stand-in for the official redis image, from Debian's redis-server (Redis 7.0) on the
# local base image: deploy/verify.sh builds it where no registry is reachable and swaps it in
# with a compose override file. It behaves as the compose file expects of redis:7.4-alpine:
# `redis-server <conf>` and `redis-cli` on PATH, data in /data, not running as root.
ARG BASE_IMAGE=recsys-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data /usr/local/etc/redis
VOLUME ["/data"]
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "/usr/local/etc/redis/redis.conf"]
