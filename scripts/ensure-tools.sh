#!/usr/bin/env bash
# Installs the system tools blockmirror's tests drive (real NBD clients, fio, nbdkit,
# e2fsprogs, FUSE, nftables for partitions, etcd for coordination, iproute2 for network
# namespaces, arping for the floating-address hook) when any is missing. As root it runs
# apt-get; otherwise it names the packages to install and fails, because interop tests
# never skip silently.
set -euo pipefail

packages=(qemu-utils libnbd-bin nbdkit fio python3-libnbd e2fsprogs fuse3 util-linux nftables etcd-server iproute2 iputils-arping)
commands=(qemu-img qemu-io qemu-nbd nbdkit nbdinfo nbdcopy nbdfuse nbdsh fio mkfs.ext4 e2fsck losetup mount nft etcd ip arping)

missing=()
for command in "${commands[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("$command")
done
# libnbd's Python binding belongs to Debian's python, whatever python comes first on PATH.
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=("python3-libnbd (/usr/bin/python3 -c 'import nbd')")

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "ensure-tools: missing: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-tools: not root; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}" >/dev/null
for command in "${commands[@]}"; do
  command -v "$command" >/dev/null 2>&1 || { echo "ensure-tools: $command still missing after install" >&2; exit 1; }
done
/usr/bin/python3 -c 'import nbd' || { echo "ensure-tools: python3-libnbd still missing" >&2; exit 1; }
echo "ensure-tools: installed ${packages[*]}" >&2
