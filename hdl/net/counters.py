"""Device-side statistics: per-queue packet, byte and drop counters, and drop
counters by reason, readable by the driver in BAR0's statistics window.

A device-specific extension (virtio defines no statistics structure for
virtio-net): read-only 32-bit counters that wrap, cleared by device reset.

    byte offset        +0x0          +0x4          +0x8          +0xC
    0x00               drops by reason, one DW each (spec.StatsDrop order)
    0x40 + 0x10*q      packets       bytes         drops         0

Queue q is the virtqueue index: 2n is receiveq n, 2n+1 transmitq n. Packets
and bytes are frames as on the wire (no virtio_net_hdr).
"""
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..pcie.register_bus import RegisterBusSignature

__all__ = ["DropCounter", "QueueCounters", "QueueEvent", "STATS_ADDR_WIDTH"]

STATS_ADDR_WIDTH = (spec.STATS_WINDOW_BYTES // 4 - 1).bit_length()
QUEUE_STATS_BASE_DW = spec.STATS_QUEUE_BASE // 4
QUEUE_STATS_DW = spec.STATS_QUEUE_STRIDE // 4
_COUNTER_BITS = 32
DropCounter = spec.StatsDrop
QueueStat = spec.StatsQueue

QueueEvent = data.StructLayout({
    "queue": unsigned(8),      # the virtqueue the pulses refer to
    "packet": unsigned(1),     # pulse: a frame of ``length`` bytes went through it
    "length": unsigned(16),
    "drop": unsigned(1),       # pulse: a frame of it was dropped
})


class QueueCounters(wiring.Component):
    """Ports:
        bus:       In(RegisterBusSignature(STATS_ADDR_WIDTH)), the window (read only).
        tx:        In(QueueEvent), events of transmitqs (odd queue indexes).
        rx:        In(QueueEvent), events of receiveqs (even queue indexes).
        rx_drop:   In(1), pulse: a frame from the wire was dropped before any
                   queue took it (counted on receiveq 0: no steering yet).
        reasons:   In(len(DropCounter)), pulses, one bit per reason.
    """

    def __init__(self, num_queues):
        if QUEUE_STATS_BASE_DW + QUEUE_STATS_DW * num_queues > 1 << STATS_ADDR_WIDTH:
            raise ValueError(f"{num_queues} queues do not fit the statistics window")
        self.num_queues = num_queues
        super().__init__({
            "bus": In(RegisterBusSignature(STATS_ADDR_WIDTH)),
            "tx": In(QueueEvent),
            "rx": In(QueueEvent),
            "rx_drop": In(1),
            "reasons": In(len(DropCounter)),
        })

    def elaborate(self, platform):
        m = Module()
        nq = self.num_queues
        packets = [Signal(_COUNTER_BITS, name=f"packets{q}") for q in range(nq)]
        octets = [Signal(_COUNTER_BITS, name=f"bytes{q}") for q in range(nq)]
        drops = [Signal(_COUNTER_BITS, name=f"drops{q}") for q in range(nq)]
        by_reason = [Signal(_COUNTER_BITS, name=f"drop_{r.name.lower()}") for r in DropCounter]

        for q in range(nq):
            event = self.tx if q % 2 else self.rx
            here = event.queue == q
            with m.If(event.packet & here):
                m.d.sync += [packets[q].eq(packets[q] + 1), octets[q].eq(octets[q] + event.length)]
            engine_drop = event.drop & here
            wire_drop = self.rx_drop if q == 0 else 0
            m.d.sync += drops[q].eq(drops[q] + engine_drop + wire_drop)
        for reason, counter in zip(DropCounter, by_reason):
            with m.If(self.reasons[reason]):
                m.d.sync += counter.eq(counter + 1)

        with m.If(self.bus.r_stb):
            m.d.sync += self.bus.r_data.eq(0)
            with m.Switch(self.bus.addr):
                for reason, counter in zip(DropCounter, by_reason):
                    with m.Case(reason):
                        m.d.sync += self.bus.r_data.eq(counter)
                for q in range(nq):
                    base = QUEUE_STATS_BASE_DW + QUEUE_STATS_DW * q
                    for stat, counter in ((QueueStat.PACKETS, packets[q]),
                                          (QueueStat.BYTES, octets[q]),
                                          (QueueStat.DROPS, drops[q])):
                        with m.Case(base + stat):
                            m.d.sync += self.bus.r_data.eq(counter)
        return m
