"""The RX classifier's front end: `FrameHeadParser` reads the header fields
the filter (`rx_filter.py`) and receive steering (`rss.py`) need from a frame
as it passes on a byte stream, and the shapes the three blocks share.

The parser is a monitor: it sees a stream's ``valid``, ``ready`` and
``payload`` as inputs, counts a beat on ``valid & ready`` and never stalls the
stream. Beats are dense (``keep = 0b1111`` on every beat but a frame's last,
see ``hdl/net/frame.py``), so a field sits at a fixed beat and lane:

    beat   lanes 0..3 (frame bytes 4b .. 4b+3)
    0      dst MAC 0..3
    1      dst MAC 4..5 | src MAC 0..1
    2      src MAC 2..5
    3      EtherType or TPID 0x8100 | (untagged) L3 bytes 0..1, (tagged) TCI
    4      (untagged) L3 bytes 2..5, (tagged) inner EtherType | L3 bytes 0..1
    ...

The 14-byte Ethernet header (virtio's ETH_HLEN) ends at lane 2, and an
802.1Q tag is one whole beat, so the L3 header always starts at lane 2. The
parser realigns it into *L3 words*: word ``k`` is L3 bytes ``4k .. 4k+3``,
the previous beat's lanes 2..3 with this beat's lanes 0..1, complete in beat
``4 + k`` (``5 + k`` with a tag). IPv4's IHL counts these words, so the L4
ports are word ``IHL``; IPv6 puts them at word 10. Bytes of a word keep frame
order, byte 0 in bits 7:0, as in `ByteBeat`.

Headers read (IEEE 802.3 and 802.1Q; RFC 791 IPv4; RFC 8200 IPv6; RFC 793 TCP
and RFC 768 UDP, whose ports are the first four L4 bytes):

- IPv4: version 4 and IHL >= 5 (options are skipped by IHL); a packet with
  MF set or a non-zero fragment offset is a fragment: no ports.
- IPv6: version 6; no extension headers are walked, so only a Next Header of
  TCP or UDP gives ports.
"""
from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.bytes import BYTES_PER_BEAT, ByteBeat

__all__ = [
    "ByteStreamTapSignature", "FrameHead", "FrameHeadParser", "FrameHeadSignature",
    "TableWriteSignature", "TupleWordSignature",
    "ETHERTYPE_IPV4", "ETHERTYPE_IPV6", "ETHERTYPE_VLAN", "IPPROTO_TCP", "IPPROTO_UDP",
    "HEAD_LATENCY", "TUPLE_WORDS_MAX",
]

# --- protocol numbers ----------------------------------------------------------
ETHERTYPE_IPV4 = 0x0800            # IANA EtherType
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100            # IEEE 802.1Q C-tag TPID (the only tag recognised)
IPPROTO_TCP = 6                    # IANA protocol numbers
IPPROTO_UDP = 17
IPV4_VERSION = 4
IPV6_VERSION = 6
IPV4_MIN_IHL = 5                   # 20-byte header, no options (RFC 791)
IHL_MAX = 0xF                      # 60-byte header
IPV4_MF = 0x2000                   # flags/fragment offset field: More Fragments
IPV4_FRAG_OFFSET_MASK = 0x1FFF
VLAN_VID_MASK = 0x0FFF             # TCI: PCP(3) DEI(1) VID(12)

# --- field widths ---------------------------------------------------------------
BYTE_BITS = 8
MAC_BITS = BYTE_BITS * spec.ETH_ALEN
VID_BITS = 12
ETHERTYPE_BITS = 16
IP_ADDR_BITS = 128                 # an IPv6 address; IPv4 uses bits 31:0
IPV4_ADDR_BITS = 32
PORT_BITS = 16
WORD_BITS = BYTE_BITS * BYTES_PER_BEAT
HALF_BITS = WORD_BITS // 2

# --- where fields sit -----------------------------------------------------------
_ETHERTYPE_OFFSET = 12             # after the two MACs
BEAT_DST_LO = 0
BEAT_DST_HI = 1
BEAT_ETHERTYPE = _ETHERTYPE_OFFSET // BYTES_PER_BEAT          # 3: type/TPID, then TCI
BEAT_INNER_TYPE = BEAT_ETHERTYPE + spec.VLAN_HLEN // BYTES_PER_BEAT   # 4, when tagged
BEAT_L3_WORD0 = BEAT_ETHERTYPE + 1                            # 4 (5 when tagged)
assert spec.ETH_HLEN % BYTES_PER_BEAT == BYTES_PER_BEAT // 2, "L3 starts mid-beat"
assert spec.VLAN_HLEN % BYTES_PER_BEAT == 0, "a tag is whole beats"

