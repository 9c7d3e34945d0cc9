#!/usr/bin/env bash
# Capture real SMBIOS tables from QEMU guests (SeaBIOS and OVMF) as test
# fixtures for siderite, and derive deliberately broken variants from them.
#
# Usage: tests/data/smbios/capture.sh [WORK_DIR]
#
#   WORK_DIR  scratch directory for the downloaded Debian kernel, the
#             initramfs and the serial logs
#             (default: ${TMPDIR:-/tmp}/siderite-kernel).
#
# Requirements (Debian 12): qemu-system-x86, ovmf, seabios, busybox-static,
# cpio, apt (for `apt-get download`; only the Debian mirror is contacted).
# Nothing is installed on the host: the kernel .deb is only unpacked with
# `dpkg -x` into WORK_DIR.
#
# Output (next to this script):
#   seabios/{smbios_entry_point,DMI}   real tables, SeaBIOS (q35)
#   ovmf/{smbios_entry_point,DMI}      real tables, OVMF UEFI (q35)
#   seabios_sm3/, ovmf_sm3/            same, forced 64-bit SMBIOS 3.0 entry
#                                      point (smbios-entry-point-type=64)
#   broken/*/{smbios_entry_point,DMI}  derived from the SeaBIOS capture
#
# The script is idempotent: re-running reuses the downloaded kernel and
# rewrites all fixtures.
set -euo pipefail

OUT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK_DIR="${1:-${SIDERITE_KERNEL_DIR:-${TMPDIR:-/tmp}/siderite-kernel}}"
QEMU="${QEMU:-qemu-system-x86_64}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
QEMU_TIMEOUT="${QEMU_TIMEOUT:-180}"

log() { printf '[capture] %s\n' "$*" >&2; }
die() { printf '[capture] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in "$QEMU" apt-get apt-cache dpkg dpkg-deb cpio gzip base64 sha256sum timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done
[ -x "$BUSYBOX" ] || die "busybox not found at $BUSYBOX (install busybox-static)"
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
    || log "warning: $BUSYBOX does not look statically linked"

# ---------------------------------------------------------------- firmware
find_first() {
    local f
    for f in "$@"; do
        if [ -f "$f" ]; then printf '%s\n' "$f"; return 0; fi
    done
    return 1
}
OVMF_CODE="${OVMF_CODE:-$(find_first /usr/share/OVMF/OVMF_CODE.fd /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/ovmf/OVMF_CODE.fd || true)}"
OVMF_VARS="${OVMF_VARS:-}"
if [ -z "$OVMF_VARS" ] && [ -n "$OVMF_CODE" ]; then
    case "$OVMF_CODE" in
        *_4M.fd) OVMF_VARS="$(find_first "$(dirname "$OVMF_CODE")/OVMF_VARS_4M.fd" || true)" ;;
        *)       OVMF_VARS="$(find_first "$(dirname "$OVMF_CODE")/OVMF_VARS.fd" || true)" ;;
    esac
fi
OVMF_FD="${OVMF_FD:-$(find_first /usr/share/ovmf/OVMF.fd /usr/share/OVMF/OVMF.fd || true)}"
if [ -z "$OVMF_CODE" ] || [ -z "$OVMF_VARS" ]; then
    [ -n "$OVMF_FD" ] || die "no OVMF firmware found (install ovmf)"
fi

# ------------------------------------------------------------------ kernel
mkdir -p "$WORK_DIR"
WORK_DIR="$(cd "$WORK_DIR" && pwd)"

# Resolve the concrete image package behind the metapackage.
KPKG="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/^ *Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')"
[ -n "$KPKG" ] || die "could not resolve linux-image-cloud-amd64 dependency (apt-get update?)"
log "kernel package: $KPKG"

KDEB="$(ls "$WORK_DIR"/"${KPKG}"_*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$KDEB" ]; then
    log "downloading $KPKG into $WORK_DIR"
    (cd "$WORK_DIR" && apt-get download "$KPKG")
    KDEB="$(ls "$WORK_DIR"/"${KPKG}"_*.deb | head -n1)"
fi
KVER_PKG="$(dpkg-deb -f "$KDEB" Version)"
KROOT="$WORK_DIR/root"
if [ ! -f "$KROOT/.extracted-$(basename "$KDEB")" ]; then
    rm -rf "$KROOT"
    mkdir -p "$KROOT"
    dpkg -x "$KDEB" "$KROOT"
    touch "$KROOT/.extracted-$(basename "$KDEB")"
fi
KERNEL="$(ls "$KROOT"/boot/vmlinuz-* | head -n1)"
[ -f "$KERNEL" ] || die "no /boot/vmlinuz-* in $KDEB"
log "kernel: $KERNEL ($KPKG $KVER_PKG)"

