#!/bin/bash
# shellcheck disable=SC2016
# nbsnap's systemd units, install rules and Debian package:
#  - `systemd-analyze verify` passes on nbsnapd.service, nbsnapd.socket and nbsnap-baseline.service (as
#    configured by CMake, their ExecStart pointed at the binaries of this build);
#  - `cmake --install` (DESTDIR) puts the units, the tmpfiles.d and sysusers.d entries where systemd looks
#    under the prefix (PREFIX/lib/systemd/system, PREFIX/lib/tmpfiles.d, PREFIX/lib/sysusers.d), the commented
#    config at the build's default config path (CMAKE_INSTALL_FULL_SYSCONFDIR/nbsnap), both programs in bin
#    (tests/integration/install.sh checks that nothing lands outside the prefix);
#  - the default config is read by nbsnapd as it is (every key commented or valid);
#  - `cpack -G DEB` builds a .deb with its dependencies declared, the units, the sysusers.d entry and a
#    postinst that creates the group with systemd-sysusers and enables the units, the config as a conffile,
#    and unit ExecStart= paths that exist in the package.
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
PREFIX=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$B/CMakeCache.txt")
BINDIR=$PREFIX/bin
CONFIG_PATH=$(sed -n 's/^#define NBSNAP_CONFIG_PATH "\(.*\)"$/\1/p' "$B/include/agent/build-paths.h")
[[ -n $CONFIG_PATH ]] || fail "no NBSNAP_CONFIG_PATH in $B/include/agent/build-paths.h"
# a cache path: relative ones are under the prefix
cache_dir() {
    local v
    v=$(sed -n "s/^$1:[A-Z]*=//p" "$B/CMakeCache.txt")
    if [[ $v == /* ]]; then echo "$v"; else echo "$PREFIX/$v"; fi
}
UNITDIR=$(cache_dir NBSNAP_SYSTEMD_UNITDIR) TMPFILESDIR=$(cache_dir NBSNAP_TMPFILESDIR)
SYSUSERSDIR=$(cache_dir NBSNAP_SYSUSERSDIR)

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
for u in nbsnapd.service nbsnapd.socket nbsnap-baseline.service; do
    check "$UNITDIR/$u installed" test -s "$DEST$UNITDIR/$u"
done
check "tmpfiles.d entry" grep -q '^d /var/lib/nbsnap 0700 root root' "$DEST$TMPFILESDIR/nbsnap.conf"
check "sysusers.d entry for the socket group" grep -qx 'g nbsnap -' "$DEST$SYSUSERSDIR/nbsnap.conf"
check "default config at $CONFIG_PATH" test -s "$DEST$CONFIG_PATH"
check "nbsnapd installed" test -x "$DEST$BINDIR/nbsnapd"
check "nbsnap installed" test -x "$DEST$BINDIR/nbsnap"
check "installed ExecStart points at the installed nbsnapd and config" \
    grep -qx "ExecStart=$BINDIR/nbsnapd --config $CONFIG_PATH" "$DEST$UNITDIR/nbsnapd.service"
check "nbsnapd's default config path is $CONFIG_PATH" bash -c '"$1" --help | grep -qF "$2"' _ "$NBSNAPD" "$CONFIG_PATH"

step "the default config is valid as shipped"
rc=0
"$NBSNAPD" --config "$DEST$CONFIG_PATH" --socket-group root >"$SCRATCH/conf.log" 2>&1 || rc=$?
check "nbsnapd reads it and only misses the required keys (rc $rc)" grep -q 'registry is not configured' "$SCRATCH/conf.log"
cp "$DEST$CONFIG_PATH" "$SCRATCH/all.conf"
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
check "postinst creates the group with systemd-sysusers" bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./postinst | grep -q "^ *systemd-sysusers nbsnap.conf"' _ "$DEB"
check "conffiles has the config" bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx "$2"' _ "$DEB" "$CONFIG_PATH"
check "units in the package" grep -q "\\.$UNITDIR/nbsnapd.service" "$SCRATCH/deb-files"
check "tmpfiles in the package" grep -q "\\.$TMPFILESDIR/nbsnap.conf" "$SCRATCH/deb-files"
check "sysusers.d in the package" grep -q "\\.$SYSUSERSDIR/nbsnap.conf" "$SCRATCH/deb-files"
check "the config in the package" grep -q "\\.$CONFIG_PATH\$" "$SCRATCH/deb-files"
mkdir -p "$SCRATCH/x"
dpkg-deb -x "$DEB" "$SCRATCH/x"
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$SCRATCH/x$UNITDIR/nbsnapd.service")
check "the packaged unit's ExecStart ($exec_path) is in the package" test -x "$SCRATCH/x$exec_path"

finish_checks
