#!/bin/sh
# Sets bansink up on Debian 12 as root: system packages, then a virtualenv in ./.venv built from
# Debian's own python3 so that it sees python3-nftables. `--test` adds what the tests need.
set -eu
cd "$(dirname "$0")/.."
test "$(id -u)" = 0 || { echo "setup.sh: run as root (apt-get and nftables need it)" >&2; exit 1; }
packages="nftables python3-nftables python3-venv python3-pip iproute2"
extras=""
if [ "${1:-}" = "--test" ]; then
    # strace and systemd (systemd-analyze): the least-privilege tests check the unit with them;
    # chromium: the web page's browser tests (tests/web/) drive Debian's build with Playwright
    packages="$packages rsyslog rsyslog-relp rsyslog-openssl bsdutils openssl strace systemd"
    packages="$packages chromium"
    extras="[test]"
fi
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
# The account deploy/bansink.service runs as (README, "Running with least privilege"); running
# bansink as root from this checkout does not use it.
if ! getent passwd bansink >/dev/null; then
    if getent group bansink >/dev/null; then group="--gid bansink"; else group="--user-group"; fi
    useradd --system $group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --comment "bansink daemon" bansink
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import nftables' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
# Playwright (a test extra) must never fetch a browser of its own: Debian's chromium is used
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 .venv/bin/pip install -q --disable-pip-version-check -e ".$extras"
if [ "${1:-}" = "--test" ] && [ ! -f .cache/fail2ban/etc/fail2ban/filter.d/common.conf ]; then
    # fail2ban's stock filters and their sample logs are the filter tests' truth set. Unpacked,
    # not installed: installing would start fail2ban and have it change this host's firewall.
    rm -rf .cache/fail2ban.tmp && mkdir -p .cache/fail2ban.tmp
    (cd .cache/fail2ban.tmp && { apt-get download -qq fail2ban 2>/dev/null ||
        { apt-get update -qq && apt-get download -qq fail2ban; }; })
    dpkg-deb -x .cache/fail2ban.tmp/fail2ban_*.deb .cache/fail2ban.tmp/root
    rm -rf .cache/fail2ban && mv .cache/fail2ban.tmp/root .cache/fail2ban && rm -rf .cache/fail2ban.tmp
fi
