#!/bin/sh
# `make fixture-16k` renders Debian's man pages (English, German, French, Spanish) with groff.
# On a Debian/Ubuntu machine running as root, install them; elsewhere, say what is missing.
set -eu
pkgs="manpages manpages-dev manpages-de manpages-fr manpages-es groff-base"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-manpages: installing$missing" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
else
    echo "ensure-manpages: the 16k fixture needs$missing; install them (e.g. sudo apt-get install$missing)" >&2
    exit 1
fi
