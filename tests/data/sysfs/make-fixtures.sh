#!/bin/sh
# Rebuilds the fake host trees under tests/data/sysfs/ (see README.md there).
# Deterministic: run it again and `git status` shows nothing. Needs only sh, printf, dd, ln.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

# ---------------------------------------------------------------------------------------
# lab/: a UEFI machine with Secure Boot on; NVMe, SATA, USB and virtio disks plus a loop
# device; e1000e, igb (link down) and virtio-net NICs, a bridge, loopback, and an Intel
# 82574L (8086:10d3) with no driver bound, hence no netdev.
# ---------------------------------------------------------------------------------------
lab="$here/lab"
rm -rf "$lab"
mkdir -p "$lab"
cd "$lab"

put() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }
link() { mkdir -p "$(dirname "$2")"; ln -s "$1" "$2"; }
# bytes FILE OFFSET PRINTF-FORMAT: write raw bytes into FILE at OFFSET
bytes() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
zeros() { mkdir -p "$(dirname "$1")"; dd if=/dev/zero of="$1" bs="$2" count=1 status=none; }

# proc
put proc/sys/kernel/hostname lab-1
put proc/sys/kernel/osrelease 6.1.0-56-cloud-amd64
put proc/meminfo "MemTotal:         475516 kB
MemFree:          401234 kB
MemAvailable:     420000 kB"
for n in 0 1; do
  cat >>proc/cpuinfo <<CPU
processor	: $n
vendor_id	: GenuineIntel
cpu family	: 6
model		: 106
model name	: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
stepping	: 6
cpu MHz		: 1999.999
physical id	: 0
siblings	: 2
core id		: $n
cpu cores	: 2
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon rep_good nopl xtopology cpuid tsc_known_freq pni pclmulqdq vmx ssse3 fma cx16 pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves wbnoinvd arat avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq la57 rdpid fsrm md_clear arch_capabilities
bogomips	: 3999.99

CPU
done

# firmware: OVMF's SMBIOS capture, UEFI with Secure Boot enabled (attributes 0x06, value 1)
mkdir -p sys/firmware/dmi/tables
cp "$here/../smbios/ovmf/smbios_entry_point" "$here/../smbios/ovmf/DMI" sys/firmware/dmi/tables/
mkdir -p sys/firmware/efi/efivars
printf '\006\000\000\000\001' >sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c

# PCI functions: pci ADDRESS VENDOR DEVICE CLASS SUBVENDOR SUBDEVICE [DRIVER]
mkdir -p sys/bus/pci/drivers sys/bus/virtio/drivers sys/class/nvme
pci() {
  d=sys/devices/pci0000:00/$1
  put $d/vendor "0x$2"; put $d/device "0x$3"; put $d/class "0x$4"
  put $d/subsystem_vendor "0x$5"; put $d/subsystem_device "0x$6"
  link ../../../bus/pci $d/subsystem
  if [ -n "${7:-}" ]; then
    mkdir -p sys/bus/pci/drivers/$7
    link ../../../bus/pci/drivers/$7 $d/driver
  fi
  link ../../../devices/pci0000:00/$1 sys/bus/pci/devices/$1
}
pci 0000:00:02.0 1af4 1041 020000 1af4 1100 virtio-pci
pci 0000:00:05.0 1af4 1042 010000 1af4 1100 virtio-pci
pci 0000:00:14.0 8086 a36d 0c0330 17aa 2292 xhci_hcd
pci 0000:00:1f.2 8086 a352 010601 17aa 2292 ahci
pci 0000:00:1f.6 8086 15bc 020000 17aa 2292 e1000e
pci 0000:01:00.0 144d a80a 010802 144d a801 nvme
pci 0000:03:00.0 8086 1533 020000 15d9 1533 igb
pci 0000:04:00.0 8086 10d3 020000 8086 a01f

# virtio devices on 00:02.0 (net) and 00:05.0 (block)
virtio() {
  d=sys/devices/pci0000:00/$1/$2
  put $d/vendor 0x1af4; put $d/device "0x$3"
  link ../../../../bus/virtio $d/subsystem
  mkdir -p sys/bus/virtio/drivers/$4
  link ../../../../bus/virtio/drivers/$4 $d/driver
}
virtio 0000:00:02.0 virtio0 0001 virtio_net
virtio 0000:00:05.0 virtio1 0002 virtio_blk

