#!/usr/bin/env bash
# Install the real mail servers the interop tests talk to (Debian, as root).
#
# Postfix, Dovecot (LMTP and SASL) and Redis install normally.  Exim and OpenSMTPD
# each "provide mail-transport-agent" and conflict with Postfix, so their packages
# are downloaded and unpacked into $SMTPPOOL_INTEROP_ROOT (default
# /opt/smtppool-interop) and run from there with their own configuration files;
# their libraries install normally.  OpenSMTPD comes from bookworm-backports (7.4):
# bookworm's 6.8 cannot finish a TLS handshake with OpenSSL 3 (OpenSMTPD issue 1239).  Nothing is started here: the tests start each
# server on a free loopback port and stop it afterwards.  Safe to run twice.
set -euo pipefail
root="${SMTPPOOL_INTEROP_ROOT:-/opt/smtppool-interop}"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: must run as root (apt-get, system users)" >&2
    exit 1
fi

# Package scripts must not start daemons on the CI machine's real ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt_install() {
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
apt_install postfix dovecot-core dovecot-lmtpd redis-server \
    libidn12 libgnutls-dane0 libevent-2.1-7 libdb5.3 libpcre2-8-0 libnsl2

if [ ! -x "$root/usr/sbin/exim4" ] || [ ! -x "$root/usr/sbin/smtpd" ]; then
    work="$(mktemp -d)"
    chmod 777 "$work"    # apt-get download runs as the _apt user
    . /etc/os-release
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" > "$work/sources.list"
    mkdir -p "$work/lists/partial"
    backports=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
               -o "Dir::State::Lists=$work/lists")
    apt-get -qq "${backports[@]}" update
    (cd "$work" && apt-get download -qq exim4-daemon-light exim4-base 2>/dev/null \
        && apt-get "${backports[@]}" download -qq "opensmtpd/${VERSION_CODENAME}-backports" 2>/dev/null)
    mkdir -p "$root"
    for deb in "$work"/*.deb; do
        dpkg -x "$deb" "$root"
    done
    rm -rf "$work"
fi

# The system users the unpacked servers are compiled to drop privileges to.
for user in Debian-exim opensmtpd opensmtpq; do
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
done
mkdir -p /var/lib/opensmtpd/empty    # OpenSMTPD's privilege-separation chroot
# OpenSMTPD runs its delivery helpers (mail.maildir) from a compiled-in path.
ln -sfn "$root/usr/libexec/opensmtpd" /usr/libexec/opensmtpd

echo "interop servers ready: postfix $(postconf -d -h mail_version)," \
    "$("$root/usr/sbin/exim4" -bV 2>/dev/null | head -1 | cut -d' ' -f1-3)," \
    "$("$root/usr/sbin/smtpd" -h 2>&1 | head -1)," \
    "dovecot $(dovecot --version | cut -d' ' -f1)"
