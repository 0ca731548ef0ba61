#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the browser tests (tests/console), once.
#
#   install-chromium.sh               install if missing; wait for an install under way
#   install-chromium.sh --background  the same, detached (`make test` starts it first)
#
# Installs are serialised with a lock, so the browser tests' fixture, which runs this script
# in the foreground, waits for the background install that `make test` started and then finds
# both programs present. Without recommended packages: Chromium's own dependencies are all a
# headless browser needs (the recommends add printing, samba and perl, 2 minutes of dpkg).
# Exit status 3: not root or no apt-get (the browser tests then skip, loudly).
set -euo pipefail

LOG="${TMPDIR:-/tmp}/recsys-chromium-install.log"
present() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if [ "${1:-}" = "--background" ]; then
    present && exit 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then exit 0; fi
    # at the lowest CPU and disk priority: it runs beside the Python install and the tests,
    # which leave idle time (about a third of 2 cores) that it can use without slowing them
    nohup nice -n 19 ionice -c 2 -n 7 bash "$0" >"$LOG" 2>&1 </dev/null &
    exit 0
fi

exec 9>"${TMPDIR:-/tmp}/recsys-chromium-install.lock"
flock 9
present && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "apt-get is missing or this is not root" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1  # no process scan after the install
apt-get update -q
apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-liberation
present
