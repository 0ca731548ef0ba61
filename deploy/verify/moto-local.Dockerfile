# An S3-compatible store for the two-host simulation: moto's server (from PyPI) on the local
# base image, a stand-in for the motoserver/moto image where no registry is reachable.
ARG BASE_IMAGE=recsys-base:bookworm
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/moto \
 && /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check 'moto[server]>=5,<6'
USER nobody
EXPOSE 5000
ENTRYPOINT ["/opt/moto/bin/moto_server", "--host", "0.0.0.0", "--port", "5000"]
