"""The control virtqueue's commands (virtio 1.2 section 5.1.6.5), executed.

The TX `RingEngine` gathers a command's read-only buffers (class, command,
data) into the ``cmd`` byte stream; this block takes it a byte a cycle,
checks it, acts, and answers VIRTIO_NET_OK or VIRTIO_NET_ERR on ``ack``. A
command is checked completely before anything changes, so one answered ERR
changes nothing: the last bytes taken (up to a MAC address) are at hand for
the short commands, and TABLE_SET is parsed as it arrives, its addresses kept
in staging memories (as many as the tables hold) and copied to the tables
once the whole command is found right.

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
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
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
_RX_MODE_BITS = {spec.VirtioNetCtrlRx.PROMISC: "promisc", spec.VirtioNetCtrlRx.ALLMULTI: "allmulti",
                 spec.VirtioNetCtrlRx.ALLUNI: "alluni", spec.VirtioNetCtrlRx.NOMULTI: "nomulti",
                 spec.VirtioNetCtrlRx.NOUNI: "nouni", spec.VirtioNetCtrlRx.NOBCAST: "nobcast"}


# a count above this cannot be right: its addresses would not fit a command
_MAX_ADDRESSES = CTRL_MAX_COMMAND // _MAC_BYTES
# TABLE_SET's first field: the header and the unicast count (its last 4 bytes)
_FIRST_FIELD = _DATA + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE


class _Part(enum.Enum, shape=3):
    """Where a TABLE_SET's parse is."""
    UC_COUNT = 0
    UC_ENTRIES = 1
    MC_COUNT = 2
    MC_ENTRIES = 3
    END = 4          # both tables taken: the command must end here
    OVER = 5         # bytes past the tables


