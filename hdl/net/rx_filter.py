"""RxFilter: accept or drop a received frame by its destination MAC and VLAN,
as the control queue configured it (virtio 1.2 sections 5.1.6.5.1 to
5.1.6.5.3).

The decision, in order (first match wins):

1. ``mode.promisc``: accept. PROMISC "SHOULD take effect even if one of the
   other modes ... is on" and asks for "all incoming packets" (5.1.6.5.1), so
   it also passes frames the VLAN table would drop (as QEMU does).
2. VLAN filtering negotiated (``vlan_filter_enable``, VIRTIO_NET_F_CTRL_VLAN),
   the frame tagged and its VID not in the table: drop, ``VLAN_REJECTED``.
   Untagged frames pass: "the VLAN filter table applies only to VLAN tagged
   packets" (5.1.6.5.3). Without the feature every tagged frame passes.
3. A frame shorter than the Ethernet header: accept; the RX frame buffer drops
   it as TOO_SHORT and counts it there.
4. Broadcast (ff:ff:ff:ff:ff:ff): accept unless ``nobcast``
   (``BROADCAST_REJECTED``). NOMULTI does not apply to broadcast; NOBCAST wins
   over ALLMULTI (5.1.6.5.1).
5. Multicast (I/G bit set): ``nomulti`` drops (it wins over ALLMULTI);
   ``allmulti``, a multicast table overflow or a match in the multicast table
   accept; anything else drops (``MULTICAST_REJECTED``).
6. Unicast: ``nouni`` drops (it wins over ALLUNI); ``alluni``, a unicast table
   overflow, the device's own ``mac`` (set by CTRL_MAC_ADDR_SET, 5.1.6.5.2) or a
   match in the unicast table accept; anything else drops (``NOT_FOR_US``).

MAC tables (VIRTIO_NET_CTRL_MAC_TABLE_SET, 5.1.6.5.2): a unicast and a
multicast table of ``uc_entries`` / ``mc_entries`` addresses, written one
entry at a time; ``uc_count`` / ``mc_count`` are the command's two ``entries``
fields. Entries at and above the count are unused. The device "can filter
incoming packets by any number of destination MAC addresses", and the spec's
footnote allows one that cannot to "silently switch to allmulti or
promiscuous mode if it is given too many addresses": a count above the table
size makes that table accept its whole class, as ALLUNI or ALLMULTI would
(QEMU's uni_overflow / multi_overflow). The tables must be empty after reset:
the control side holds both counts at 0 then.

Reset values of ``mode`` (the control side's registers): the spec names
none. ``RX_MODE_RESET`` is promiscuous, the others off, as QEMU resets it
("for compatibility"): a driver that does not negotiate VIRTIO_NET_F_CTRL_RX
cannot configure the filter, and one that filters would cut it off from
multicast it needs (IPv6 neighbour discovery). Linux's driver, with CTRL_RX,
sends PROMISC and ALLMULTI off (unless the interface asks) and its address
lists with MAC_TABLE_SET when the interface opens (virtnet_set_rx_mode), so it
gets filtering from then on.

MAC tables in LUT RAM, compared a few entries a cycle. A destination is
unicast or multicast (its I/G bit), so only one of the tables can match it:
the two tables share memories and comparators, and a frame is compared with
the table of its class only. There are ``banks = ceil(max(uc_entries,
mc_entries) / COMPARE_CYCLES)`` memories (banks), each with a unicast half
and a multicast half of ``COMPARE_CYCLES`` rows (rounded up to a power of 2);
entry ``e`` of a table is row ``e // banks`` of that table's half of bank
``e % banks``. The destination is compared with one row of every bank a
cycle, over ``COMPARE_CYCLES`` cycles. With the 16-entry tables: 4 banks of 8
rows (12 ``TRELLIS_DPR16X4`` each on ECP5) and 4 comparators in all.

Timing: ``decision_valid`` pulses ``FILTER_LATENCY`` cycles after
``head.valid``, one decision per head. A head with ``eth`` must come at least
``COMPARE_CYCLES`` cycles after the previous head with ``eth``, as the
parser's heads do: such a frame has at least an Ethernet header, so at least
``COMPARE_CYCLES`` dense beats. Heads without ``eth`` (runts) need no
comparison and may come in any cycle.
"""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.bytes import BYTES_PER_BEAT
from .rx_parse import MAC_BITS, VID_BITS, FrameHeadSignature, TableWriteSignature

__all__ = ["FilterReason", "RxFilter", "RxMode", "RX_MODE_RESET", "FILTER_LATENCY", "COMPARE_CYCLES",
           "MAC_TABLE_ENTRIES", "VLAN_IDS"]

