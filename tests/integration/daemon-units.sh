#!/bin/bash
# shellcheck disable=SC2016
# nbsnap's systemd units, install rules and Debian package:
#  - `systemd-analyze verify` passes on nbsnapd.service, nbsnapd.socket and nbsnap-baseline.service (as
#    configured by CMake, their ExecStart pointed at the binaries of this build);
#  - `cmake --install` (DESTDIR) puts the units where systemd looks (pkg-config systemdsystemunitdir), the
#    tmpfiles.d entry in /usr/lib/tmpfiles.d, the commented config in /etc/nbsnap, both programs in bin;
#  - the default config is read by nbsnapd as it is (every key commented or valid);
#  - `cpack -G DEB` builds a .deb with its dependencies declared, the units, a postinst that enables them,
#    the config as a conffile, and unit ExecStart= paths that exist in the package.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

need_cmd systemd-analyze cmake cpack dpkg-deb pkg-config "$PYTHON"
need_nbsnap
need_nbsnapd
[[ -n ${NBSNAP_BINARY_DIR:-} && -f $NBSNAP_BINARY_DIR/CMakeCache.txt ]] || { note "SKIP: NBSNAP_BINARY_DIR is not a build dir"; exit 77; }
scratch_init nbd-units
B=$NBSNAP_BINARY_DIR
NBSNAP=$(realpath "$NBSNAP") NBSNAPD=$(realpath "$NBSNAPD")
BINDIR=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$B/CMakeCache.txt")/bin

step "systemd-analyze verify"
mkdir -p "$SCRATCH/units"
for u in nbsnapd.service nbsnapd.socket nbsnap-baseline.service; do
    check "$u configured by cmake" test -s "$B/units/$u"
    sed -e "s|$BINDIR/nbsnapd|$NBSNAPD|g" -e "s|$BINDIR/nbsnap |$NBSNAP |g" "$B/units/$u" >"$SCRATCH/units/$u"
done
# the socket's group must exist for verify: use root's in this copy
sed -i 's/^SocketGroup=.*/SocketGroup=root/' "$SCRATCH/units/nbsnapd.socket"
if systemd-analyze verify --man=no "$SCRATCH/units/nbsnapd.socket" "$SCRATCH/units/nbsnapd.service" \
    "$SCRATCH/units/nbsnap-baseline.service" >"$SCRATCH/verify.log" 2>&1; then
    verify_rc=0
else
    verify_rc=$?
fi
cat "$SCRATCH/verify.log" >&2
check "systemd-analyze verify exits 0" test "$verify_rc" = 0
check "no warnings about our units" bash -c '! grep -E "nbsnap" "$1"' _ "$SCRATCH/verify.log"
check "Type=notify with a watchdog" grep -q '^WatchdogSec=' "$SCRATCH/units/nbsnapd.service"
check "Restart=on-failure" grep -q '^Restart=on-failure' "$SCRATCH/units/nbsnapd.service"
check "socket mode 0660" grep -q '^SocketMode=0660' "$SCRATCH/units/nbsnapd.socket"
check "baseline: nbsnap baseline --root / --state-dir /var/lib/nbsnap" \
    grep -q "^ExecStart=$NBSNAP baseline --root / --state-dir /var/lib/nbsnap$" "$SCRATCH/units/nbsnap-baseline.service"
check "baseline before user sessions" grep -q '^Before=.*systemd-user-sessions.service' "$SCRATCH/units/nbsnap-baseline.service"
check "no sandboxing option that hides part of the tree" bash -c '! grep -Eq "^(PrivateTmp|ProtectHome|TemporaryFileSystem|InaccessiblePaths)=" "$1"' _ "$SCRATCH/units/nbsnapd.service"

