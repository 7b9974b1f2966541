"""The RX classifier layer: which frames from the wire are taken, and which
receive queue each goes to (virtio 1.2 sections 5.1.6.5.1 to 5.1.6.5.6).

    wire ──┬──────────── delay (CLASSIFY_LATENCY cycles) ─────────────> o (+ abort, tag)
           └─> FrameHeadParser ──head──> RxFilter ───────> accept ─────┘      ^
                     │ tuple, head ────> ToeplitzHash ──> RxQueueSelect ─> queue

The parser watches the frame as it passes; the filter's and the queue
selector's answers come a fixed few cycles after its last beat. The frame
itself goes through a delay line of the same length, so that its last beat
reaches the RX frame buffer together with them: ``abort`` (the filter said
drop) and ``tag`` (the queue pair) are sampled there with that beat. The
wire side is never stalled (the RX frame buffer always takes a beat), so a
plain shift register is the delay line. Frames follow each other at least
``MIN_FRAME_BEATS`` beats apart (shorter ones are runts the frame buffer
drops anyway), longer than the answers take, so each answer is held until its
frame's last beat leaves. (A runt right behind a frame can overwrite that
frame's answers with its own: accept, queue 0. The frame is then taken and
delivered on receiveq1; nothing is dropped by mistake.)

Configuration comes from `ControlCommands`.
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from .. import spec
from ..lib.bytes import BYTES_PER_BEAT, ByteBeat, ByteStreamSignature
from .packet_fifo import TAG_BITS
from .rss import (HASH_LATENCY, INDIRECTION_TABLE_MAX, QUEUE_SELECT_LATENCY,
                  SUPPORTED_HASH_TYPES, RxQueueSelect, ToeplitzHash)
from .rx_filter import FILTER_LATENCY, MAC_COUNT_BITS, FilterReason, RxFilter, RxMode
from .rx_parse import HEAD_LATENCY, MAC_BITS, VID_BITS, FrameHeadParser, TableWriteSignature

__all__ = ["CLASSIFY_LATENCY", "RxClassifier"]

_ANSWER_LATENCY = HEAD_LATENCY + max(FILTER_LATENCY, HASH_LATENCY + QUEUE_SELECT_LATENCY)
CLASSIFY_LATENCY = _ANSWER_LATENCY + 1          # the answers are registered once more
MIN_FRAME_BEATS = -(-spec.ETH_HLEN // BYTES_PER_BEAT)
# the next frame's first answer must not land before this frame's last beat
# has left the delay line
assert (MIN_FRAME_BEATS + HEAD_LATENCY + min(FILTER_LATENCY, HASH_LATENCY + QUEUE_SELECT_LATENCY)
        + 1 > CLASSIFY_LATENCY)


class RxClassifier(wiring.Component):
    """Ports:
        i:        In(ByteStreamSignature), frames from the wire (dense beats); always ready.
        i_abort:  In(1), with ``i``'s last beat: the MAC found the frame bad (FCS,
                  PHY error): it is dropped like a filtered one.
        o:        Out(ByteStreamSignature), the same beats ``CLASSIFY_LATENCY`` cycles
                  later (``o.ready`` must be 1: the RX frame buffer never stalls).
        abort:    Out(1), with ``o``'s last beat: the filter (or ``i_abort``) drops the frame.
        reason:   Out(FilterReason), with it: why.
        tag:      Out(8), with ``o``'s last beat: the queue pair it is steered to.
        pairs:    In(16), active queue pairs; a table entry at or above it steers to 0.
        steer:    In(1), multiqueue negotiated: hash flows over the pairs.
        mode, mac, uc_w, mc_w, uc_count, mc_count, vlan_filter_enable,
        vlan_w, vlan_clear, vlan_clearing: to and from `RxFilter` (see there).
        steer_w:  In(TableWriteSignature), to `RxQueueSelect`'s indirection table.
    """

    def __init__(self, *, max_pairs, table_size=INDIRECTION_TABLE_MAX):
        self.filter = RxFilter()
        self.select = RxQueueSelect(max_pairs=max_pairs, table_size=table_size)
        super().__init__({
            "i": In(ByteStreamSignature),
            "i_abort": In(1),
            "o": Out(ByteStreamSignature),
            "abort": Out(1),
            "reason": Out(FilterReason),
            "tag": Out(TAG_BITS),
            "pairs": In(16),
            "steer": In(1),
            "mode": In(RxMode),
            "mac": In(MAC_BITS),
            "uc_w": In(self.filter.uc_w.signature.flip()),
            "mc_w": In(self.filter.mc_w.signature.flip()),
            "uc_count": In(MAC_COUNT_BITS),
            "mc_count": In(MAC_COUNT_BITS),
            "vlan_filter_enable": In(1),
            "vlan_w": In(TableWriteSignature(VID_BITS, 1)),
            "vlan_clear": In(1),
            "vlan_clearing": Out(1),
            "steer_w": In(self.select.table_w.signature.flip()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.parser = parser = FrameHeadParser()
        m.submodules.filter = rx_filter = self.filter
        m.submodules.hash = toeplitz = ToeplitzHash()
        m.submodules.select = select = self.select

        m.d.comb += [
            self.i.ready.eq(1),
            parser.tap.valid.eq(self.i.valid),
            parser.tap.ready.eq(1),
            parser.tap.payload.eq(self.i.payload),
        ]
        connect(m, parser.head, rx_filter.head)
        connect(m, parser.tuple, toeplitz.tuple)
        connect(m, parser.head, toeplitz.head)
        connect(m, toeplitz.hash, select.hash)
        m.d.comb += [
            toeplitz.hash_types.eq(Mux(self.steer, int(SUPPORTED_HASH_TYPES), 0)),
            select.mask.eq(select.table_size - 1),
            select.default_queue.eq(0),
            rx_filter.mode.eq(self.mode),
            rx_filter.mac.eq(self.mac),
            rx_filter.uc_count.eq(self.uc_count),
            rx_filter.mc_count.eq(self.mc_count),
            rx_filter.vlan_filter_enable.eq(self.vlan_filter_enable),
            rx_filter.vlan_clear.eq(self.vlan_clear),
            self.vlan_clearing.eq(rx_filter.vlan_clearing),
        ]
        for mine, theirs in ((self.uc_w, rx_filter.uc_w), (self.mc_w, rx_filter.mc_w),
                             (self.vlan_w, rx_filter.vlan_w), (self.steer_w, select.table_w)):
            m.d.comb += [theirs.en.eq(mine.en), theirs.addr.eq(mine.addr), theirs.data.eq(mine.data)]

        # the answers, held for the frame's last beat at the end of the delay line
        drop = Signal()
        reason = Signal(FilterReason)
        queue = Signal(TAG_BITS)
        with m.If(rx_filter.decision_valid):
            m.d.sync += [drop.eq(~rx_filter.accept), reason.eq(rx_filter.reason)]
        with m.If(select.queue_valid):
            m.d.sync += queue.eq(Mux(select.queue < self.pairs, select.queue, 0))

        # the delay line
        valid = self.i.valid
        payload = self.i.payload
        bad = self.i_abort
        for stage in range(CLASSIFY_LATENCY):
            next_valid = Signal(name=f"delay_valid{stage}")
            next_payload = Signal(ByteBeat, name=f"delay_beat{stage}")
            next_bad = Signal(name=f"delay_bad{stage}")
            m.d.sync += [next_valid.eq(valid), next_payload.eq(payload), next_bad.eq(bad)]
            valid, payload, bad = next_valid, next_payload, next_bad
        m.d.comb += [
            self.o.valid.eq(valid),
            self.o.payload.eq(payload),
            self.abort.eq(drop | bad),
            self.reason.eq(reason),
            self.tag.eq(queue),
        ]
        return m