MAC_TABLE_ENTRIES = 16             # default size of each MAC table
VLAN_IDS = 1 << VID_BITS           # 4096 VIDs, one bit each
MAC_COUNT_BITS = 32                # virtio_net_ctrl_mac.entries is le32
BROADCAST_MAC = (1 << MAC_BITS) - 1
IG_BIT = 0                         # individual/group: bit 0 of the first byte
# cycles a MAC table comparison takes: the fewest dense beats of a frame with
# an Ethernet header (4), so that two such frames' heads never overlap in it
COMPARE_CYCLES = -(-spec.ETH_HLEN // BYTES_PER_BEAT)
# decision_valid, cycles after head.valid: the head registered, the
# comparison, the decision registered
FILTER_LATENCY = 1 + COMPARE_CYCLES + 1


class FilterReason(enum.Enum, shape=3):
    """Why a frame was dropped; ``ACCEPTED`` with ``accept``."""
    ACCEPTED = 0
    NOT_FOR_US = 1                 # unicast matching neither mac nor the table, or NOUNI
    MULTICAST_REJECTED = 2         # multicast not in the table, or NOMULTI
    BROADCAST_REJECTED = 3         # NOBCAST
    VLAN_REJECTED = 4              # tagged, VID not in the VLAN table


RxMode = data.StructLayout({
    # VIRTIO_NET_CTRL_RX commands (virtio 1.2 section 5.1.6.5.1), one bit each;
    # the command's byte is 0 (off) or 1 (on)
    "promisc": 1,                  # VIRTIO_NET_CTRL_RX_PROMISC   0
    "allmulti": 1,                 # VIRTIO_NET_CTRL_RX_ALLMULTI  1
    "alluni": 1,                   # VIRTIO_NET_CTRL_RX_ALLUNI    2 (CTRL_RX_EXTRA)
    "nomulti": 1,                  # VIRTIO_NET_CTRL_RX_NOMULTI   3 (CTRL_RX_EXTRA)
    "nouni": 1,                    # VIRTIO_NET_CTRL_RX_NOUNI     4 (CTRL_RX_EXTRA)
    "nobcast": 1,                  # VIRTIO_NET_CTRL_RX_NOBCAST   5 (CTRL_RX_EXTRA)
})

RX_MODE_RESET = {"promisc": 1, "allmulti": 0, "alluni": 0, "nomulti": 0, "nouni": 0,
                 "nobcast": 0}
"""What the control side should reset ``mode`` to (see the module docstring)."""


class RxFilter(wiring.Component):
    """Ports:
        head:     In(FrameHeadSignature), from `FrameHeadParser.head`: dst_mac, eth,
                  vlan and vid are used.
        mode:     In(RxMode), the CTRL_RX flags.
        mac:      In(48), the device's own address (config ``mac`` or
                  CTRL_MAC_ADDR_SET), byte 0 in bits 7:0.
        uc_w:     In(TableWriteSignature), unicast table entry write (addr, 48-bit MAC).
        mc_w:     In(TableWriteSignature), multicast table entry write. The two
                  share the memories' write ports: at most one of them may write
                  in a cycle (if both do, only the multicast entry is written);
                  `ControlCommands` writes the unicast entries, then the
                  multicast ones. Writes to an ``addr`` at or above the table's
                  size are ignored.
        uc_count: In(32), unicast entries in use; above ``uc_entries``: all unicast.
        mc_count: In(32), multicast entries in use; above ``mc_entries``: all multicast.
        vlan_filter_enable: In(1), VIRTIO_NET_F_CTRL_VLAN negotiated.
        vlan_w:   In(TableWriteSignature(12, 1)), VLAN_ADD (data 1) / VLAN_DEL (data 0)
                  of VID ``addr``. Ignored while ``vlan_clearing``.
        vlan_clear:    In(1), pulse: empty the VLAN table (device reset, or when
                       CTRL_VLAN is negotiated: "the device starts with an empty
                       VLAN filter table").
        vlan_clearing: Out(1), the table is being emptied, one VID a cycle (4096
                       cycles).
        decision_valid: Out(1), pulse, ``FILTER_LATENCY`` cycles after ``head.valid``.
        accept:   Out(1), with decision_valid.
        reason:   Out(FilterReason), with decision_valid; ACCEPTED when accept.

    The inputs a head's decision reads, ``h`` being the cycle of its
    ``head.valid`` (a write or a change made in a cycle is seen from the next):

    - cycle ``h``: ``head``'s payload, ``mac``, the VLAN table and, for a head
      with ``eth``, the count of the destination's table (``uc_count`` or
      ``mc_count``);
    - cycles ``h + 1`` to ``h + COMPARE_CYCLES`` (heads with ``eth``): that
      MAC table, a row of every bank a cycle;
    - cycle ``h + COMPARE_CYCLES + 1``, the last before ``decision_valid``:
      ``mode`` and ``vlan_filter_enable``.

    Nothing is read before cycle ``h`` nor after ``h + FILTER_LATENCY - 1``. So
    a change made in cycle ``c`` is seen by every frame whose head comes after
    ``c``, which is every frame whose ``decision_valid`` comes more than
    ``FILTER_LATENCY`` cycles after ``c``; a decision in the ``FILTER_LATENCY``
    cycles after ``c`` may see the old settings or a mix. The control side
    changes the settings between frames, and should wait ``FILTER_LATENCY``
    cycles after its last change before it reports the command done (its
    ``ack``, virtio 1.2 section 5.1.6.5): every decision after the report
    then sees the new settings.
    """

    def __init__(self, *, uc_entries=MAC_TABLE_ENTRIES, mc_entries=MAC_TABLE_ENTRIES):
        if uc_entries < 1 or mc_entries < 1:
            raise ValueError("each MAC table needs at least one entry")
        self.uc_entries = uc_entries
        self.mc_entries = mc_entries
        super().__init__({
            "head": In(FrameHeadSignature),
            "mode": In(RxMode),
            "mac": In(MAC_BITS),
            "uc_w": In(TableWriteSignature(range(uc_entries), MAC_BITS)),
            "mc_w": In(TableWriteSignature(range(mc_entries), MAC_BITS)),
            "uc_count": In(MAC_COUNT_BITS),
            "mc_count": In(MAC_COUNT_BITS),
            "vlan_filter_enable": In(1),
            "vlan_w": In(TableWriteSignature(VID_BITS, 1)),
            "vlan_clear": In(1),
            "vlan_clearing": Out(1),
            "decision_valid": Out(1),
            "accept": Out(1),
            "reason": Out(FilterReason),
        })

    def elaborate(self, platform):
        m = Module()
        head = self.head.payload
        dst = head.dst_mac

        # --- MAC tables (5.1.6.5.2): both in the same LUT RAM banks ----------
        banks = -(-max(self.uc_entries, self.mc_entries) // COMPARE_CYCLES)
        row_bits = (COMPARE_CYCLES - 1).bit_length()     # a row within a table's half
        # counts up to a table's size fit here
        count_bits = max(self.uc_entries, self.mc_entries).bit_length()

        # writes: an entry of either table, the multicast one if both write; a
        # table's half of a bank is picked by the I/G bit of the addresses it
        # is for (0: unicast, 1: multicast)
        w_group = self.mc_w.en
        w_entry = Mux(w_group, self.mc_w.addr, self.uc_w.addr)
        w_data = Mux(w_group, self.mc_w.data, self.uc_w.data)
        w_en = Mux(w_group, self.mc_w.addr < self.mc_entries,
                   self.uc_w.en & (self.uc_w.addr < self.uc_entries))
        w_row = Signal(row_bits)
        m.d.comb += w_row.eq(w_entry // banks)

        def usage(count, entries):
            """(the count's low bits, exact when it is small; the count is
            above the table's size: its whole class is accepted)."""
            low = count[:count_bits]
            return low, count[count_bits:].any() | (low > entries)

        uc_used, uc_every = usage(self.uc_count, self.uc_entries)
        mc_used, mc_every = usage(self.mc_count, self.mc_entries)

        # the comparison: a row of every bank a cycle, in the table of the
        # destination's class; `left` counts down the entries in use (at and
        # above the count they are unused, 5.1.6.5.2) from the row compared
        compare = Signal(range(COMPARE_CYCLES + 1), init=COMPARE_CYCLES)  # the row; COMPARE_CYCLES: idle
        compare_dst = Signal(MAC_BITS)
        left = Signal(count_bits)
        every = Signal()
        with m.If(self.head.valid & head.eth):
            group = dst[IG_BIT]
            m.d.sync += [compare.eq(0), compare_dst.eq(dst),
                         left.eq(Mux(group, mc_used, uc_used)),
                         every.eq(Mux(group, mc_every, uc_every))]
        with m.Elif(compare != COMPARE_CYCLES):
            m.d.sync += [compare.eq(compare + 1), left.eq(Mux(left > banks, left - banks, 0))]

        row_hits = []
        for bank in range(banks):
            ram = Memory(shape=MAC_BITS, depth=2 << row_bits, init=[])
            m.submodules[f"mac_bank{bank}"] = ram
            write = ram.write_port()
            read = ram.read_port(domain="comb")
            m.d.comb += [write.addr.eq(Cat(w_row, w_group)), write.data.eq(w_data),
                         write.en.eq(w_en & (w_entry % banks == bank)),
                         read.addr.eq(Cat(compare[:row_bits], compare_dst[IG_BIT]))]
            # (an entry at or above the table's size is only ever in use
            # while `every` accepts anyway)
            row_hits.append((read.data == compare_dst) & (left > bank))
        # the table accepts the destination: a match, or an overflowing count
        match = Signal()
        with m.If(compare == 0):
            m.d.sync += match.eq(Cat(row_hits).any() | every)
        with m.Elif(compare != COMPARE_CYCLES):
            m.d.sync += match.eq(match | Cat(row_hits).any())

        # --- VLAN table: one bit per VID in block RAM ------------------------
        m.submodules.vlan_table = vlan_table = Memory(shape=1, depth=VLAN_IDS, init=[])
        vlan_wr = vlan_table.write_port()
        vlan_rd = vlan_table.read_port()
        clear_ptr = Signal(VID_BITS)
        with m.If(self.vlan_clearing):
            m.d.comb += [vlan_wr.addr.eq(clear_ptr), vlan_wr.data.eq(0), vlan_wr.en.eq(1)]
            m.d.sync += clear_ptr.eq(clear_ptr + 1)
            with m.If(clear_ptr == VLAN_IDS - 1):
                m.d.sync += self.vlan_clearing.eq(0)
        with m.Else():
            m.d.comb += [vlan_wr.addr.eq(self.vlan_w.addr), vlan_wr.data.eq(self.vlan_w.data),
                         vlan_wr.en.eq(self.vlan_w.en)]
        with m.If(self.vlan_clear):
            m.d.sync += [self.vlan_clearing.eq(1), clear_ptr.eq(0)]

        # --- stage 1 (the head's cycle): the head's own tests, the VID -------
        s_valid = Signal()
        s_eth = Signal()
        s_tagged = Signal()
        s_bcast = Signal()
        s_group = Signal()
        s_own = Signal()
        m.d.comb += vlan_rd.addr.eq(head.vid)
        m.d.sync += s_valid.eq(self.head.valid)
        with m.If(self.head.valid):
            m.d.sync += [
                s_eth.eq(head.eth),
                s_tagged.eq(head.vlan),
                s_bcast.eq(dst == BROADCAST_MAC),
                s_group.eq(dst[IG_BIT]),
                s_own.eq(dst == self.mac),
            ]
        s_vlan_ok = Signal()
        m.d.comb += s_vlan_ok.eq(vlan_rd.data[0])

        # --- while the tables are compared: the head's results wait ----------
        def delayed(value, name):
            for stage in range(COMPARE_CYCLES):
                later = Signal.like(value, name=f"{name}_d{stage}")
                m.d.sync += later.eq(value)
                value = later
            return value

        d_valid = delayed(s_valid, "valid")
        d_eth = delayed(s_eth, "eth")
        d_tagged = delayed(s_tagged, "tagged")
        d_bcast = delayed(s_bcast, "bcast")
        d_group = delayed(s_group, "group")
        d_own = delayed(s_own, "own")
        d_vlan_ok = delayed(s_vlan_ok, "vlan_ok")

        # --- the decision ------------------------------------------------------
        mode = self.mode
        reason = Signal(FilterReason)
        with m.If(mode.promisc):
            m.d.comb += reason.eq(FilterReason.ACCEPTED)
        with m.Elif(self.vlan_filter_enable & d_tagged & ~d_vlan_ok):
            m.d.comb += reason.eq(FilterReason.VLAN_REJECTED)
        with m.Elif(~d_eth):
            m.d.comb += reason.eq(FilterReason.ACCEPTED)
        with m.Elif(d_bcast):
            m.d.comb += reason.eq(FilterReason.ACCEPTED)
            with m.If(mode.nobcast):
                m.d.comb += reason.eq(FilterReason.BROADCAST_REJECTED)
        with m.Elif(d_group):
            m.d.comb += reason.eq(FilterReason.MULTICAST_REJECTED)
            with m.If(~mode.nomulti & (mode.allmulti | match)):
                m.d.comb += reason.eq(FilterReason.ACCEPTED)
        with m.Else():
            m.d.comb += reason.eq(FilterReason.NOT_FOR_US)
            with m.If(~mode.nouni & (mode.alluni | d_own | match)):
                m.d.comb += reason.eq(FilterReason.ACCEPTED)

        m.d.sync += self.decision_valid.eq(d_valid)
        with m.If(d_valid):
            m.d.sync += [self.reason.eq(reason), self.accept.eq(reason == FilterReason.ACCEPTED)]
        return m