step "cmake --install"
DEST=$SCRATCH/dest
DESTDIR=$DEST cmake --install "$B" >"$SCRATCH/install.log" 2>&1 || { cat "$SCRATCH/install.log" >&2; fail "cmake --install failed"; }
UNITDIR=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
for u in nbsnapd.service nbsnapd.socket nbsnap-baseline.service; do
    check "$UNITDIR/$u installed" test -s "$DEST$UNITDIR/$u"
done
check "tmpfiles.d entry" grep -q '^d /var/lib/nbsnap 0700 root root' "$DEST/usr/lib/tmpfiles.d/nbsnap.conf"
check "default config in /etc/nbsnap" test -s "$DEST/etc/nbsnap/nbsnapd.conf"
check "nbsnapd installed" test -x "$DEST$BINDIR/nbsnapd"
check "nbsnap installed" test -x "$DEST$BINDIR/nbsnap"
check "installed ExecStart points at the installed nbsnapd" grep -q "^ExecStart=$BINDIR/nbsnapd " "$DEST$UNITDIR/nbsnapd.service"

step "the default config is valid as shipped"
rc=0
"$NBSNAPD" --config "$DEST/etc/nbsnap/nbsnapd.conf" --socket-group root >"$SCRATCH/conf.log" 2>&1 || rc=$?
check "nbsnapd reads it and only misses the required keys (rc $rc)" grep -q 'registry is not configured' "$SCRATCH/conf.log"
cp "$DEST/etc/nbsnap/nbsnapd.conf" "$SCRATCH/all.conf"
sed -i -E 's/^;([a-z_]+ = )/\1/' "$SCRATCH/all.conf" # every commented example enabled
sed -i -E 's|^(token_file = ).*|\1'"$SCRATCH"'/token|; s|^socket_group = .*|socket_group = root|' "$SCRATCH/all.conf"
echo tok >"$SCRATCH/token"
rc=0
"$NBSNAPD" --config "$SCRATCH/all.conf" --help >/dev/null 2>"$SCRATCH/all.log" || rc=$?
check "every example key parses (rc $rc: $(head -c 200 "$SCRATCH/all.log"))" test "$rc" = 0

step "cpack -G DEB"
mkdir -p "$SCRATCH/pkg"
(cd "$SCRATCH/pkg" && cpack -G DEB --config "$B/CPackConfig.cmake" -B "$SCRATCH/pkg") >"$SCRATCH/cpack.log" 2>&1 ||
    { cat "$SCRATCH/cpack.log" >&2; fail "cpack -G DEB failed"; }
DEB=$(find "$SCRATCH/pkg" -maxdepth 1 -name 'nbsnap_*.deb' | head -n 1)
check "a .deb was built" test -n "$DEB"
dpkg-deb -I "$DEB" >"$SCRATCH/deb-info" 2>&1
dpkg-deb -c "$DEB" >"$SCRATCH/deb-files" 2>&1
cat "$SCRATCH/deb-info" >&2
for dep in libsystemd0 libmicrohttpd12 libinih1 libcurl libarchive libcjson; do
    check "Depends: $dep" grep -Eq "^ Depends:.*$dep" "$SCRATCH/deb-info"
done
check "Depends: systemd" grep -Eq '^ Depends:.*systemd \(' "$SCRATCH/deb-info"
check "postinst enables the units" bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./postinst | grep -q "enable"' _ "$DEB"
check "conffiles has the config" bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx /etc/nbsnap/nbsnapd.conf' _ "$DEB"
check "units in the package" grep -q "\\.$UNITDIR/nbsnapd.service" "$SCRATCH/deb-files"
check "tmpfiles in the package" grep -q './usr/lib/tmpfiles.d/nbsnap.conf' "$SCRATCH/deb-files"
mkdir -p "$SCRATCH/x"
dpkg-deb -x "$DEB" "$SCRATCH/x"
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$SCRATCH/x$UNITDIR/nbsnapd.service")
check "the packaged unit's ExecStart ($exec_path) is in the package" test -x "$SCRATCH/x$exec_path"

finish_checks
