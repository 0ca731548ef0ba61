#!/bin/sh
# One image, several roles: api | worker | beat | flower | bootstrap | any command.
# The commands match the Procfile that `make run` uses.
set -eu
role="${1:-api}"
[ $# -gt 0 ] && shift

case "$role" in
  api)
    exec gunicorn -c python:api.gunicorn_conf --bind "${RECSYS_HOST:-0.0.0.0}:${RECSYS_PORT:-8000}" \
      --worker-class gthread --workers "${RECSYS_WEB_WORKERS:-2}" \
      --threads "${RECSYS_WEB_THREADS:-32}" --timeout "${RECSYS_WEB_TIMEOUT:-3600}" \
      --graceful-timeout "${RECSYS_WEB_GRACEFUL_TIMEOUT:-5}" --no-control-socket --access-logfile - \
      "api.app:create_app()" "$@" ;;
  worker)
    # RECSYS_WORKER_QUEUES: train,callbacks (default) | train | callbacks
    exec celery -A worker.celery_app worker -Q "${RECSYS_WORKER_QUEUES:-train,callbacks}" -E \
      --concurrency "${RECSYS_WORKER_CONCURRENCY:-1}" --prefetch-multiplier 1 \
      --hostname "${RECSYS_WORKER_NAME:-worker}@%h" --loglevel "${RECSYS_LOG_LEVEL:-INFO}" "$@" ;;
  beat)
    # redbeat's scheduler (schedules in Redis) plus a heartbeat file for the healthcheck (beat_heartbeat.py).
    export PYTHONPATH="/usr/local/lib/recsys-deploy${PYTHONPATH:+:$PYTHONPATH}"
    exec celery -A worker.celery_app beat --scheduler recsys_beat_heartbeat:HeartbeatScheduler \
      --schedule "${RECSYS_DATA_DIR:-/var/lib/recsys}/celerybeat-schedule" \
      --loglevel "${RECSYS_LOG_LEVEL:-INFO}" "$@" ;;
  flower)
    : "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password (Flower must ask for a login)}"
    exec celery -A worker.celery_app flower --address=0.0.0.0 \
      --port="${RECSYS_FLOWER_PORT:-5555}" --persistent=False "$@" ;;
  bootstrap)
    exec recsys keys bootstrap ;;
  *)
    exec "$role" "$@" ;;
esac
