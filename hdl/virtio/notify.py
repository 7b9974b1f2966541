"""Notification region: one doorbell per queue (virtio 1.2 section 4.1.4.4).

Queue q's doorbell is at ``queue_notify_off(q) * notify_off_multiplier``;
here notify_off = q and the multiplier is one DW. A write sets the queue's
pending bit; the ``doorbell`` stream hands pending queues on, lowest index
first. Repeated writes before one is taken coalesce, so no write is ever
refused and none is lost.
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..pcie.register_bus import RegisterBusSignature

__all__ = ["NOTIFY_OFF_MULTIPLIER", "NotifyRegion"]

NOTIFY_OFF_MULTIPLIER = 4       # bytes between doorbells


class NotifyRegion(wiring.Component):
    """Ports:
        bus:      In(RegisterBusSignature), the notify window.
        doorbell: Out(stream.Signature(16)), index of a queue that was notified.
        reset:    In(1), device reset drops pending doorbells.
    """

    def __init__(self, num_queues, addr_width):
        if num_queues > 1 << addr_width:
            raise ValueError("notify window too small for the queues")
        self.num_queues = num_queues
        super().__init__({
            "bus": In(RegisterBusSignature(addr_width)),
            "doorbell": Out(stream.Signature(16)),
            "reset": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        pending = Signal(self.num_queues)
        rang = Signal(self.num_queues)
        taken = Signal(self.num_queues)
        for q in range(self.num_queues):
            m.d.comb += rang[q].eq(self.bus.w_stb & (self.bus.be != 0) & (self.bus.addr == q))
        # lowest pending queue first
        for q in reversed(range(self.num_queues)):
            with m.If(pending[q]):
                m.d.comb += self.doorbell.payload.eq(q)
        m.d.comb += self.doorbell.valid.eq(pending != 0)
        for q in range(self.num_queues):
            m.d.comb += taken[q].eq(self.doorbell.valid & self.doorbell.ready
                                    & (self.doorbell.payload == q))
        with m.If(self.reset):
            m.d.sync += pending.eq(0)
        with m.Else():
            m.d.sync += pending.eq((pending & ~taken) | rang)
        with m.If(self.bus.r_stb):
            m.d.sync += self.bus.r_data.eq(0)      # doorbells read as zero
        return m
