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

MAC tables in LUT RAM, compared a few entries a cycle: each table is split
into banks, entry ``e`` in bank ``e % banks`` at row ``e // banks``, with
``banks = ceil(entries / COMPARE_CYCLES)``; the destination is compared with
one row of every bank a cycle, over ``COMPARE_CYCLES`` cycles (16 entries: 4
comparators a table instead of 16, and no flip-flops for the entries).

Latency: ``decision_valid`` pulses ``FILTER_LATENCY`` cycles after
``head.valid``, one decision per head. A head with ``eth`` (a frame of at
least an Ethernet header, so at least ``COMPARE_CYCLES`` beats long) must come
at least ``COMPARE_CYCLES`` cycles after the previous such head; heads
without ``eth`` (runts) need no comparison and may come at any cycle.
"""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .rx_parse import MAC_BITS, VID_BITS, FrameHeadSignature, TableWriteSignature

__all__ = ["FilterReason", "RxFilter", "RxMode", "RX_MODE_RESET", "FILTER_LATENCY", "COMPARE_CYCLES",
           "MAC_TABLE_ENTRIES", "VLAN_IDS"]

MAC_TABLE_ENTRIES = 16             # default size of each MAC table
VLAN_IDS = 1 << VID_BITS           # 4096 VIDs, one bit each
MAC_COUNT_BITS = 32                # virtio_net_ctrl_mac.entries is le32
BROADCAST_MAC = (1 << MAC_BITS) - 1
IG_BIT = 0                         # individual/group: bit 0 of the first byte
COMPARE_CYCLES = 4                 # cycles a MAC table comparison takes
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
        mc_w:     In(TableWriteSignature), multicast table entry write.
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

    ``mac`` and the VLAN table are read in the cycle of ``head.valid``, the
    MAC tables and counts in the ``COMPARE_CYCLES`` cycles after it, ``mode``
    and ``vlan_filter_enable`` in the cycle before ``decision_valid``: all
    within ``FILTER_LATENCY`` cycles of the head. The control side changes them
    between frames (a frame whose decision falls in the change may see a mix),
    and should wait ``FILTER_LATENCY`` cycles after a change before it reports
    the command done: every frame whose head comes after that sees the new
    settings.
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

        # --- MAC tables: LUT RAM banks, a row of each compared a cycle ------
        compare = Signal(range(COMPARE_CYCLES + 1), init=COMPARE_CYCLES)  # the row compared, or idle
        compare_dst = Signal(MAC_BITS)
        m.d.sync += compare.eq(Mux(compare == COMPARE_CYCLES, compare, compare + 1))
        with m.If(self.head.valid & head.eth):
            m.d.sync += [compare.eq(0), compare_dst.eq(dst)]

        def table(name, entries, port, count):
            """Compare ``compare_dst`` with the table's entries in use, a row of
            each bank a cycle; returns (a match, registered once the last row
            is compared; the count is above the table's size)."""
            banks = -(-entries // COMPARE_CYCLES)
            low_bits = entries.bit_length()          # counts up to `entries` fit here
            many = count[low_bits:].any()            # covers every entry
            hit = Signal(name=f"{name}_hit")
            row_hits = []
            for bank in range(banks):
                ram = Memory(shape=MAC_BITS, depth=COMPARE_CYCLES, init=[])
                m.submodules[f"{name}_bank{bank}"] = ram
                write = ram.write_port()
                read = ram.read_port(domain="comb")
                m.d.comb += [write.addr.eq(port.addr // banks), write.data.eq(port.data),
                             write.en.eq(port.en & (port.addr % banks == bank)),
                             read.addr.eq(compare)]
                entry = compare * banks + bank           # the entry this bank shows
                in_use = many | (entry < count[:low_bits])
                row_hits.append((read.data == compare_dst) & (entry < entries) & in_use)
            with m.If(compare == 0):
                m.d.sync += hit.eq(Cat(row_hits).any())
            with m.Elif(compare != COMPARE_CYCLES):
                m.d.sync += hit.eq(hit | Cat(row_hits).any())
            return hit, count > entries

        uc_match, uc_all = table("uc", self.uc_entries, self.uc_w, self.uc_count)
        mc_match, mc_all = table("mc", self.mc_entries, self.mc_w, self.mc_count)

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
            with m.If(~mode.nomulti & (mode.allmulti | mc_all | mc_match)):
                m.d.comb += reason.eq(FilterReason.ACCEPTED)
        with m.Else():
            m.d.comb += reason.eq(FilterReason.NOT_FOR_US)
            with m.If(~mode.nouni & (mode.alluni | uc_all | d_own | uc_match)):
                m.d.comb += reason.eq(FilterReason.ACCEPTED)

        m.d.sync += self.decision_valid.eq(d_valid)
        with m.If(d_valid):
            m.d.sync += [self.reason.eq(reason), self.accept.eq(reason == FilterReason.ACCEPTED)]
        return m

