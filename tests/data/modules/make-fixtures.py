#!/usr/bin/env python3
"""Rebuilds tests/data/modules/cloud/ from a real Debian kernel tree (see README.md).

depmod is not installed on the build hosts and the Debian kernel package does not ship
modules.alias/modules.dep (depmod writes them in postinst), so this does depmod's job for
a handful of modules: it reads each .ko's .modinfo section (objcopy) and writes the lines
depmod would write, in depmod's format. Deterministic: re-running changes nothing.

usage: make-fixtures.py [KERNEL_MODULES_DIR]
       default /tmp/siderite-kernel/root/lib/modules/6.1.0-56-cloud-amd64
"""
import os
import subprocess
import sys

MODULES_DIR = sys.argv[1] if len(sys.argv) > 1 else \
    "/tmp/siderite-kernel/root/lib/modules/6.1.0-56-cloud-amd64"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cloud")

# What a QEMU q35 guest with virtio disks/NICs needs, what the agent always loads, and
# crc32c-intel for a module whose file name has a dash.
WANTED = ["virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "sd_mod", "efivarfs",
          "crc32c-intel", "libcrc32c"]
# Lines copied from the tree's modules.builtin.
BUILTIN = ["kernel/drivers/nvme/host/nvme-core.ko", "kernel/drivers/nvme/host/nvme.ko",
           "kernel/net/packet/af_packet.ko"]


def norm(name):
    return name.replace("-", "_")


def modinfo(path):
    raw = subprocess.run(["objcopy", "-O", "binary", "--only-section=.modinfo", path,
                          "/dev/stdout"], check=True, capture_output=True).stdout
    info = {}
    for field in raw.split(b"\0"):
        if b"=" in field:
            k, v = field.decode().split("=", 1)
            info.setdefault(k, []).append(v)
    return info


paths = {}
for dirpath, _, files in os.walk(os.path.join(MODULES_DIR, "kernel")):
    for f in files:
        if f.endswith(".ko"):
            rel = os.path.relpath(os.path.join(dirpath, f), MODULES_DIR)
            paths[norm(f[:-3])] = rel

infos = {}


def info(name):
    if name not in infos:
        infos[name] = modinfo(os.path.join(MODULES_DIR, paths[name]))
    return infos[name]


def depends(name):
    deps = info(name).get("depends", [""])[0]
    return [norm(d) for d in deps.split(",") if d]


def load_order(name, seen, out):
    """Dependencies first, as modprobe loads them."""
    for d in depends(name):
        if d not in seen:
            seen.add(d)
            load_order(d, seen, out)
            out.append(d)


closure = []
for w in WANTED:
    w = norm(w)
    if w not in closure:
        closure.append(w)
    order = []
    load_order(w, set(), order)
    for d in order:
        if d not in closure:
            closure.append(d)

os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "modules.alias"), "w") as f:
    f.write("# Aliases extracted from modules themselves.\n")
    for name in sorted(closure, key=lambda n: paths[n]):
        for a in info(name).get("alias", []):
            f.write(f"alias {a} {name}\n")
with open(os.path.join(OUT, "modules.dep"), "w") as f:
    for name in sorted(closure, key=lambda n: paths[n]):
        order = []
        load_order(name, set(), order)
        # depmod lists the deps in reverse load order: modprobe loads from the end.
        deps = " ".join(paths[d] for d in reversed(order))
        f.write(f"{paths[name]}:{' ' + deps if deps else ''}\n")
with open(os.path.join(OUT, "modules.builtin"), "w") as f:
    for line in BUILTIN:
        f.write(line + "\n")
