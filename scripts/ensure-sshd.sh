#!/bin/sh
# The lab tests start a real OpenSSH server (tests/sshd_fixture.py) and copy with rsync.
# On a clean Debian/Ubuntu CI machine running as root, install them; elsewhere, say what is missing.
set -eu
missing=""
[ -x /usr/sbin/sshd ] || [ -x /usr/local/sbin/sshd ] || [ -x /sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-sshd: installing$missing" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
else
    echo "ensure-sshd: the lab tests need$missing; install them (e.g. sudo apt-get install$missing)" >&2
    exit 1
fi
