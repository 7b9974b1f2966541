"""Flows of Ethernet frames: their keys and a deterministic hash.

The driver's `select_queue` (Linux: skb_get_hash + skb_tx_hash) and the fake
device's receive steering (virtio 1.2 section 5.1.6.5.5) both hash a frame's
flow. Linux hashes the flow dissector's keys with siphash and a random seed;
here the hash must be deterministic and cheap in gateware, so it is the
Toeplitz hash that virtio's RSS defines (section 5.1.6.4.3), over the fields
that section lists:

- IPv4 or IPv6 with TCP or UDP: source address, destination address, source
  port, destination port;
- other IPv4 / IPv6 packets, and fragments: source and destination address;
- anything else (ARP, ...): no hash, which maps to queue 0 (RSS's
  "unclassified" queue).

IPv6 extension headers (hop-by-hop, routing, destination options) are
skipped to find the transport header; a fragment header ends the walk.
"""
from __future__ import annotations

import dataclasses

from hdl import spec

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100              # C-VLAN tag
ETH_P_8021AD = 0x88A8             # S-VLAN tag (QinQ)
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
VLAN_VID_MASK = 0x0FFF
MAX_VLAN_TAGS = 2

IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
IPV6_SKIPPABLE_HEADERS = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
IPV6_MAX_EXT_HEADERS = 8

IPV4_MIN_HLEN = 20
IPV4_FRAG_MASK = 0x3FFF           # MF flag and fragment offset
IPV6_HLEN = 40
L4_PORTS_LEN = 4                  # source and destination port, first in TCP and UDP

# The RSS key of Microsoft's verification suite, also Linux's and DPDK's
# usual example: 40 bytes, enough for an IPv6 4-tuple (36 bytes + 4).
DEFAULT_RSS_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")

U32_MASK = 0xFFFF_FFFF


@dataclasses.dataclass(frozen=True)
class FlowKeys:
    """What identifies a flow: addresses, and ports for TCP and UDP."""
    src: bytes
    dst: bytes
    proto: int
    sport: int | None = None
    dport: int | None = None

    def hash_input(self) -> bytes:
        """Section 5.1.6.4.3's input: src address, dst address[, src port, dst port]."""
        data = self.src + self.dst
        if self.sport is not None:
            data += self.sport.to_bytes(2, "big") + self.dport.to_bytes(2, "big")
        return data

    def reversed(self) -> FlowKeys:
        """The keys of the other direction of the flow."""
        return FlowKeys(self.dst, self.src, self.proto, self.dport, self.sport)


def ethertype(frame: bytes) -> tuple[int, int, int | None]:
    """(EtherType after any VLAN tags, offset of the payload, outer VLAN id or None)."""
    offset = 2 * spec.ETH_ALEN
    vid = None
    for _ in range(MAX_VLAN_TAGS + 1):
        if len(frame) < offset + 2:
            return 0, offset, vid
        etype = int.from_bytes(frame[offset:offset + 2], "big")
        if etype not in VLAN_TPIDS or len(frame) < offset + 2 + spec.VLAN_HLEN:
            return etype, offset + 2, vid
        if vid is None:
            vid = int.from_bytes(frame[offset + 2:offset + 4], "big") & VLAN_VID_MASK
        offset += spec.VLAN_HLEN
    return 0, offset, vid


def vlan_id(frame: bytes) -> int | None:
    """The VLAN id of the outer tag, None for an untagged frame."""
    return ethertype(frame)[2]


def _ports(frame: bytes, offset: int) -> tuple[int, int] | None:
    if len(frame) < offset + L4_PORTS_LEN:
        return None
    return (int.from_bytes(frame[offset:offset + 2], "big"),
            int.from_bytes(frame[offset + 2:offset + 4], "big"))


def flow_dissect(frame: bytes) -> FlowKeys | None:
    """The flow keys of an IPv4 or IPv6 frame; None for other frames."""
    frame = bytes(frame)
    etype, offset, _ = ethertype(frame)
    if etype == ETH_P_IP:
        if len(frame) < offset + IPV4_MIN_HLEN or frame[offset] >> 4 != 4:
            return None
        ihl = 4 * (frame[offset] & 0xF)
        proto = frame[offset + 9]
        keys = FlowKeys(frame[offset + 12:offset + 16], frame[offset + 16:offset + 20], proto)
        fragment = int.from_bytes(frame[offset + 6:offset + 8], "big") & IPV4_FRAG_MASK
        l4 = offset + ihl
    elif etype == ETH_P_IPV6:
        if len(frame) < offset + IPV6_HLEN or frame[offset] >> 4 != 6:
            return None
        proto = frame[offset + 6]
        src, dst = frame[offset + 8:offset + 24], frame[offset + 24:offset + 40]
        l4 = offset + IPV6_HLEN
        fragment = False
        for _ in range(IPV6_MAX_EXT_HEADERS):
            if proto == IPPROTO_FRAGMENT:
                fragment = True
                break
            if proto not in IPV6_SKIPPABLE_HEADERS or len(frame) < l4 + 2:
                break
            proto, l4 = frame[l4], l4 + 8 * (frame[l4 + 1] + 1)
        keys = FlowKeys(src, dst, proto)
    else:
        return None
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and not fragment:
        ports = _ports(frame, l4)
        if ports is not None:
            keys = dataclasses.replace(keys, sport=ports[0], dport=ports[1])
    return keys


def toeplitz_hash(data: bytes, key: bytes = DEFAULT_RSS_KEY) -> int:
    """The 32-bit Toeplitz hash of `data` (RSS, section 5.1.6.4.3).

    For every set bit of the input, most significant first, XOR in the 32
    bits of the key that start at that bit position.
    """
    if 8 * len(key) < 8 * len(data) + 32:
        raise ValueError(f"a {len(key)}-byte key cannot hash {len(data)} bytes")
    key_bits = 8 * len(key)
    key_int = int.from_bytes(key, "big")
    result = 0
    for i in range(8 * len(data)):
        if data[i // 8] >> (7 - i % 8) & 1:
            result ^= key_int >> (key_bits - 32 - i) & U32_MASK
    return result


def flow_hash(frame: bytes, key: bytes = DEFAULT_RSS_KEY) -> int:
    """Toeplitz hash of the frame's flow keys; 0 for frames without IP."""
    keys = flow_dissect(frame)
    return 0 if keys is None else toeplitz_hash(keys.hash_input(), key)


def reciprocal_scale(value: int, n: int) -> int:
    """Map a 32-bit value onto 0..n-1 without a division (Linux's reciprocal_scale)."""
    return (value & U32_MASK) * n >> 32