# --------------------------------------------------------------- initramfs
STAGE="$WORK_DIR/initramfs-stage"
INITRD="$WORK_DIR/smbios-initramfs.cpio.gz"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,proc,sys,dev}
cp "$BUSYBOX" "$STAGE/bin/busybox"
for applet in sh mount echo cat cut base64 sha256sum wc ls sleep poweroff; do
    ln -s busybox "$STAGE/bin/$applet"
done
ln -s ../bin/busybox "$STAGE/sbin/poweroff"

cat >"$STAGE/init" <<'EOF'
#!/bin/busybox sh
# siderite SMBIOS capture init: dump the DMI tables to the console as base64.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 0 > /proc/sys/kernel/printk 2>/dev/null
T=/sys/firmware/dmi/tables
echo
echo "SIDERITE-SMBIOS-CAPTURE-START"
for f in smbios_entry_point DMI; do
    if [ -r "$T/$f" ]; then
        echo "SIDERITE-BEGIN $f $(wc -c < "$T/$f") $(sha256sum "$T/$f" | cut -d' ' -f1)"
        base64 "$T/$f"
        echo "SIDERITE-END $f"
    else
        echo "SIDERITE-MISSING $f"
    fi
done
echo "SIDERITE-SMBIOS-CAPTURE-DONE"
poweroff -f
EOF
chmod 0755 "$STAGE/init"
# Deterministic archive: fixed mtimes, sorted names.
find "$STAGE" -exec touch -h -d @0 {} +
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    | gzip -9n >"$INITRD"
log "initramfs: $INITRD ($(stat -c %s "$INITRD") bytes)"

# ---------------------------------------------------------------- capture
SMBIOS_T2=(-smbios 'type=2,manufacturer=Siderite Boards,product=LB-1,serial=BB-1')
smbios_t1() { # serial uuid
    printf 'type=1,manufacturer=Siderite Test,product=Lab Machine,version=1.0,serial=%s,uuid=%s,sku=SKU-42,family=Lab' "$1" "$2"
}

# decode LOG NAME DEST: extract one base64 block from the serial log, verify
# size and sha256 as reported by the guest, write raw bytes to DEST.
decode() {
    local logf="$1" name="$2" dest="$3" hdr size sum
    hdr="$(tr -d '\r' <"$logf" | grep -o "SIDERITE-BEGIN $name [0-9]* [0-9a-f]*" | head -n1 || true)"
    [ -n "$hdr" ] || die "no $name block in $logf"
    size="$(awk '{print $3}' <<<"$hdr")"
    sum="$(awk '{print $4}' <<<"$hdr")"
    tr -d '\r' <"$logf" \
        | awk -v b="SIDERITE-BEGIN $name " -v e="SIDERITE-END $name" '
            index($0, b) { on = 1; next }
            index($0, e) { on = 0; exit }
            on { print }' \
        | base64 -d >"$dest.tmp"
    [ "$(stat -c %s "$dest.tmp")" = "$size" ] || die "$name: size mismatch ($(stat -c %s "$dest.tmp") != $size)"
    [ "$(sha256sum "$dest.tmp" | cut -d' ' -f1)" = "$sum" ] || die "$name: sha256 mismatch"
    mv "$dest.tmp" "$dest"
    log "  $dest: $size bytes, sha256 $sum"
}

# run_capture NAME MACHINE SERIAL UUID FIRMWARE-ARGS...
run_capture() {
    local name="$1" machine="$2" serial="$3" uuid="$4"; shift 4
    local logf="$WORK_DIR/serial-$name.log" t0 t1 rc=0
    rm -f "$logf"
    log "booting $name ..."
    t0="$(date +%s.%N)"
    timeout "$QEMU_TIMEOUT" "$QEMU" \
        -accel tcg -machine "$machine" -m 512 -smp 2 \
        -display none -monitor none -no-reboot \
        -serial "file:$logf" \
        -net none \
        "$@" \
        -smbios "$(smbios_t1 "$serial" "$uuid")" \
        "${SMBIOS_T2[@]}" \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 quiet panic=-1" \
        </dev/null || rc=$?
    t1="$(date +%s.%N)"
    log "  $name: qemu exit $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
    grep -q SIDERITE-SMBIOS-CAPTURE-DONE "$logf" || die "$name: capture incomplete (see $logf)"
    mkdir -p "$OUT_DIR/$name"
    decode "$logf" smbios_entry_point "$OUT_DIR/$name/smbios_entry_point"
    decode "$logf" DMI "$OUT_DIR/$name/DMI"
    grep -aq 'Siderite Test' "$OUT_DIR/$name/DMI" || die "$name: 'Siderite Test' not in DMI"
    grep -aq "$serial" "$OUT_DIR/$name/DMI" || die "$name: serial $serial not in DMI"
}

