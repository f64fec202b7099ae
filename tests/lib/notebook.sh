# shellcheck shell=bash
# A "notebook container" root filesystem without a container runtime: an overlayfs over the base image rootfs,
# plus the mounts a notebook has (a work volume bind mount, a file bind mount on /etc/hosts).
#
#   notebook_mount DIR LOWER    DIR/upper, DIR/work, DIR/merged (overlay, lowerdir=LOWER), then
#                               DIR/workvol (the work volume source, outside the image; has files that must
#                               never appear in an image) bind-mounted on DIR/merged/home/ma-user/work, and
#                               DIR/hosts bind-mounted on DIR/merged/etc/hosts.
#                               exports NB_DIR, NB_MERGED, NB_UPPER, NB_WORKVOL; registers notebook_umount DIR.
#   notebook_umount DIR         lazy-unmounts everything below DIR/merged, innermost first, then the overlay.
#
# LOWER defaults to $BASE_ROOTFS. /home/ma-user/work does not exist in the base: it is created in the upper dir
# as the mount point (as a container runtime does), so the image must not contain it.

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

notebook_mount() {
    local dir=$1 lower=${2:-${BASE_ROOTFS:-}}
    [[ -n $lower && -d $lower ]] || { note "notebook_mount: lower dir '$lower' is not a directory"; return 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/upper" "$dir/work" "$dir/merged" "$dir/workvol"
    at_exit notebook_umount "$(printf '%q' "$dir")"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged" ||
        { note "notebook_mount: mount -t overlay on $dir/merged failed"; return 1; }
    # the work volume: user data that must not be saved
    mkdir -p "$dir/workvol/project"
    echo 'this file lives in the work volume and must never be saved in an image' >"$dir/workvol/README-work-volume"
    head -c 4096 /dev/urandom >"$dir/workvol/project/data.bin"
    chown -R 1000:100 "$dir/workvol"
    mkdir -p "$dir/merged/home/ma-user/work"
    chown 1000:100 "$dir/merged/home/ma-user/work"
    mount --bind "$dir/workvol" "$dir/merged/home/ma-user/work" ||
        { note "notebook_mount: bind mount of the work volume failed"; return 1; }
    # /etc/hosts as the runtime provides it: a file bind mount
    printf '127.0.0.1\tlocalhost\n10.0.0.5\tnotebook-0\n# notebook /etc/hosts (bind mount, not in the image)\n' >"$dir/hosts"
    mount --bind "$dir/hosts" "$dir/merged/etc/hosts" ||
        { note "notebook_mount: bind mount of /etc/hosts failed"; return 1; }
    NB_DIR=$dir NB_MERGED=$dir/merged NB_UPPER=$dir/upper NB_WORKVOL=$dir/workvol
    export NB_DIR NB_MERGED NB_UPPER NB_WORKVOL
}

notebook_umount() {
    local dir=$1 m
    dir=$(realpath -m "$dir")
    # innermost first: sort the mount points below merged by length, longest first
    while IFS= read -r m; do
        [[ -n $m ]] || continue
        umount -l "$m" 2>/dev/null || note "notebook_umount: umount -l $m failed"
    done < <(_mounts_below "$dir/merged" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
    return 0
}
