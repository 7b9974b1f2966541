"""Receive steering: the Toeplitz hash of a frame's flow (`ToeplitzHash`) and
the receive queue it selects (`RxQueueSelect`).

virtio 1.2 defines the hash (section 5.1.6.4.3, Hash calculation for incoming
packets) as the Toeplitz hash of Microsoft's Receive Side Scaling, which the
RSS feature names (5.1.3, VIRTIO_NET_F_RSS "with Toeplitz hash calculation";
5.1.6.5.7, Receive-side scaling). Its input is, in this order and in network
byte order: source address, destination address and, for a TCP or UDP hash
type, source port and destination port; 12 bytes at most for IPv4, 36 for
IPv6. With a key K of 40 bytes (320 bits, bit 0 the MSB of K[0]) the hash is
the XOR, over every input bit i (bit 0 the MSB of the first byte) that is 1,
of the 32 key bits K[i .. i+31] read as a number, K[i] its MSB.

Which fields go in (5.1.6.4.3.2 and .3): IPv4 TCP with TCPv4 enabled: both
addresses and ports; else UDP with UDPv4: the same; else, with IPv4 enabled,
the addresses alone; else no hash. The same for IPv6 with TCPv6, UDPv6 and
IPv6. A fragment has no ports (`FrameHeadParser`); IPv6 extension headers are
not walked, so the _EX types are not supported (``SUPPORTED_HASH_TYPES``).

`ToeplitzHash` hashes as the frame goes by: `FrameHeadParser` hands it the
input 32 bits at a time (``tuple``), in the same order as the bytes arrive, and
it folds each word into the hash, so the result follows the frame's end by a
fixed ``HASH_LATENCY`` whatever the frame. One word a cycle is more than
needed: the 36-byte IPv6 input spans 9 of a frame's 4-byte beats.

`RxQueueSelect` maps the hash to a receive queue through the indirection table
(``queue = table[hash & mask]``), or to ``default_queue`` when there is no
hash (5.1.6.5.7.3, RSS processing: ``unclassified_queue``). Queues are
receive queue numbers n (receiveq n+1, virtqueue 2n), what ``rss_rq_id``
holds (``vq_index_1_16``).

Plain multiqueue (VIRTIO_NET_F_MQ without RSS, 5.1.6.5.6: "automatic receive
steering") uses the same blocks: the device must keep a flow on one queue,
and it chooses how. The control side programs the default key
(``MICROSOFT_RSS_KEY``), all of ``SUPPORTED_HASH_TYPES``, ``default_queue``
0, a mask of ``table_size - 1`` and the table ``mq_indirection_table(pairs)``:
round robin over the active pairs, rewritten on every VQ_PAIRS_SET. The spec's
"SHOULD" to follow the transmit queue of a flow is not met: steering is by
hash only. After reset (multiqueue off, "the device MUST queue packets only on
receiveq1") the control side keeps ``hash_types`` 0 and ``default_queue`` 0:
every frame goes to receiveq1.
"""
import functools

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from .rx_parse import (FrameHeadSignature, TableWriteSignature, TupleWordSignature,
                       TUPLE_WORDS_MAX, WORD_BITS)

__all__ = ["HashSignature", "RxQueueSelect", "ToeplitzHash", "HASH_LATENCY",
           "MICROSOFT_RSS_KEY", "QUEUE_SELECT_LATENCY", "RSS_KEY_BYTES",
           "SUPPORTED_HASH_TYPES", "mq_indirection_table"]

HashType = spec.VirtioNetHashType
HashReport = spec.VirtioNetHashReport

RSS_KEY_BYTES = spec.VIRTIO_NET_RSS_MIN_KEY_SIZE       # 40
KEY_BITS = 8 * RSS_KEY_BYTES
HASH_BITS = 32
HASH_TYPES_BITS = 32                                   # hash_types is le32
INDIRECTION_TABLE_MAX = spec.VIRTIO_NET_RSS_MIN_INDIRECTION_TABLE   # 128
assert TUPLE_WORDS_MAX * WORD_BITS + HASH_BITS <= KEY_BITS, "the key covers the input"

MICROSOFT_RSS_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
"""The key of Microsoft's RSS verification suite ("Verifying the RSS Hash
Calculation", Windows driver documentation; also Intel 82599 datasheet
section 7.1.2.8.3): the reset value of ``ToeplitzHash``'s key."""

SUPPORTED_HASH_TYPES = (HashType.IPv4 | HashType.TCPv4 | HashType.UDPv4
                        | HashType.IPv6 | HashType.TCPv6 | HashType.UDPv6)
"""What the device can hash: its supported_hash_types (no _EX types)."""