# Byte offsets in the L3 header (RFC 791 section 3.1, RFC 8200 section 3)
IPV4_FLAGS_FRAG = 6                # flags(3) and fragment offset(13), big-endian
IPV4_PROTOCOL = 9
IPV4_SRC = 12
IPV4_DST = 16
IPV6_NEXT_HEADER = 6
IPV6_SRC = 8
IPV6_DST = 24
IPV6_HEADER_LEN = 40
VERSION_BITS = slice(4, 8)         # of L3 byte 0: version, then (IPv4) IHL
IHL_BITS = slice(0, 4)

# ... as L3 words (byte offset // 4) and lanes (byte offset % 4)
IPV4_WORD_FRAG = IPV4_FLAGS_FRAG // BYTES_PER_BEAT
IPV4_WORD_PROTO, IPV4_LANE_PROTO = divmod(IPV4_PROTOCOL, BYTES_PER_BEAT)
IPV4_WORD_SRC = IPV4_SRC // BYTES_PER_BEAT
IPV4_WORD_DST = IPV4_DST // BYTES_PER_BEAT
IPV6_WORD_NEXT, IPV6_LANE_NEXT = divmod(IPV6_NEXT_HEADER, BYTES_PER_BEAT)
IPV6_WORD_SRC = IPV6_SRC // BYTES_PER_BEAT                    # words 2..5
IPV6_WORD_DST = IPV6_DST // BYTES_PER_BEAT                    # words 6..9
IPV6_ADDR_WORDS = IP_ADDR_BITS // WORD_BITS
IPV6_WORD_L4 = IPV6_HEADER_LEN // BYTES_PER_BEAT              # 10
assert IPV4_FLAGS_FRAG % BYTES_PER_BEAT == BYTES_PER_BEAT // 2   # the word's upper half
BEAT_LIMIT = 31                    # the beat counter saturates here: past every field read
assert BEAT_L3_WORD0 + 1 + IHL_MAX < BEAT_LIMIT   # IPv4 ports with IHL 15, tagged
assert BEAT_L3_WORD0 + 1 + IPV6_WORD_L4 < BEAT_LIMIT

# The Toeplitz input (rss.py) in 32-bit words: src address, dst address, ports
IPV4_TUPLE_PORTS = 2 * IPV4_ADDR_BITS // WORD_BITS            # 2
IPV6_TUPLE_PORTS = 2 * IP_ADDR_BITS // WORD_BITS              # 8
TUPLE_WORDS_MAX = IPV6_TUPLE_PORTS + 1                        # 9 words, 36 bytes

HEAD_LATENCY = 1                   # head.valid, cycles after the last beat's transfer


FrameHead = data.StructLayout({
    "dst_mac": MAC_BITS,           # byte 0 (the I/G bit is its bit 0) in bits 7:0
    "eth": 1,                      # the 14-byte Ethernet header is complete
    "vlan": 1,                     # TPID 0x8100, the TCI and the type after it are complete
    "vid": VID_BITS,               # with vlan
    "ethertype": ETHERTYPE_BITS,   # with eth: the type after the tag, if any
    "is_ipv4": 1,                  # IPv4 header valid up to the destination address
    "is_ipv6": 1,                  # IPv6 fixed header complete
    "src_ip": IP_ADDR_BITS,        # byte 0 in bits 7:0; IPv4 in bits 31:0, 127:32 zero
    "dst_ip": IP_ADDR_BITS,
    "has_l4": 1,                   # is_tcp | is_udp
    "is_tcp": 1,                   # TCP, not a fragment, both ports in the frame
    "is_udp": 1,                   # UDP, same
    "src_port": PORT_BITS,         # numeric (the wire's big-endian value)
    "dst_port": PORT_BITS,
})

FrameHeadSignature = wiring.Signature({
    "valid": Out(1),               # pulse: payload is one frame's head
    "payload": Out(FrameHead),
})

TupleWordSignature = wiring.Signature({
    "valid": Out(1),               # pulse: one 32-bit word of the Toeplitz input
    "index": Out(range(TUPLE_WORDS_MAX)),  # its word position in the input
    "ports": Out(1),               # the word is the ports (used only for TCP/UDP hashes)
    "data": Out(WORD_BITS),        # frame order, byte 0 in bits 7:0
})