# NICs: nic DEVDIR NAME MAC OPERSTATE CARRIER SPEED [DEVICE-LINK]
nic() {
  d=sys/devices/$1/net/$2
  put $d/address "$3"; put $d/operstate "$4"; put $d/mtu 1500; put $d/type 1
  [ -n "$5" ] && put $d/carrier "$5"
  [ -n "$6" ] && put $d/speed "$6"
  [ -n "${7:-}" ] && link "$7" $d/device
  link ../../devices/$1/net/$2 sys/class/net/$2
}
nic pci0000:00/0000:00:1f.6 eno1 3c:ec:ef:01:02:03 up 1 1000 ../../../0000:00:1f.6
# link down: carrier would fail with EINVAL, so there is no file to read
nic pci0000:00/0000:03:00.0 enp3s0 3c:ec:ef:01:02:04 down "" -1 ../../../0000:03:00.0
# virtio-net has no speed attribute to read here
nic pci0000:00/0000:00:02.0/virtio0 eth0 52:54:00:12:34:56 up 1 "" ../../../virtio0
nic virtual br0 5a:00:00:00:00:01 up 1 ""
nic virtual lo 00:00:00:00:00:00 unknown 1 ""
put sys/devices/virtual/net/lo/type 772

# Disks: disk DISKDIR SECTORS ROTATIONAL LOGICAL PHYSICAL REMOVABLE [DEVICE-LINK]
# (DISKDIR below sys/devices, ending in the disk's name)
disk() {
  d=sys/devices/$1
  put $d/size "$2"; put $d/queue/rotational "$3"
  put $d/queue/logical_block_size "$4"; put $d/queue/physical_block_size "$5"
  put $d/removable "$6"; put $d/ro 0
  [ -n "${7:-}" ] && link "$7" $d/device
  link ../devices/$1 sys/block/"$(basename "$1")"
}
nvme=pci0000:00/0000:01:00.0/nvme/nvme0
put sys/devices/$nvme/model "Samsung SSD 980 PRO 1TB"
put sys/devices/$nvme/serial "S5GXNF0R123456A     "
link ../../../../../class/nvme sys/devices/$nvme/subsystem
disk $nvme/nvme0n1 1000215216 0 512 512 0 ../../nvme0
put sys/devices/$nvme/nvme0n1/wwid eui.002538b111b2a3c4

ata=pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0
put sys/devices/$ata/model "ST4000NM0035-1V4"
put sys/devices/$ata/vendor "ATA     "
put sys/devices/$ata/wwid "naa.5000c500a1b2c3d4"
# SCSI VPD page 0x80: header, length 8, serial
printf '\000\200\000\010ZC1A2B3C' >sys/devices/$ata/vpd_pg80
disk $ata/block/sda 7814037168 1 512 4096 0 ../../../0:0:0:0

usb=pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0
put sys/devices/$usb/model "Ultra Fit"
put sys/devices/$usb/vendor "SanDisk "
disk $usb/block/sdb 60063744 0 512 512 1 ../../../6:0:0:0

disk pci0000:00/0000:00:05.0/virtio1/block/vda 41943040 1 512 512 0 ../../../virtio1
put sys/devices/pci0000:00/0000:00:05.0/virtio1/block/vda/serial siderite-vda

disk virtual/block/loop0 0 0 512 512 0

# Device nodes: small images carrying each disk's signatures.
mkdir -p dev
zeros dev/nvme0n1 16384                 # GPT: protective MBR, primary and backup headers
bytes dev/nvme0n1 450 '\356'
bytes dev/nvme0n1 510 '\125\252'
bytes dev/nvme0n1 512 'EFI PART'
bytes dev/nvme0n1 15872 'EFI PART'
zeros dev/sda 4096                      # ext4: magic 0xEF53, incompat extents|flex_bg
bytes dev/sda 1080 '\123\357'
bytes dev/sda 1120 '\100\002'
zeros dev/sdb 1024                      # dos: one bootable FAT32 (0x0c) partition
bytes dev/sdb 446 '\200\000\000\000\014'
bytes dev/sdb 510 '\125\252'
zeros dev/vda 8192                      # md 1.2 superblock at 4 KiB
bytes dev/vda 4096 '\374\116\053\251'
: >dev/loop0                             # empty loop device

# ---------------------------------------------------------------------------------------
# xeon-2s/: /proc/cpuinfo shape of a two-socket, 2 cores x 2 threads per socket machine.
# ---------------------------------------------------------------------------------------
xeon="$here/xeon-2s"
rm -rf "$xeon"
mkdir -p "$xeon/proc"
n=0
for socket in 0 1; do
  for core in 0 1; do
    for thread in 0 1; do
      cat >>"$xeon/proc/cpuinfo" <<CPU
processor	: $n
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
model name	: Intel(R) Xeon(R) Silver 4110 CPU @ 2.10GHz
physical id	: $socket
siblings	: 4
core id		: $core
cpu cores	: 2
flags		: fpu vme de pse tsc msr pae lm sse4_1 sse4_2 aes avx avx2 avx512f svm_fake vmx

CPU
      n=$((n + 1))
    done
  done
done

# ---------------------------------------------------------------------------------------
# arm64/: /proc/cpuinfo of a 4-core arm64 machine (no model name, no physical/core ids).
# ---------------------------------------------------------------------------------------
arm="$here/arm64"
rm -rf "$arm"
mkdir -p "$arm/proc"
for n in 0 1 2 3; do
  cat >>"$arm/proc/cpuinfo" <<CPU
processor	: $n
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

CPU
done
