"""`virtio-net-fpga bench`: the parameter sets, the limits the figures are
compared with, and the result table.

The measurement itself runs inside the simulator (sim/cocotb_tests/bench.py);
this module has no cocotb import, so the CLI and the tests can use it.

Frame sizes
-----------
``frame_bytes`` is the Ethernet frame size with its FCS, as RFC 2544 and the
1 GbE line-rate figures count it (64 to 1518). The core's wire ports carry
frames without FCS (the MAC adds and strips it), so the driver and the wire
models move ``frame_bytes - 4`` bytes per frame: `dma_frame_bytes`.
``gbps`` counts ``frame_bytes * 8`` bits per frame (no preamble, no IFG):
``gbps = mpps * frame_bytes * 8 / 1000``.

1 GbE line rate
---------------
A frame occupies ``frame_bytes + 20`` bytes of wire time at 1 Gb/s (7 bytes
preamble, 1 byte SFD, 12 bytes inter-frame gap): 1.488 Mpps at 64 bytes,
81.27 kpps at 1518 bytes (`line_rate_pps`).

The link model (what cocotbext-pcie 0.2.16 simulates)
-----------------------------------------------------
``SimPort`` serialises every packet on each direction of the link one after
the other, for ``get_wire_size() * 8 / (rate * width)`` seconds, where rate
is 2 Gb/s of data for Gen1 (2.5 GT/s, 8b/10b) and 4 Gb/s for Gen2; a TLP's
wire size is its header and payload + 8 bytes (STP, sequence number, LCRC,
END: 20 bytes of overhead for a three-DW header, 24 for four DWs), a DLLP's
8 bytes. ACK DLLPs (one per ACK latency timer period, computed from the link
speed and MPS) and UpdateFC DLLPs travel on the same serialiser and take
their share. Each direction adds 10 ns of propagation (5 ns per port). Link
speed and width are set on both ports (the root port's downstream port and
the device's upstream port) before the link is connected; the model then
trains to the smaller of the two. The model has no replay, no skip ordered
sets and no L0s: a real link carries a little less.

The TLP-level limit (``link_limit_pct``)
----------------------------------------
For one direction of traffic, the limit is the frame rate at which the link
would carry nothing but the frames' own bytes, in TLPs of the largest size
the host allows, with their 20-byte overhead (three-DW headers: the host
memory of the testbench is below 4 GiB), no descriptor, ring or interrupt
traffic and no DLLPs. It is a true upper bound for any virtio-net device on
that link:

- TX (host to wire): the frame comes to the device as completions, which the
  host splits at its Read Completion Boundary (64 bytes, `HOST_RCB`): at
  least ``ceil(n / 64)`` CplDs for ``n = dma_frame_bytes`` bytes, on the
  host-to-device direction.
- RX (wire to host): the device writes the 12-byte virtio_net_hdr and the
  frame with posted writes of at most MPS bytes (128, what the root complex
  model grants): ``ceil((12 + n) / 128)`` MWr TLPs on the device-to-host
  direction.

With TX and RX at once, each flow's data has its own link direction; the
"both" figure is the mean of the two directions' utilisations. Likewise
``line_rate_pct`` for "both" is the sum of the two directions' rates over
twice the line rate (full duplex); ``tx_*`` and ``rx_*`` give each direction.
At 1518 bytes, TX data is 76% efficient on the link (64-byte completions)
and RX data 86% (128-byte writes), the figures of the design brief.

Queue pairs (``queue_pairs``)
----------------------------
A point runs with 1 to max_virtqueue_pairs pairs in use (VQ_PAIRS_SET before
the point). Each active pair carries its own UDP flow, told apart by its
source port (`flow_ports`): pair n's flow is the one the device steers to
receive queue n (Toeplitz hash with the default key, round-robin
indirection table, as hdl/net/rss.py programs it for plain multiqueue), so
the same flow leaves on transmitq n and arrives on receiveq n. Rates are
aggregates over the pairs; ``tx_queue_packets`` / ``rx_queue_packets`` give
each queue's share of the window.

Host model
----------
The root complex model answers a memory read at once. The bench adds a
stated host read latency (`DEFAULT_READ_LATENCY_NS`, ``--read-latency-ns``):
each memory read request that reaches the root complex is answered that
much later, without holding up the TLPs behind it. The root complex splits
completions at every 64-byte RCB boundary, like x86 hosts
(``split_on_all_rcb``).
"""
import dataclasses
import ipaddress
import math

from driver.flow import toeplitz_hash
from hdl.net.rss import INDIRECTION_TABLE_MAX, MICROSOFT_RSS_KEY, mq_indirection_table

