#!/bin/sh
# A blockmirror hook (docs/operations.md, "Hooks") that moves a service address to the
# node that is a volume's primary, so that clients reach the volume at one address
# whichever node serves it. Name it as both the `promoted` and the `demoted` hook:
#
#   hooks:
#     promoted: /path/to/contrib/floating-address.sh
#     demoted: /path/to/contrib/floating-address.sh
#
# and give each node, in its environment:
#   BLOCKMIRROR_FLOATING_ADDRESS  the address with its prefix length, e.g. 10.0.0.100/24
#   BLOCKMIRROR_FLOATING_DEVICE   the interface to put it on, e.g. eth0
#   BLOCKMIRROR_FLOATING_VOLUME   (optional) act only for this volume
#
# On `promoted` it adds the address (if this node lacks it) and announces it with three
# gratuitous ARPs (`arping -U`, from iputils-arping), so that the neighbours' caches point
# at this node at once; on `demoted` it removes the address. blockmirror sets
# BLOCKMIRROR_EVENT, BLOCKMIRROR_VOLUME, BLOCKMIRROR_NODE, BLOCKMIRROR_EPOCH and
# BLOCKMIRROR_ROLE. Needs CAP_NET_ADMIN (the node runs as root, or with that capability).
set -eu

address="${BLOCKMIRROR_FLOATING_ADDRESS:?set BLOCKMIRROR_FLOATING_ADDRESS, e.g. 10.0.0.100/24}"
device="${BLOCKMIRROR_FLOATING_DEVICE:?set BLOCKMIRROR_FLOATING_DEVICE, e.g. eth0}"
event="${BLOCKMIRROR_EVENT:-}"
volume="${BLOCKMIRROR_VOLUME:-}"
host="${address%/*}"

if [ -n "${BLOCKMIRROR_FLOATING_VOLUME:-}" ] && [ "$volume" != "$BLOCKMIRROR_FLOATING_VOLUME" ]; then
  echo "floating-address: volume $volume is not $BLOCKMIRROR_FLOATING_VOLUME: nothing to do"
  exit 0
fi

has_address() {
  ip -o addr show dev "$device" | grep -q " inet6\? $host/"
}

case "$event" in
  promoted)
    if has_address; then
      echo "floating-address: $address is on $device already"
    else
      ip addr add "$address" dev "$device"
      echo "floating-address: added $address to $device (volume $volume, epoch ${BLOCKMIRROR_EPOCH:-?})"
    fi
    if command -v arping >/dev/null 2>&1; then
      arping -q -U -c 3 -w 3 -I "$device" "$host" || echo "floating-address: arping -U failed; neighbours learn the move when their ARP entries expire" >&2
    else
      echo "floating-address: arping not found (Debian: iputils-arping); neighbours learn the move when their ARP entries expire" >&2
    fi
    ;;
  demoted)
    if has_address; then
      ip addr del "$address" dev "$device"
      echo "floating-address: removed $address from $device (volume $volume)"
    else
      echo "floating-address: $address is not on $device"
    fi
    ;;
  *)
    echo "floating-address: nothing to do for event '$event'"
    ;;
esac
