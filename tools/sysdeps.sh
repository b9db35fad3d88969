#!/bin/sh
# Installs the Debian packages the speech tests need, once. Quiet when they are present.
set -e
need=""
[ -f /usr/share/pocketsphinx/test/data/goforward.raw ] || need="$need pocketsphinx-testdata"
command -v flite >/dev/null 2>&1 || need="$need flite"
[ -z "$need" ] && exit 0
echo "==> installing Debian packages:$need"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