__all__ = [
    "LINK_MODEL", "LINKS", "FRAME_SIZES", "DIRECTIONS", "DEFAULT_PACKETS", "QUICK_PACKETS",
    "DEFAULT_READ_LATENCY_NS", "Link", "dma_frame_bytes", "line_rate_pps",
    "tx_link_bytes", "rx_link_bytes", "link_limit_pps", "finish_result",
    "format_table", "format_latency", "FLOW_SRC_IP", "FLOW_DST_IP", "FLOW_DPORT", "FIRST_SPORT",
    "rx_queue_of", "flow_ports",
]

FCS_BYTES = 4
ETH_WIRE_OVERHEAD = 20            # preamble 7 + SFD 1 + inter-frame gap 12
GBE_BITS_PER_S = 1e9
TLP_FRAMING = 8                   # STP 1 + sequence 2 + LCRC 4 + END 1
TLP_3DW_OVERHEAD = 12 + TLP_FRAMING   # 20 bytes
TLP_4DW_OVERHEAD = 16 + TLP_FRAMING   # 24 bytes
VIRTIO_NET_HDR = 12
HOST_RCB = 64                     # completions split at 64-byte boundaries
HOST_MPS = 128                    # the root complex model's Max_Payload_Size
DEFAULT_READ_LATENCY_NS = 500     # host memory read: request in, first completion out

LINK_MODEL = ("cocotbext-pcie 0.2.16 SimPort, both ends set to the link's speed and width: "
              "every TLP (header + payload + 8 bytes framing) and DLLP (8 bytes) is serialised "
              "per direction at 2 Gb/s (Gen1) or 4 Gb/s (Gen2) per lane after 8b/10b, plus 10 ns "
              "propagation; ACK and UpdateFC DLLPs modelled; no replay, SKP or power states")

# The bench's frames: UDP from FLOW_SRC_IP to FLOW_DST_IP, destination port
# FLOW_DPORT; each flow has its own source port (FIRST_SPORT for one pair, so
# one-pair frames are what they always were).
FLOW_SRC_IP = "10.0.0.2"
FLOW_DST_IP = "10.0.0.1"
FLOW_DPORT = 9
FIRST_SPORT = 9

FRAME_SIZES = (64, 256, 512, 1518)
DIRECTIONS = ("tx", "rx", "both")
DEFAULT_PACKETS = 200             # frames counted per point, after the warm-up
QUICK_PACKETS = 48


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    speed: int                    # PCIe generation (cocotbext-pcie's link speed)
    width: int
    gt_per_s: float

    @property
    def bytes_per_s(self):
        """Data bytes per second per direction, after 8b/10b."""
        return self.gt_per_s * 1e9 * self.width * 8 / 10 / 8


LINKS = {
    "gen1x1": Link("gen1x1", 1, 1, 2.5),
    "gen2x1": Link("gen2x1", 2, 1, 5.0),
}


def dma_frame_bytes(frame_bytes):
    """Bytes the driver and the wire ports move for an Ethernet frame of
    ``frame_bytes`` (its FCS is the MAC's)."""
    return frame_bytes - FCS_BYTES


def line_rate_pps(frame_bytes):
    """1 GbE line rate in frames per second."""
    return GBE_BITS_PER_S / ((frame_bytes + ETH_WIRE_OVERHEAD) * 8)


def _dw_bytes(n):
    return 4 * math.ceil(n / 4)


def tx_link_bytes(frame_bytes, rcb=HOST_RCB):
    """Least link bytes (host to device) that bring one TX frame to the device."""
    n = dma_frame_bytes(frame_bytes)
    return _dw_bytes(n) + TLP_3DW_OVERHEAD * math.ceil(n / rcb)


def rx_link_bytes(frame_bytes, mps=HOST_MPS):
    """Least link bytes (device to host) that deliver one RX frame and its header."""
    n = VIRTIO_NET_HDR + dma_frame_bytes(frame_bytes)
    return _dw_bytes(n) + TLP_3DW_OVERHEAD * math.ceil(n / mps)


def link_limit_pps(link, direction, frame_bytes):
    """Frames per second the link carries at most in ``direction`` ("tx" or "rx")."""
    per_frame = tx_link_bytes(frame_bytes) if direction == "tx" else rx_link_bytes(frame_bytes)
    return link.bytes_per_s / per_frame


def rx_queue_of(sport, pairs, src=FLOW_SRC_IP, dst=FLOW_DST_IP, dport=FLOW_DPORT):
    """The receive queue the device steers a UDP/IPv4 flow to with ``pairs``
    pairs in use: the Toeplitz hash of addresses and ports with the default
    key, through the round-robin indirection table (hdl/net/rss.py)."""
    data = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
    value = toeplitz_hash(data, MICROSOFT_RSS_KEY)
    return mq_indirection_table(pairs)[value & (INDIRECTION_TABLE_MAX - 1)]


