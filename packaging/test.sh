#!/usr/bin/env bash
# Builds the .deb and .rpm (packaging/build.sh) and checks them: their files and conffiles, that
# installing does not start the service, lintian on the .deb, and the .deb installed into a
# throwaway Debian root (debootstrap) where `kedge version` and `kedge check` run.
#   bash packaging/test.sh        (as root; installs lintian, debootstrap and rpm when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[packages] $*"; }
fail() { echo "[packages] FAILED: $*" >&2; exit 1; }

missing=()
for t in lintian debootstrap rpm; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash packaging/build.sh
deb="$(ls target/packages/kedge_*.deb | head -n 1)"
rpm_file="$(ls target/packages/kedge-*.rpm | head -n 1)"
[ -f "$deb" ] || fail "no .deb built"
[ -f "$rpm_file" ] || fail "no .rpm built"

want=(usr/bin/kedge etc/kedge/kedge.toml lib/systemd/system/kedge.service usr/lib/sysusers.d/kedge.conf
      usr/share/man/man8/kedge.8 usr/share/doc/kedge/examples/rbac.yaml)
deb_files="$(dpkg-deb -c "$deb" | awk '{print $6}')"
rpm_files="$(rpm -qlp "$rpm_file" 2>/dev/null)"
for f in "${want[@]}"; do
    grep -Eq "^\./(usr/)?${f#usr/}(\.gz)?$|^\./${f}(\.gz)?$" <<<"$deb_files" || fail ".deb lacks $f:
$deb_files"
done
for f in usr/bin/kedge etc/kedge/kedge.toml usr/lib/systemd/system/kedge.service usr/lib/sysusers.d/kedge.conf \
         usr/share/man/man8/kedge.8 usr/share/doc/kedge/examples/rbac.yaml; do
    grep -q "^/$f" <<<"$rpm_files" || fail ".rpm lacks /$f:
$rpm_files"
done
say "files: ok (.deb and .rpm)"

# The configuration survives upgrades and edits.
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/kedge/kedge.toml || fail "kedge.toml is not a conffile"
rpm -qp --configfiles "$rpm_file" 2>/dev/null | grep -qx /etc/kedge/kedge.toml || fail "kedge.toml is not %config"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" 2>/dev/null | grep -q '^cn /etc/kedge/kedge.toml$' \
    || fail "kedge.toml is not %config(noreplace)"
# Installing never starts (or enables) the service: the configuration comes first.
postinst="$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst)"
if grep -Eq 'deb-systemd-invoke (start|restart)|systemctl (start|restart|enable)' <<<"$postinst"; then
    fail "the .deb's postinst starts or enables kedge:
$postinst"
fi
if rpm -qp --scripts "$rpm_file" 2>/dev/null | grep -Eq 'systemctl (start|restart|enable)'; then
    fail "the .rpm's scripts start or enable kedge"
fi
say "conffiles and scripts: ok"

# lintian: no errors (tags of severity E).
lint="$(lintian --no-tag-display-limit "$deb" 2>&1 || true)"
if grep -q '^E:' <<<"$lint"; then
    fail "lintian errors:
$lint"
fi
say "lintian: no errors ($(grep -c '^W:' <<<"$lint" || true) warnings)"

# A throwaway Debian root: install the .deb, run the binary.
root="$(mktemp -d /tmp/kedge-pkg-root.XXXXXX)"
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
say "debootstrap bookworm into $root (${mirror:-http://deb.debian.org/debian})"
debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/tmp/kedge-debootstrap.log 2>&1 \
    || fail "debootstrap (see /tmp/kedge-debootstrap.log)"
cp "$deb" "$root/tmp/kedge.deb"
mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# apt, so that the dependencies (systemd-sysusers) come along, as on a real host.
chroot "$root" apt-get install -y -qq /tmp/kedge.deb >/tmp/kedge-pkg-install.log 2>&1 \
    || fail "installing the .deb in the Debian root (see /tmp/kedge-pkg-install.log)"
chroot "$root" getent passwd kedge >/dev/null || fail "no kedge user after install"
[ "$(stat -c %a "$root/var/lib/kedge")" = 700 ] || fail "/var/lib/kedge is not 0700"
chroot "$root" /usr/bin/kedge version | grep -q '^kedge ' || fail "kedge version in the Debian root"
chroot "$root" /usr/bin/kedge check --config /etc/kedge/kedge.toml || fail "kedge check on the packaged config"
say "installed in a Debian root: kedge version and kedge check ok"
