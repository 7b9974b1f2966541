"""The control virtqueue's commands (virtio 1.2 section 5.1.6.5), executed.

`RingEngine(CTRL)` gathers a command's read-only buffers (class, command,
data) into the ``cmd`` byte stream; this block stores it whole, checks it,
acts, and answers VIRTIO_NET_OK or VIRTIO_NET_ERR on ``ack``. A command is
checked completely before anything changes, so one answered ERR changes
nothing.

| class.command            | data                          | needs          | action |
|--------------------------|-------------------------------|----------------|--------|
| RX.PROMISC / ALLMULTI    | u8 on                         | CTRL_RX        | ``mode`` bit |
| RX.ALLUNI/NOMULTI/NOUNI/NOBCAST | u8 on                  | CTRL_RX_EXTRA  | ``mode`` bit |
| MAC.TABLE_SET            | le32 n, n MACs, le32 m, m MACs | CTRL_RX       | unicast and multicast tables |
| MAC.ADDR_SET             | 6-byte MAC, not group, not 0  | CTRL_MAC_ADDR  | ``mac`` |
| VLAN.ADD / DEL           | le16 vid (below 4096)         | CTRL_VLAN      | VLAN table bit |
| MQ.VQ_PAIRS_SET          | le16 pairs (1..max)           | MQ             | ``pairs``, the steering table refilled |
| ANNOUNCE.ACK             | none                          | GUEST_ANNOUNCE | ``announce_ack`` pulse |

Anything else (unknown class or command, a feature not negotiated, data of
the wrong size, more than ``CTRL_MAX_COMMAND`` bytes, or a chain the engine
flagged ``cmd_bad``) is answered ERR. The "u8 on" byte counts as on when it
is not zero. MAC table entries are not checked for their kind: a multicast
address in the unicast table simply never matches. More addresses than a
table holds make it accept its whole class (see `RxFilter`); a TABLE_SET
longer than ``CTRL_MAX_COMMAND`` bytes (over 41 addresses) is answered ERR, and
Linux then keeps the old table. `driver/testing_ctrl.py` is the behavioural
model these rules are tested against.

Plain multiqueue (VIRTIO_NET_F_MQ without RSS) steers by a flow hash through
`RxQueueSelect`'s indirection table: after a reset and after every
VQ_PAIRS_SET this block writes it round robin over the active pairs
(entry i -> i mod pairs), ``steer_ready`` low while it does.

The answer waits ``FILTER_LATENCY`` cycles after the last change to the
filter's settings (``mode``, ``mac``, the tables and their counts, the VLAN
table): `RxFilter` may still be deciding a frame on the old settings that
long, and every frame decided after the driver sees the answer must see the
new ones (section 5.1.6.5).
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.bytes import BYTES_PER_BEAT, ByteStreamSignature
from ..virtio.virtqueues import CTRL_MAX_COMMAND
from .rss import INDIRECTION_TABLE_MAX
from .rx_filter import FILTER_LATENCY, MAC_COUNT_BITS, MAC_TABLE_ENTRIES, RX_MODE_RESET, RxMode
from .rx_parse import MAC_BITS, VID_BITS, TableWriteSignature

__all__ = ["ControlCommands"]

C = spec.VirtioNetCtrlClass
_MAC_BYTES = MAC_BITS // 8
_IG_BIT = 0                # individual/group: bit 0 of the first byte (IEEE 802)
_DATA = spec.VIRTIO_NET_CTRL_HDR_SIZE        # data starts after class and command
_LEN_BITS = (CTRL_MAX_COMMAND).bit_length() + 1
_RX_MODE_BITS = {spec.VirtioNetCtrlRx.PROMISC: "promisc", spec.VirtioNetCtrlRx.ALLMULTI: "allmulti",
                 spec.VirtioNetCtrlRx.ALLUNI: "alluni", spec.VirtioNetCtrlRx.NOMULTI: "nomulti",
                 spec.VirtioNetCtrlRx.NOUNI: "nouni", spec.VirtioNetCtrlRx.NOBCAST: "nobcast"}


_MAX_ADDRESSES = CTRL_MAX_COMMAND // _MAC_BYTES      # more cannot fit a command
_COUNT_SMALL = _MAX_ADDRESSES.bit_length()


def _times_mac_bytes(n):
    """n * 6 as two shifts and an add (n is small)."""
    return (n << 2) + (n << 1)


class ControlCommands(wiring.Component):
    """Ports:
        cmd:       In(ByteStreamSignature), dense command bytes (class first), ``last`` ends it.
        cmd_bad:   In(1), sampled with ``last``: the engine found the chain malformed.
        ack:       Out(stream.Signature(8)), the answer, once acted on.
        features:  In(64), the negotiated features (driver_features).
        mode:      Out(RxMode), the CTRL_RX flags (reset: ``RX_MODE_RESET``).
        mac:       Out(48), the filter's own address (reset: ``default_mac``).
        uc_w, mc_w: Out(TableWriteSignature), MAC table entry writes.
        uc_count, mc_count: Out(32), the last TABLE_SET's entry counts (reset: 0).
        vlan_w:    Out(TableWriteSignature(12, 1)), VLAN ADD (1) / DEL (0).
        vlan_busy: In(1), the VLAN table is being emptied (after a reset): a
                   VLAN command waits for it.
        pairs:     Out(16), the active queue pairs (reset: 1).
        steer_w:   Out(TableWriteSignature), the indirection table, refilled round robin.
        steer_ready: Out(1), the table matches ``pairs``.
        announce_ack: Out(1), pulse: the driver acknowledged an announcement.
    """

    def __init__(self, *, max_pairs, default_mac, uc_entries=MAC_TABLE_ENTRIES,
                 mc_entries=MAC_TABLE_ENTRIES, table_size=INDIRECTION_TABLE_MAX):
        self.max_pairs = max_pairs
        self.default_mac = int.from_bytes(default_mac, "little")
        self.uc_entries, self.mc_entries = uc_entries, mc_entries
        self.table_size = table_size
        queue_bits = max(1, (max_pairs - 1).bit_length())
        super().__init__({
            "cmd": In(ByteStreamSignature),
            "cmd_bad": In(1),
            "ack": Out(stream.Signature(8)),
            "features": In(64),
            "mode": Out(RxMode, init=RX_MODE_RESET),
            "mac": Out(MAC_BITS, init=self.default_mac),
            "uc_w": Out(TableWriteSignature(range(uc_entries), MAC_BITS)),
            "mc_w": Out(TableWriteSignature(range(mc_entries), MAC_BITS)),
            "uc_count": Out(MAC_COUNT_BITS),
            "mc_count": Out(MAC_COUNT_BITS),
            "vlan_w": Out(TableWriteSignature(VID_BITS, 1)),
            "vlan_busy": In(1),
            "pairs": Out(16, init=1),
            "steer_w": Out(TableWriteSignature((table_size - 1).bit_length(), queue_bits)),
            "steer_ready": Out(1),
            "announce_ack": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        words = CTRL_MAX_COMMAND // BYTES_PER_BEAT
        m.submodules.ram = ram = Memory(shape=8 * BYTES_PER_BEAT, depth=words, init=[])
        ram_w = ram.write_port()
        ram_r = ram.read_port(domain="comb")

        length = Signal(_LEN_BITS)           # bytes of the command
        too_long = Signal()
        bad = Signal()
        pos = Signal(_LEN_BITS)              # the byte being read
        m.d.comb += ram_r.addr.eq(pos >> 2)
        byte = Signal(8)
        m.d.comb += byte.eq(ram_r.data.word_select(pos[:2], 8))
        cls = Signal(8)
        command = Signal(8)
        value = Signal(MAC_BITS)             # little-endian field being gathered
        count = Signal(_LEN_BITS)            # bytes left of that field
        entry = Signal(_LEN_BITS)            # table entry being written
        n_uc = Signal(MAC_COUNT_BITS)
        n_mc = Signal(MAC_COUNT_BITS)
        mc_at = Signal(_LEN_BITS)            # offset of the multicast count
        answer = Signal(8)
        fill = Signal(range(self.table_size + 1))
        fill_queue = Signal(16)
        data_len = Signal(_LEN_BITS)
        m.d.comb += data_len.eq(length - _DATA)
        # cycles the answer still waits: every state but ANSWER may change a
        # setting (in its last cycle at the latest), so the count starts again
        # in each; valid from FILTER_LATENCY cycles after that last cycle
        settle = Signal(range(FILTER_LATENCY), init=FILTER_LATENCY - 1)

        def needs(feature):
            return (self.features & feature) != 0

        def read_field(nbytes, at, then):
            """Gather ``nbytes`` little-endian bytes from offset ``at`` into
            ``value``, then go to state ``then``."""
            return [pos.eq(at), count.eq(nbytes), value.eq(0)], then

        # A little-endian field of up to 6 bytes, gathered a byte a cycle while
        # a state sets `gathering`: each byte enters at the top and moves down,
        # so byte k of an n-byte field ends at bit 8 * (6 - n + k) and
        # `field(n)` reads it back.
        gathering = Signal()
        with m.If(gathering & (count != 0)):
            m.d.sync += [value.eq((value >> 8) | (byte << (8 * (_MAC_BYTES - 1)))),
                         count.eq(count - 1), pos.eq(pos + 1)]

        def field(nbytes):
            return value >> (8 * (_MAC_BYTES - nbytes))

        with m.FSM(name="ctrl") as fsm:
            with m.State("FILL"):
                # the steering table: entry i -> i mod pairs
                m.d.comb += [self.steer_w.en.eq(1), self.steer_w.addr.eq(fill),
                             self.steer_w.data.eq(fill_queue)]
                m.d.sync += [fill.eq(fill + 1),
                             fill_queue.eq(Mux(fill_queue + 1 >= self.pairs, 0, fill_queue + 1))]
                with m.If(fill == self.table_size - 1):
                    m.next = "RECEIVE"

            with m.State("RECEIVE"):
                m.d.comb += [self.steer_ready.eq(1), self.cmd.ready.eq(1),
                             ram_w.addr.eq(length >> 2), ram_w.data.eq(self.cmd.payload.data)]
                beat_bytes = sum(self.cmd.payload.keep[n] for n in range(BYTES_PER_BEAT))
                with m.If(self.cmd.valid):
                    with m.If(length + beat_bytes > CTRL_MAX_COMMAND):
                        m.d.sync += too_long.eq(1)
                    with m.Else():
                        m.d.comb += ram_w.en.eq(1)
                        m.d.sync += length.eq(length + beat_bytes)
                    with m.If(self.cmd.payload.last):
                        m.d.sync += [bad.eq(self.cmd_bad), pos.eq(0)]
                        m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += self.steer_ready.eq(1)
                with m.If(pos == 0):
                    m.d.sync += [cls.eq(byte), pos.eq(1)]
                with m.Else():
                    m.d.sync += [command.eq(byte), pos.eq(_DATA)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.steer_ready.eq(1)
                m.d.sync += answer.eq(spec.VIRTIO_NET_ERR)
                allowed = Signal()
                for (c, cmd), feature in spec.VIRTIO_NET_CTRL_FEATURE.items():
                    with m.If((cls == c) & (command == cmd) & needs(feature)):
                        m.d.comb += allowed.eq(1)
                with m.If(bad | too_long | (length < _DATA) | ~allowed):
                    m.next = "ANSWER"
                with m.Elif(cls == C.RX):
                    with m.If(data_len == spec.VIRTIO_NET_CTRL_RX_DATA_SIZE):
                        m.next = "RX_MODE"
                    with m.Else():
                        m.next = "ANSWER"
                with m.Elif((cls == C.MAC) & (command == spec.VirtioNetCtrlMac.ADDR_SET)):
                    with m.If(data_len == _MAC_BYTES):
                        sets, m.next = read_field(_MAC_BYTES, _DATA, "MAC_ADDR")
                        m.d.sync += sets
                    with m.Else():
                        m.next = "ANSWER"
                with m.Elif(cls == C.MAC):                    # TABLE_SET
                    sets, m.next = read_field(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE, _DATA, "UC_COUNT")
                    m.d.sync += sets
                with m.Elif(cls == C.VLAN):
                    with m.If(data_len == spec.VIRTIO_NET_CTRL_VLAN_DATA_SIZE):
                        sets, m.next = read_field(2, _DATA, "VLAN")
                        m.d.sync += sets
                    with m.Else():
                        m.next = "ANSWER"
                with m.Elif(cls == C.MQ):                     # VQ_PAIRS_SET
                    with m.If(data_len == spec.VIRTIO_NET_CTRL_MQ_DATA_SIZE):
                        sets, m.next = read_field(2, _DATA, "MQ_PAIRS")
                        m.d.sync += sets
                    with m.Else():
                        m.next = "ANSWER"
                with m.Else():                                # ANNOUNCE.ACK
                    with m.If(data_len == 0):
                        m.d.comb += self.announce_ack.eq(1)
                        m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                    m.next = "ANSWER"

            with m.State("RX_MODE"):
                on = byte != 0
                with m.Switch(command):
                    for cmd, name in _RX_MODE_BITS.items():
                        with m.Case(cmd):
                            m.d.sync += getattr(self.mode, name).eq(on)
                m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                m.next = "ANSWER"
            with m.State("MAC_ADDR"):
                m.d.comb += gathering.eq(1)
                with m.If(count == 0):
                    # an address of a station: not a group (I/G bit), not zero
                    new = field(_MAC_BYTES)
                    with m.If(~new[_IG_BIT] & (new != 0)):
                        m.d.sync += [self.mac.eq(new), answer.eq(spec.VIRTIO_NET_OK)]
                    m.next = "ANSWER"
            # TABLE_SET: both counts are checked against the length before any
            # entry is written (section 5.1.6.5.2)
            # (a count is checked in the cycle after it is gathered, and the
            # byte offsets are built from a count already known to be small:
            # short paths, no multiplier)
            with m.State("UC_COUNT"):
                m.d.comb += gathering.eq(1)
                with m.If(count == 0):
                    m.d.sync += n_uc.eq(field(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE))
                    m.next = "UC_CHECK"
            with m.State("UC_CHECK"):
                at = _DATA + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE + _times_mac_bytes(n_uc[:_COUNT_SMALL])
                with m.If((n_uc > _MAX_ADDRESSES)
                          | (at + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE > length)):
                    m.next = "ANSWER"
                with m.Else():
                    m.d.sync += [mc_at.eq(at), pos.eq(at),
                                 count.eq(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE), value.eq(0)]
                    m.next = "MC_COUNT"
            with m.State("MC_COUNT"):
                m.d.comb += gathering.eq(1)
                with m.If(count == 0):
                    m.d.sync += n_mc.eq(field(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE))
                    m.next = "MC_CHECK"
            with m.State("MC_CHECK"):
                end = mc_at + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE + _times_mac_bytes(n_mc[:_COUNT_SMALL])
                with m.If((n_mc > _MAX_ADDRESSES) | (end != length)):
                    m.next = "ANSWER"
                with m.Else():
                    m.d.sync += [entry.eq(0), value.eq(0), count.eq(_MAC_BYTES),
                                 pos.eq(_DATA + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE)]
                    m.next = "UC_ENTRIES"
            def write_entries(state, n, port, size, done):
                """A state writing the table's n addresses, one per 6 bytes
                gathered (those beyond the table's size are not kept: its
                count above the size makes it accept its whole class)."""
                with m.State(state):
                    m.d.comb += gathering.eq(entry != n)
                    with m.If(entry == n):
                        done()
                    with m.Elif(count == 0):
                        m.d.comb += [port.en.eq(entry < size), port.addr.eq(entry),
                                     port.data.eq(field(_MAC_BYTES))]
                        m.d.sync += [entry.eq(entry + 1), value.eq(0), count.eq(_MAC_BYTES)]

            def to_multicast():
                m.d.sync += [entry.eq(0), value.eq(0), count.eq(_MAC_BYTES),
                             pos.eq(mc_at + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE)]
                m.next = "MC_ENTRIES"

            def tables_done():
                m.d.sync += [self.uc_count.eq(n_uc), self.mc_count.eq(n_mc),
                             answer.eq(spec.VIRTIO_NET_OK)]
                m.next = "ANSWER"

            write_entries("UC_ENTRIES", n_uc, self.uc_w, self.uc_entries, to_multicast)
            write_entries("MC_ENTRIES", n_mc, self.mc_w, self.mc_entries, tables_done)
            with m.State("VLAN"):
                m.d.comb += gathering.eq(1)
                with m.If((count == 0) & ~self.vlan_busy):
                    vid = field(2)[:16]
                    with m.If(vid < (1 << VID_BITS)):
                        m.d.comb += [self.vlan_w.en.eq(1), self.vlan_w.addr.eq(vid),
                                     self.vlan_w.data.eq(command == spec.VirtioNetCtrlVlan.ADD)]
                        m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                    m.next = "ANSWER"
            with m.State("MQ_PAIRS"):
                m.d.comb += gathering.eq(1)
                with m.If(count == 0):
                    pairs = field(2)[:16]
                    with m.If((pairs >= spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN)
                              & (pairs <= self.max_pairs)):
                        m.d.sync += [self.pairs.eq(pairs), answer.eq(spec.VIRTIO_NET_OK),
                                     fill.eq(0), fill_queue.eq(0)]
                    m.next = "ANSWER"

            with m.State("ANSWER"):
                with m.If(settle != 0):
                    m.d.sync += settle.eq(settle - 1)
                m.d.comb += [self.ack.valid.eq(settle == 0), self.ack.payload.eq(answer)]
                with m.If(self.ack.valid & self.ack.ready):
                    m.d.sync += [length.eq(0), too_long.eq(0)]
                    with m.If(fill == 0):
                        m.next = "FILL"              # pairs changed: steer anew first
                    with m.Else():
                        m.next = "RECEIVE"
        with m.If(~fsm.ongoing("ANSWER")):
            m.d.sync += settle.eq(FILTER_LATENCY - 1)
        return m
