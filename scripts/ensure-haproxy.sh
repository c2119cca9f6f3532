#!/bin/sh
# `edgekit lab serve --front` puts HAProxy (Debian's package) in front of the devices' servers, and
# tests/test_lab_front.py runs it. On a clean Debian/Ubuntu machine running as root, install it.
set -eu
if [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-haproxy: installing haproxy" >&2
    apt-get update -q >&2
    # The package's own service is not wanted (edgekit runs haproxy itself, in the foreground).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >&2
else
    echo "ensure-haproxy: lab serve --front needs haproxy; install it (e.g. sudo apt-get install haproxy)" >&2
    exit 1
fi