HASH_LATENCY = 3                   # hash.valid, cycles after head.valid
QUEUE_SELECT_LATENCY = 1           # queue_valid, cycles after hash.valid

HashSignature = wiring.Signature({
    "valid": Out(1),               # pulse: one frame's result
    "value": Out(HASH_BITS),       # the hash, 0 when report is NONE
    "report": Out(HashReport),     # which hash (hash_report of virtio_net_hdr)
})

_PORTS_REPORTS = (HashReport.TCPv4, HashReport.UDPv4, HashReport.TCPv6, HashReport.UDPv6)


def mq_indirection_table(pairs, size=INDIRECTION_TABLE_MAX):
    """The table for plain multiqueue: round robin over ``pairs`` receive queues."""
    return [n % pairs for n in range(size)]


def _hash_report(head, hash_types):
    """Comb: which hash a head gets (5.1.6.4.3.2, .3)."""
    def pick(tcp_type, udp_type, ip_type, tcp, udp, ip):
        enabled = [(hash_types & t) != 0 for t in (tcp_type, udp_type, ip_type)]
        return Mux(enabled[0] & head.is_tcp, tcp,
                   Mux(enabled[1] & head.is_udp, udp,
                       Mux(enabled[2], ip, HashReport.NONE)))
    v4 = pick(HashType.TCPv4, HashType.UDPv4, HashType.IPv4,
              HashReport.TCPv4, HashReport.UDPv4, HashReport.IPv4)
    v6 = pick(HashType.TCPv6, HashType.UDPv6, HashType.IPv6,
              HashReport.TCPv6, HashReport.UDPv6, HashReport.IPv6)
    return Mux(head.is_ipv4, v4, Mux(head.is_ipv6, v6, HashReport.NONE))