ByteStreamTapSignature = wiring.Signature({
    "valid": Out(1),
    "ready": Out(1),
    "payload": Out(ByteBeat),
})


def TableWriteSignature(addr_width, data_width):
    """A table write port of the classifier blocks: ``data`` goes to entry
    ``addr`` on a cycle with ``en`` high."""
    return wiring.Signature({
        "en": Out(1),
        "addr": Out(addr_width),
        "data": Out(data_width),
    })


def _be16(value):
    """The numeric value of two wire bytes held byte 0 in bits 7:0."""
    return Cat(value[BYTE_BITS:2 * BYTE_BITS], value[:BYTE_BITS])


class FrameHeadParser(wiring.Component):
    """Header fields of each frame on a byte stream, read as it passes.

    Ports:
        tap:   In(ByteStreamTapSignature): the watched stream's valid, ready and
               payload (dense `ByteBeat`s). A beat moves on valid & ready.
        head:  Out(FrameHeadSignature): ``head.valid`` pulses one cycle after the
               transfer of a frame's last beat (``HEAD_LATENCY``); ``head.payload``
               (`FrameHead`) holds that frame's fields from then until the next
               frame's first transfer. A field whose flag is 0 holds no value.
        tuple: Out(TupleWordSignature): the words of the RSS Toeplitz input
               (virtio 1.2 section 5.1.6.4.3): source address, destination address
               and the ports word, one pulse each, one cycle after the beat that
               completes them, for frames that start as IPv4 or IPv6. The last comes
               at the latest with ``head.valid``. Whether the frame's hash may use
               them is the head's business (is_ipv4/is_ipv6/is_tcp/is_udp).

    Frames too short for a field leave its flag 0: ``eth`` needs 14 bytes,
    ``vlan`` 18, ``is_ipv4`` the header up to its destination address,
    ``is_ipv6`` the 40-byte header, ``is_tcp``/``is_udp`` the four port bytes.
    A tag cut short by the end of the frame reads as untagged, with ethertype
    0x8100.
    """
    tap: In(ByteStreamTapSignature)
    head: Out(FrameHeadSignature)
    tuple: Out(TupleWordSignature)

    def elaborate(self, platform):
        m = Module()
        beat_in = self.tap.payload
        xfer = self.tap.valid & self.tap.ready
        head = self.head.payload
        tup = self.tuple

        beat = Signal(range(BEAT_LIMIT + 1))     # index of the beat being transferred
        prev_hi = Signal(HALF_BITS)              # the previous beat's lanes 2..3
        tagged = Signal()                        # TPID 0x8100 seen: L3 one beat later
        ipv4 = Signal()                          # L3 word 0 said IPv4 (version, IHL)
        ipv6 = Signal()                          # L3 word 0 said IPv6
        ihl = Signal(range(IHL_MAX + 1))
        fragment = Signal()
        proto = Signal(BYTE_BITS)                # IPv4 protocol or IPv6 next header

        lanes01 = beat_in.keep[1]                # dense: lanes 0 and 1 both present
        word = Cat(prev_hi, beat_in.data[:HALF_BITS])   # L3 word, complete with lanes01
        l3_beat = BEAT_L3_WORD0 + tagged
        in_l3 = beat >= l3_beat
        k = Signal(range(BEAT_LIMIT + 1))        # L3 word index, when in_l3
        m.d.comb += k.eq(beat - l3_beat)
        l3_word = xfer & in_l3 & lanes01

        m.d.sync += [self.head.valid.eq(xfer & beat_in.last), tup.valid.eq(0)]

        def emit(index, ports):
            return [tup.valid.eq(1), tup.index.eq(index), tup.ports.eq(ports), tup.data.eq(word)]

        with m.If(xfer):
            m.d.sync += prev_hi.eq(beat_in.data[HALF_BITS:])
            with m.If(beat_in.last):
                m.d.sync += beat.eq(0)
            with m.Elif(beat != BEAT_LIMIT):
                m.d.sync += beat.eq(beat + 1)

            # --- Ethernet and 802.1Q ---------------------------------------
            with m.If(beat == BEAT_DST_LO):
                m.d.sync += [
                    head.dst_mac[:WORD_BITS].eq(beat_in.data),
                    head.eth.eq(0), head.vlan.eq(0), tagged.eq(0),
                    head.is_ipv4.eq(0), head.is_ipv6.eq(0), ipv4.eq(0), ipv6.eq(0),
                    head.has_l4.eq(0), head.is_tcp.eq(0), head.is_udp.eq(0),
                ]
            with m.If(beat == BEAT_DST_HI):
                m.d.sync += head.dst_mac[WORD_BITS:].eq(beat_in.data[:MAC_BITS - WORD_BITS])
            with m.If((beat == BEAT_ETHERTYPE) & lanes01):
                outer = _be16(beat_in.data[:HALF_BITS])
                m.d.sync += [
                    head.eth.eq(1),
                    head.ethertype.eq(outer),
                    tagged.eq(outer == ETHERTYPE_VLAN),
                    head.vid.eq(_be16(beat_in.data[HALF_BITS:]) & VLAN_VID_MASK),
                ]
            with m.If(tagged & (beat == BEAT_INNER_TYPE) & lanes01):
                m.d.sync += [head.vlan.eq(1), head.ethertype.eq(_be16(beat_in.data[:HALF_BITS]))]

        # --- L3 and L4, one realigned word per beat ----------------------------
        version = word[VERSION_BITS]
        word_ihl = word[IHL_BITS]
        with m.If(l3_word):
            with m.If(k == 0):
                m.d.sync += [
                    ipv4.eq((head.ethertype == ETHERTYPE_IPV4) & (version == IPV4_VERSION)
                            & (word_ihl >= IPV4_MIN_IHL)),
                    ipv6.eq((head.ethertype == ETHERTYPE_IPV6) & (version == IPV6_VERSION)),
                    ihl.eq(word_ihl),
                ]
            with m.If(ipv4):
                with m.If(k == IPV4_WORD_FRAG):
                    flags_offset = _be16(word[HALF_BITS:])
                    m.d.sync += fragment.eq((flags_offset & (IPV4_MF | IPV4_FRAG_OFFSET_MASK)) != 0)
                with m.If(k == IPV4_WORD_PROTO):
                    m.d.sync += proto.eq(word.word_select(IPV4_LANE_PROTO, BYTE_BITS))
                with m.If(k == IPV4_WORD_SRC):
                    m.d.sync += head.src_ip.eq(word)            # bits 127:32 zero
                    m.d.sync += emit(0, 0)
                with m.If(k == IPV4_WORD_DST):
                    m.d.sync += [head.dst_ip.eq(word), head.is_ipv4.eq(1)]
                    m.d.sync += emit(IPV4_TUPLE_PORTS - 1, 0)
                with m.If(head.is_ipv4 & (k == ihl)):
                    m.d.sync += self._ports(head, word, proto, ~fragment)
                    m.d.sync += emit(IPV4_TUPLE_PORTS, 1)
            with m.If(ipv6):
                with m.If(k == IPV6_WORD_NEXT):
                    m.d.sync += proto.eq(word.word_select(IPV6_LANE_NEXT, BYTE_BITS))
                for n in range(IPV6_ADDR_WORDS):
                    with m.If(k == IPV6_WORD_SRC + n):
                        m.d.sync += head.src_ip.word_select(n, WORD_BITS).eq(word)
                        m.d.sync += emit(n, 0)
                    with m.If(k == IPV6_WORD_DST + n):
                        m.d.sync += head.dst_ip.word_select(n, WORD_BITS).eq(word)
                        m.d.sync += emit(IPV6_ADDR_WORDS + n, 0)
                with m.If(k == IPV6_WORD_DST + IPV6_ADDR_WORDS - 1):
                    m.d.sync += head.is_ipv6.eq(1)
                with m.If(head.is_ipv6 & (k == IPV6_WORD_L4)):
                    m.d.sync += self._ports(head, word, proto, 1)
                    m.d.sync += emit(IPV6_TUPLE_PORTS, 1)
        return m

    @staticmethod
    def _ports(head, word, proto, whole):
        tcp = whole & (proto == IPPROTO_TCP)
        udp = whole & (proto == IPPROTO_UDP)
        return [
            head.src_port.eq(_be16(word[:HALF_BITS])),
            head.dst_port.eq(_be16(word[HALF_BITS:])),
            head.is_tcp.eq(tcp), head.is_udp.eq(udp), head.has_l4.eq(tcp | udp),
        ]