class ControlCommands(wiring.Component):
    """Ports:
        cmd:       In(ByteStreamSignature), dense command bytes (class first), ``last`` ends it.
        cmd_bad:   In(1), sampled with ``last``: the engine found the chain malformed.
        ack:       Out(stream.Signature(8)), the answer, once acted on.
        features:  In(64), the negotiated features (driver_features).
        mode:      Out(RxMode), the CTRL_RX flags (reset: ``RX_MODE_RESET``).
        mac:       Out(48), the filter's own address (reset: ``default_mac``).
        uc_w, mc_w: Out(TableWriteSignature), MAC table entry writes (addr
                   and data count only with en, as on every write port here).
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
        # TABLE_SET addresses wait in these until the command is checked whole
        stages = {}
        for name, depth in (("uc", self.uc_entries), ("mc", self.mc_entries)):
            m.submodules[f"{name}_stage"] = mem = Memory(shape=MAC_BITS, depth=depth, init=[])
            stages[name] = (mem.write_port(), mem.read_port(domain="comb"))

        # the command's bytes are taken one a cycle, in order
        lane = Signal(range(BYTES_PER_BEAT))     # the beat's byte being taken
        keep = self.cmd.payload.keep
        byte = self.cmd.payload.data.word_select(lane, 8)
        take = Signal()                          # `byte` (a kept one) is taken this cycle
        took = Signal()                          # and is parsed in the next one
        m.d.sync += took.eq(take)
        length = Signal(range(CTRL_MAX_COMMAND + 1))    # bytes taken (no more are kept)
        refused = Signal()                       # too long, or the engine flagged it
        cls = Signal(8)
        command = Signal(8)
        # every byte enters at the top and moves down: the last n bytes taken
        # are `field(n)`, little-endian
        value = Signal(MAC_BITS)

        def field(nbytes):
            return value[8 * (_MAC_BYTES - nbytes):]

        answer = Signal(8)
        # accepted values are small: the ports are these zero-extended
        pairs = Signal(range(self.max_pairs + 1), init=1)
        uc_count = Signal(range(_MAX_ADDRESSES + 1))
        mc_count = Signal(range(_MAX_ADDRESSES + 1))
        m.d.comb += [self.pairs.eq(pairs), self.uc_count.eq(uc_count), self.mc_count.eq(mc_count)]
        fill = Signal(range(self.table_size + 1))
        fill_queue = Signal.like(self.steer_w.data)
        # cycles the answer still waits: every state but ANSWER may change a
        # setting (in its last cycle at the latest), so the count starts again
        # in each; valid from FILTER_LATENCY cycles after that last cycle
        settle = Signal(range(FILTER_LATENCY), init=FILTER_LATENCY - 1)

        def needs(feature):
            return (self.features & feature) != 0

        def data_is(nbytes):
            return length == _DATA + nbytes

        with m.If(take):
            m.d.sync += value.eq(Cat(value[8:], byte))
            with m.If(length == CTRL_MAX_COMMAND):
                m.d.sync += refused.eq(1)
            with m.Else():
                m.d.sync += length.eq(length + 1)
        # (from here on, a byte is used once it is in `value`: `field(1)`)
        with m.If(took & (length == 1)):
            m.d.sync += cls.eq(field(1))
        with m.If(took & (length == _DATA)):
            m.d.sync += command.eq(field(1))

        # TABLE_SET (section 5.1.6.5.2) parsed as its bytes are taken: the
        # unicast table's le32 count and addresses, then the multicast one's.
        # Any command is parsed so; only a TABLE_SET uses the outcome.
        part = Signal(_Part)
        left = Signal(range(_FIRST_FIELD + 1), init=_FIRST_FIELD)   # bytes left of the field
        entry = Signal(range(_MAX_ADDRESSES + 1))    # the address being taken, then copied
        n_uc = Signal(range(_MAX_ADDRESSES + 1))
        n_mc = Signal(range(_MAX_ADDRESSES + 1))
        too_many = Signal()                          # a count above `_MAX_ADDRESSES`
        new_count = field(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE)

        def count_ends(n, entries, after):
            """A table's count is in: its addresses come next (or, if none,
            ``after``). ``n`` keeps the count's low bits, enough for any
            count not `too_many`."""
            m.d.sync += [n.eq(new_count), entry.eq(0), left.eq(_MAC_BYTES),
                         part.eq(Mux(new_count == 0, after, entries))]
            with m.If(new_count > _MAX_ADDRESSES):
                m.d.sync += too_many.eq(1)

        def address_ends(name, n, size, after, after_left):
            """An address is in: staged if the table holds it; after the
            table's last one, ``after`` (a field of ``after_left`` bytes)."""
            port, _ = stages[name]
            m.d.comb += port.en.eq(entry < size)
            m.d.sync += [entry.eq(entry + 1), left.eq(_MAC_BYTES)]
            with m.If(entry + 1 == n):
                m.d.sync += [part.eq(after), left.eq(after_left)]

        for name, (port, read) in stages.items():
            m.d.comb += [port.addr.eq(entry), port.data.eq(field(_MAC_BYTES)),
                         read.addr.eq(entry)]

        with m.If(took):
            m.d.sync += left.eq(left - 1)
            with m.If(part == _Part.END):
                m.d.sync += part.eq(_Part.OVER)      # a byte past the tables
            with m.If(left == 1):                    # this byte ends a field
                with m.Switch(part):
                    with m.Case(_Part.UC_COUNT):
                        count_ends(n_uc, _Part.UC_ENTRIES, _Part.MC_COUNT)
                        with m.If(new_count == 0):
                            m.d.sync += left.eq(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE)
                    with m.Case(_Part.UC_ENTRIES):
                        address_ends("uc", n_uc, self.uc_entries, _Part.MC_COUNT,
                                     spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE)
                    with m.Case(_Part.MC_COUNT):
                        count_ends(n_mc, _Part.MC_ENTRIES, _Part.END)
                    with m.Case(_Part.MC_ENTRIES):
                        address_ends("mc", n_mc, self.mc_entries, _Part.END, 0)

        # the write ports' addr and data count only with en: they are driven
        # all the time, and only en depends on the state
        vid = field(spec.VIRTIO_NET_CTRL_VLAN_DATA_SIZE)[:16]
        m.d.comb += [self.uc_w.addr.eq(entry), self.uc_w.data.eq(stages["uc"][1].data),
                     self.mc_w.addr.eq(entry), self.mc_w.data.eq(stages["mc"][1].data),
                     self.vlan_w.addr.eq(vid),
                     self.vlan_w.data.eq(command == spec.VirtioNetCtrlVlan.ADD),
                     self.steer_w.addr.eq(fill), self.steer_w.data.eq(fill_queue)]

        with m.FSM(name="ctrl") as fsm:
            with m.State("FILL"):
                # the steering table: entry i -> i mod pairs
                m.d.comb += self.steer_w.en.eq(1)
                m.d.sync += [fill.eq(fill + 1),
                             fill_queue.eq(Mux(fill_queue + 1 == pairs, 0, fill_queue + 1))]
                with m.If(fill == self.table_size - 1):
                    m.next = "RECEIVE"

            with m.State("RECEIVE"):
                m.d.comb += [self.steer_ready.eq(1), take.eq(self.cmd.valid & keep.bit_select(lane, 1))]
                with m.If(self.cmd.valid):
                    with m.If(lane == BYTES_PER_BEAT - 1):
                        m.d.comb += self.cmd.ready.eq(1)
                        m.d.sync += lane.eq(0)
                        with m.If(self.cmd.payload.last):
                            with m.If(self.cmd_bad):
                                m.d.sync += refused.eq(1)
                            m.next = "LAST_BYTE"
                    with m.Else():
                        m.d.sync += lane.eq(lane + 1)
            with m.State("LAST_BYTE"):             # parsed in this cycle
                m.d.comb += self.steer_ready.eq(1)
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.steer_ready.eq(1)
                m.d.sync += answer.eq(spec.VIRTIO_NET_ERR)
                allowed = Signal()
                for (c, cmd), feature in spec.VIRTIO_NET_CTRL_FEATURE.items():
                    with m.If((cls == c) & (command == cmd) & needs(feature)):
                        m.d.comb += allowed.eq(1)
                m.next = "ANSWER"
                with m.If(refused | (length < _DATA) | ~allowed):
                    pass
                with m.Elif(cls == C.RX):
                    with m.If(data_is(spec.VIRTIO_NET_CTRL_RX_DATA_SIZE)):
                        on = field(spec.VIRTIO_NET_CTRL_RX_DATA_SIZE) != 0
                        with m.Switch(command):
                            for cmd, name in _RX_MODE_BITS.items():
                                with m.Case(cmd):
                                    m.d.sync += getattr(self.mode, name).eq(on)
                        m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                with m.Elif((cls == C.MAC) & (command == spec.VirtioNetCtrlMac.ADDR_SET)):
                    # an address of a station: not a group (I/G bit), not zero
                    new = field(_MAC_BYTES)
                    with m.If(data_is(_MAC_BYTES) & ~new[_IG_BIT] & (new != 0)):
                        m.d.sync += [self.mac.eq(new), answer.eq(spec.VIRTIO_NET_OK)]
                with m.Elif(cls == C.MAC):                    # TABLE_SET
                    with m.If((part == _Part.END) & ~too_many):
                        m.d.sync += entry.eq(0)
                        m.next = "UC_COPY"
                with m.Elif(cls == C.VLAN):
                    with m.If(data_is(spec.VIRTIO_NET_CTRL_VLAN_DATA_SIZE)):
                        m.next = "VLAN"
                with m.Elif(cls == C.MQ):                     # VQ_PAIRS_SET
                    new = field(spec.VIRTIO_NET_CTRL_MQ_DATA_SIZE)[:16]
                    with m.If(data_is(spec.VIRTIO_NET_CTRL_MQ_DATA_SIZE)
                              & (new >= spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN)
                              & (new <= self.max_pairs)):
                        m.d.sync += [pairs.eq(new), answer.eq(spec.VIRTIO_NET_OK),
                                     fill.eq(0), fill_queue.eq(0)]
                with m.Elif(data_is(0)):                      # ANNOUNCE.ACK
                    m.d.comb += self.announce_ack.eq(1)
                    m.d.sync += answer.eq(spec.VIRTIO_NET_OK)

            # the checked TABLE_SET: its addresses copied to the tables (those
            # beyond a table's size are not kept: its count above the size
            # makes it accept its whole class)
            def copy(state, port, n, size, counted, then):
                with m.State(state):
                    with m.If(entry == n):
                        m.d.sync += [counted.eq(n), entry.eq(0)]
                        then()
                    with m.Else():
                        m.d.comb += port.en.eq(entry < size)
                        m.d.sync += entry.eq(entry + 1)

            def to_multicast():
                m.next = "MC_COPY"

            def tables_done():
                m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                m.next = "ANSWER"

            copy("UC_COPY", self.uc_w, n_uc, self.uc_entries, uc_count, to_multicast)
            copy("MC_COPY", self.mc_w, n_mc, self.mc_entries, mc_count, tables_done)
            with m.State("VLAN"):
                with m.If(~self.vlan_busy):
                    with m.If(vid < (1 << VID_BITS)):
                        m.d.comb += self.vlan_w.en.eq(1)
                        m.d.sync += answer.eq(spec.VIRTIO_NET_OK)
                    m.next = "ANSWER"

            with m.State("ANSWER"):
                with m.If(settle != 0):
                    m.d.sync += settle.eq(settle - 1)
                m.d.comb += [self.ack.valid.eq(settle == 0), self.ack.payload.eq(answer)]
                with m.If(self.ack.valid & self.ack.ready):
                    m.d.sync += [length.eq(0), refused.eq(0), part.eq(_Part.UC_COUNT),
                                 left.eq(_FIRST_FIELD), too_many.eq(0)]
                    with m.If(fill == 0):
                        m.next = "FILL"              # pairs changed: steer anew first
                    with m.Else():
                        m.next = "RECEIVE"
        with m.If(~fsm.ongoing("ANSWER")):
            m.d.sync += settle.eq(FILTER_LATENCY - 1)
        return m