def flow_ports(pairs, first=FIRST_SPORT):
    """One UDP source port per pair: entry n is the lowest port from ``first``
    up whose flow the device steers to receive queue n."""
    ports = [None] * pairs
    sport = first
    while None in ports:
        if sport > 0xFFFF:
            raise ValueError(f"no source ports cover {pairs} queues")
        queue = rx_queue_of(sport, pairs)
        if ports[queue] is None:
            ports[queue] = sport
        sport += 1
    return ports


def finish_result(raw):
    """Turn one point's measurement (sim/cocotb_tests/bench.py: packets and
    seconds per direction, TLP counts) into the published row."""
    link = LINKS[raw["link"]]
    size = raw["frame_bytes"]
    row = {"link": link.name, "direction": raw["direction"], "frame_bytes": size,
           "queue_pairs": raw["queue_pairs"]}
    pps = {d: raw[d]["packets"] / raw[d]["seconds"] for d in ("tx", "rx") if d in raw}
    total_pps = sum(pps.values())
    line = line_rate_pps(size)
    utilisation = [pps[d] / link_limit_pps(link, d, size) for d in pps]
    mpps = round(total_pps / 1e6, 6)
    row.update({
        "gbps": round(mpps * size * 8 / 1e3, 6),
        "mpps": mpps,
        "link_limit_pct": round(100 * sum(utilisation) / len(utilisation), 2),
        "line_rate_pct": round(100 * total_pps / (line * len(pps)), 2),
        "dma_tlps_per_packet": round(raw["dma_tlps"] / raw["window_packets"], 3),
    })
    for d in pps:
        row[f"{d}_mpps"] = round(pps[d] / 1e6, 6)
        if raw["direction"] == "both":
            row[f"{d}_gbps"] = round(pps[d] * size * 8 / 1e9, 6)
            row[f"{d}_link_limit_pct"] = round(100 * pps[d] / link_limit_pps(link, d, size), 2)
            row[f"{d}_line_rate_pct"] = round(100 * pps[d] / line, 2)
    per_packet = {k: round(v / raw["window_packets"], 3) for k, v in raw["tlps"].items()}
    row["tlps_per_packet"] = per_packet
    row["link_bytes_per_packet"] = {k: round(v / raw["window_packets"], 1)
                                    for k, v in raw["link_bytes"].items()}
    row["link_busy_pct"] = raw["link_busy_pct"]
    row["packets"] = raw["window_packets"]
    if "rx" in raw:
        row["rx_offered"] = raw["rx"]["offered"]
        row["rx_device_drops"] = raw["rx"]["device_drops"]
    for d in ("tx", "rx"):
        if d in raw and "per_queue" in raw[d]:
            row[f"{d}_queue_packets"] = raw[d]["per_queue"]
    row["frame_errors"] = raw["frame_errors"]
    return row


def _fmt_pct(x):
    return f"{x:6.1f}%"


def format_table(results):
    """The rows as a plain-text table."""
    head = (f"{'link':7} {'dir':4} {'pairs':>5} {'frame':>5} {'Gb/s':>7} {'Mpps':>7} {'link lim':>8} "
            f"{'1GbE':>7} {'DMA TLP/pkt':>11} {'RX drops':>10} {'both: TX/RX % 1GbE':>19}")
    lines = [head, "-" * len(head)]
    for r in results:
        drops = f"{r['rx_device_drops']}/{r['rx_offered']}" if "rx_offered" in r else "-"
        split = (f"{r['tx_line_rate_pct']:.1f}/{r['rx_line_rate_pct']:.1f}"
                 if r["direction"] == "both" else "")
        lines.append(
            f"{r['link']:7} {r['direction']:4} {r.get('queue_pairs', 1):5d} {r['frame_bytes']:5d} "
            f"{r['gbps']:7.3f} "
            f"{r['mpps']:7.4f} {_fmt_pct(r['link_limit_pct']):>8} {_fmt_pct(r['line_rate_pct']):>7} "
            f"{r['dma_tlps_per_packet']:11.2f} {drops:>10} {split:>19}".rstrip())
    return "\n".join(lines)


def format_latency(latency):
    """The latency measurements as a plain-text table."""
    lines = [f"{'link':7} {'what':21} {'frame':>5} {'ns':>8}"]
    for item in latency:
        lines.append(f"{item['link']:7} {item['what']:21} {item['frame_bytes']:5d} {item['ns']:8.0f}")
    return "\n".join(lines)