run_capture seabios q35 SER-SEABIOS-001 5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e

if [ -n "$OVMF_CODE" ] && [ -n "$OVMF_VARS" ]; then
    cp "$OVMF_VARS" "$WORK_DIR/OVMF_VARS.fd"
    OVMF_ARGS=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
               -drive "if=pflash,format=raw,unit=1,file=$WORK_DIR/OVMF_VARS.fd")
else
    OVMF_ARGS=(-bios "$OVMF_FD")
fi
run_capture ovmf q35 SER-OVMF-002 7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b "${OVMF_ARGS[@]}"

# QEMU 7.2 defaults to the 32-bit (_SM_, SMBIOS 2.8) entry point with both
# firmwares; force the 64-bit SMBIOS 3.0 (_SM3_) entry point as well so both
# entry point formats are covered by real captures.
run_capture seabios_sm3 q35,smbios-entry-point-type=64 SER-SEABIOS-003 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d
cp "$OVMF_VARS" "$WORK_DIR/OVMF_VARS.fd" 2>/dev/null || true
run_capture ovmf_sm3 q35,smbios-entry-point-type=64 SER-OVMF-004 0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e "${OVMF_ARGS[@]}"

# --------------------------------------------------------- broken fixtures
# All derived from the SeaBIOS capture.
SRC="$OUT_DIR/seabios"
B="$OUT_DIR/broken"
rm -rf "$B"
mkdir -p "$B"/{truncated,bad_length,no_terminator,bad_entry_point,empty}

# truncated: DMI cut after 57 bytes (in the middle of a structure).
cp "$SRC/smbios_entry_point" "$B/truncated/smbios_entry_point"
head -c 57 "$SRC/DMI" >"$B/truncated/DMI"

# bad_length: first structure's formatted-area length (offset 1) = 2 (< 4).
cp "$SRC/smbios_entry_point" "$B/bad_length/smbios_entry_point"
cp "$SRC/DMI" "$B/bad_length/DMI"
printf '\002' | dd of="$B/bad_length/DMI" bs=1 seek=1 count=1 conv=notrunc status=none

# no_terminator: final two bytes (the double-NUL ending the last
# structure's string set) overwritten with "AA".
cp "$SRC/smbios_entry_point" "$B/no_terminator/smbios_entry_point"
cp "$SRC/DMI" "$B/no_terminator/DMI"
dmi_size="$(stat -c %s "$SRC/DMI")"
printf 'AA' | dd of="$B/no_terminator/DMI" bs=1 seek=$((dmi_size - 2)) count=2 conv=notrunc status=none

# bad_entry_point: anchor's first four bytes replaced by "XXXX".
cp "$SRC/smbios_entry_point" "$B/bad_entry_point/smbios_entry_point"
printf 'XXXX' | dd of="$B/bad_entry_point/smbios_entry_point" bs=1 seek=0 count=4 conv=notrunc status=none
cp "$SRC/DMI" "$B/bad_entry_point/DMI"

# empty: real entry point, zero-byte DMI.
cp "$SRC/smbios_entry_point" "$B/empty/smbios_entry_point"
: >"$B/empty/DMI"

# ----------------------------------------------------------------- summary
describe_ep() {
    local f="$1"
    case "$(head -c 5 "$f")" in
        _SM3_) printf '64-bit _SM3_, SMBIOS %d.%d' \
                   "$(od -An -tu1 -j7 -N1 "$f")" "$(od -An -tu1 -j8 -N1 "$f")" ;;
        _SM_*) printf '32-bit _SM_, SMBIOS %d.%d' \
                   "$(od -An -tu1 -j6 -N1 "$f")" "$(od -An -tu1 -j7 -N1 "$f")" ;;
        *)     printf 'unknown anchor' ;;
    esac
}
log "seabios     entry point: $(describe_ep "$OUT_DIR/seabios/smbios_entry_point")"
for n in ovmf seabios_sm3 ovmf_sm3; do
    log "$(printf '%-11s' "$n") entry point: $(describe_ep "$OUT_DIR/$n/smbios_entry_point")"
done
log "provenance: $("$QEMU" --version | head -n1); $(dpkg-query -W -f='${Package} ${Version}  ' ovmf seabios 2>/dev/null); kernel $KPKG $KVER_PKG"
log "kernel tree: $KROOT"
log "done"
