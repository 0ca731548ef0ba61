# A stand-in for the official nginx image, from Debian's nginx (1.22) on the local base image:
# deploy/verify.sh builds it where no registry is reachable and swaps it in with a compose
# override file. It behaves as the compose file expects of nginx:1.27-alpine: `nginx -g
# 'daemon off;'` with /etc/nginx/nginx.conf, SIGQUIT for a graceful stop, `wget` for the
# healthcheck.
ARG BASE_IMAGE=recsys-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light wget \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 8000
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