class ToeplitzHash(wiring.Component):
    """The RSS Toeplitz hash of each frame, computed while the frame passes.

    Ports:
        tuple:  In(TupleWordSignature), from `FrameHeadParser.tuple`: the input words.
        head:   In(FrameHeadSignature), from `FrameHeadParser.head`: is_ipv4, is_ipv6,
                is_tcp and is_udp pick the hash type.
        hash_types: In(32), the enabled hash types (`spec.VirtioNetHashType`;
                bits outside ``SUPPORTED_HASH_TYPES`` are ignored).
        key_w:  In(TableWriteSignature(range(40), 8)), writes key byte ``addr``
                (hash_key_data[addr]). A key shorter than 40 bytes is padded with
                zero bytes by the writer. Resets to ``MICROSOFT_RSS_KEY``.
        hash:   Out(HashSignature): ``hash.valid`` pulses ``HASH_LATENCY`` cycles
                after ``head.valid``, with the hash and its report type (NONE and
                value 0 when the frame gets no hash).

    The key and hash types should change between frames: a frame in flight
    meanwhile may be hashed with a mix. Frames may follow each other back to
    back at any length: the input words of a frame come at least 7 cycles after
    the previous frame's head, which is done with them 2 cycles after its head.
    """
    tuple: In(TupleWordSignature)
    head: In(FrameHeadSignature)
    hash_types: In(HASH_TYPES_BITS)
    key_w: In(TableWriteSignature(range(RSS_KEY_BYTES), 8))
    hash: Out(HashSignature)

    def elaborate(self, platform):
        m = Module()

        # Key: bit position p (0 = MSB of byte 0) is bit KEY_BITS-1-p of `key`.
        key = Signal(KEY_BITS, init=int.from_bytes(MICROSOFT_RSS_KEY, "big"))
        with m.If(self.key_w.en):
            with m.Switch(self.key_w.addr):
                for byte in range(RSS_KEY_BYTES):
                    with m.Case(byte):
                        m.d.sync += key.word_select(RSS_KEY_BYTES - 1 - byte, 8).eq(
                            self.key_w.data)

        # Stage 1: the input word and the 63 key bits it meets (positions
        # 32*index .. 32*index + 62), as a 64-bit window, MSB first.
        window_bits = 2 * WORD_BITS
        s1_valid = Signal()
        s1_data = Signal(WORD_BITS)
        s1_window = Signal(window_bits)
        s1_ports = Signal()
        s1_first = Signal()
        m.d.sync += s1_valid.eq(self.tuple.valid)
        with m.If(self.tuple.valid):
            m.d.sync += [
                s1_data.eq(self.tuple.data),
                s1_ports.eq(self.tuple.ports),
                s1_first.eq(~self.tuple.ports & (self.tuple.index == 0)),
            ]
            with m.Switch(self.tuple.index):
                for index in range(TUPLE_WORDS_MAX):
                    low = KEY_BITS - window_bits - WORD_BITS * index
                    with m.Case(index):
                        m.d.sync += s1_window.eq(key[low:low + window_bits])

        # Stage 2: fold the word in. Input bit j (MSB first: byte j//8, bit
        # 7 - j%8) adds the 32 key bits from position 32*index + j.
        terms = []
        for j in range(WORD_BITS):
            bit = s1_data[8 * (j // 8) + 7 - j % 8]
            key_bits = s1_window[WORD_BITS - j:window_bits - j]
            terms.append(key_bits & bit.replicate(HASH_BITS))
        contribution = functools.reduce(lambda a, b: a ^ b, terms)
        acc_addr = Signal(HASH_BITS)   # the addresses' part of the hash
        acc_ports = Signal(HASH_BITS)  # the ports word's part
        with m.If(s1_valid):
            with m.If(s1_ports):
                m.d.sync += acc_ports.eq(contribution)
            with m.Elif(s1_first):
                m.d.sync += acc_addr.eq(contribution)
            with m.Else():
                m.d.sync += acc_addr.eq(acc_addr ^ contribution)

        # The head's hash type, delayed until the last word is folded in.
        report = [Signal(HashReport, name=f"report{n}") for n in range(HASH_LATENCY - 1)]
        valid = Signal(HASH_LATENCY - 1)
        m.d.sync += [
            valid.eq(Cat(self.head.valid, valid[:-1])),
            report[0].eq(_hash_report(self.head.payload, self.hash_types)),
        ]
        for n in range(1, HASH_LATENCY - 1):
            m.d.sync += report[n].eq(report[n - 1])
        final = report[-1]
        with_ports = Signal()
        m.d.comb += with_ports.eq(Cat(*(final == r for r in _PORTS_REPORTS)).any())
        m.d.sync += [
            self.hash.valid.eq(valid[-1]),
            self.hash.report.eq(final),
            self.hash.value.eq(Mux(final == HashReport.NONE, 0,
                                   acc_addr ^ Mux(with_ports, acc_ports, 0))),
        ]
        return m


class RxQueueSelect(wiring.Component):
    """The receive queue of each frame, from its hash (RSS processing, virtio 1.2
    section 5.1.6.5.7.3; plain multiqueue with a round-robin table, see the
    module docstring).

    Ports:
        hash:  In(HashSignature), from `ToeplitzHash.hash`.
        mask:  In(log2(table_size)), indirection_table_mask (entries = mask + 1, a
               power of two; the driver keeps it below the table size).
        default_queue: In(queue bits), unclassified_queue: frames without a hash.
        table_w: In(TableWriteSignature(range(table_size), queue bits)):
               indirection_table[addr] = data, a receive queue number.
        queue_valid: Out(1), pulse ``QUEUE_SELECT_LATENCY`` cycle after ``hash.valid``.
        queue: Out(queue bits), with queue_valid: the receive queue number
               (receiveq queue+1, virtqueue 2*queue).

    ``max_pairs`` sets the queue width; ``table_size`` (a power of two, at most
    128 = rss_max_indirection_table_length here) the table's entries, block RAM
    reset to 0 only at power-up: the control side rewrites it after a device
    reset.
    """

    def __init__(self, *, max_pairs, table_size=INDIRECTION_TABLE_MAX):
        if table_size & (table_size - 1) or not 1 < table_size <= INDIRECTION_TABLE_MAX:
            raise ValueError(f"table_size {table_size}: a power of two, 2..{INDIRECTION_TABLE_MAX}")
        if max_pairs < 1:
            raise ValueError("at least one queue pair")
        self.max_pairs = max_pairs
        self.table_size = table_size
        self.queue_shape = unsigned(max(1, (max_pairs - 1).bit_length()))
        index_bits = (table_size - 1).bit_length()
        super().__init__({
            "hash": In(HashSignature),
            "mask": In(index_bits),
            "default_queue": In(self.queue_shape),
            "table_w": In(TableWriteSignature(index_bits, self.queue_shape)),
            "queue_valid": Out(1),
            "queue": Out(self.queue_shape),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.table = table = Memory(shape=self.queue_shape, depth=self.table_size,
                                            init=[])
        wr = table.write_port()
        rd = table.read_port()
        m.d.comb += [
            wr.addr.eq(self.table_w.addr),
            wr.data.eq(self.table_w.data),
            wr.en.eq(self.table_w.en),
            rd.addr.eq(self.hash.value & self.mask),
        ]
        hashed = Signal()
        m.d.sync += [
            self.queue_valid.eq(self.hash.valid),
            hashed.eq(self.hash.report != HashReport.NONE),
        ]
        m.d.comb += self.queue.eq(Mux(hashed, rd.data, self.default_queue))
        return m
