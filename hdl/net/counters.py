"""Device-side statistics: per-queue packet, byte and drop counters, and drop
counters by reason, readable by the driver in BAR0's statistics window.

A device-specific extension (virtio defines no statistics structure for
virtio-net): read-only 32-bit counters that wrap, cleared by device reset.

    byte offset        +0x0          +0x4          +0x8          +0xC
    0x00               drops by reason, one DW each (spec.StatsDrop order)
    0x40 + 0x10*q      packets       bytes         drops         0

Queue q is the virtqueue index: 2n is receiveq n, 2n+1 transmitq n. Packets
and bytes are frames as on the wire (no virtio_net_hdr).

The per-queue counters live in two block RAM tables (DP16KD on ECP5; LUTs
are the scarcer resource), one for the receiveqs' events and one for the
transmitqs', a row (packets, bytes, drops) per queue pair, each with two
synchronous read ports, both transparent to the table's write: an event is
registered while its row is read, then added to and written back the next
cycle, so an event the next cycle for the same queue reads the new row
(yosys builds the transparency from a register of the written row and a
mux, the block RAM's own read of a row being written being undefined). The
bus reads a row on the edge of ``r_stb`` (the port's enable: ``r_data`` holds
until the next read), so a read counts the events up to the cycle before it,
as the reasons' counts do. Frames dropped before any queue took them
(``rx_drop``) have a register of their own, added to queue 0's drops when
read. The drop reasons (several can pulse at once) have a word each in a
LUT RAM and a count each of the pulses not in it yet; a round robin adds one
reason's count to its word each cycle (every word in ``REASON_SLOTS``
cycles), and a read adds the count to the word. After a device reset every
row and every reason's word is rewritten with zeros, a row and a word a
cycle (`QueueCounters.clear_cycles`: ``max((num_queues + 1) // 2,
REASON_SLOTS)``); events in those cycles are not counted, but for a queue
event in the last of them (the device is idle then: the driver has yet to
set DRIVER_OK again).
"""
from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from .. import spec
from ..pcie.register_bus import RegisterBusSignature

__all__ = ["DropCounter", "QueueCounters", "QueueEvent", "STATS_ADDR_WIDTH"]

STATS_ADDR_WIDTH = (spec.STATS_WINDOW_BYTES // 4 - 1).bit_length()
QUEUE_STATS_BASE_DW = spec.STATS_QUEUE_BASE // 4
QUEUE_STATS_DW = spec.STATS_QUEUE_STRIDE // 4
_COUNTER_BITS = 32
REASON_SLOTS = 1 << (len(spec.StatsDrop) - 1).bit_length()   # words of the reasons' RAM
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

    @property
    def clear_cycles(self):
        """Cycles after a reset in which the counters are zeroed (events not
        counted): a row of the tables, and a reason's word, a cycle."""
        return max((self.num_queues + 1) // 2, REASON_SLOTS)

    def elaborate(self, platform):
        m = Module()
        nq = self.num_queues
        rows = (nq + 1) // 2                 # a row per pair: queue q is row q // 2
        row_bits = len(QueueStat) * _COUNTER_BITS
        wire_drops = Signal(_COUNTER_BITS)   # receiveq 0's, before steering

        clearing = Signal(init=1)            # after (device) reset: zero the tables
        clear_row = Signal(range(self.clear_cycles))
        with m.If(clearing):
            m.d.sync += clear_row.eq(clear_row + 1)
            with m.If(clear_row == self.clear_cycles - 1):
                m.d.sync += [clearing.eq(0), clear_row.eq(0)]

        # the bus's read: which queue row and which counter of it
        bus_q = Signal(range(1 << STATS_ADDR_WIDTH))
        m.d.comb += bus_q.eq((self.bus.addr - QUEUE_STATS_BASE_DW) // QUEUE_STATS_DW)
        bus_stat = self.bus.addr[:(QUEUE_STATS_DW - 1).bit_length()]
        bus_queue_dw = (self.bus.addr >= QUEUE_STATS_BASE_DW) & (bus_q < nq)

        tables = []                          # the bus's read ports
        for parity, event in ((0, self.rx), (1, self.tx)):
            table = Memory(shape=row_bits, depth=rows, init=[], attrs={"ram_style": "block"})
            m.submodules[f"table{parity}"] = table
            write = table.write_port()
            # transparent: a row read on the edge it is written reads as written
            # (back-to-back events on a queue; a bus read as its row is written)
            update = table.read_port(transparent_for=[write])
            shown = table.read_port(transparent_for=[write])
            # stage 1: the event, registered, and its row read
            ev_row = Signal(range(max(rows, 2)), name=f"ev_row{parity}")
            ev_packet = Signal(name=f"ev_packet{parity}")
            ev_length = Signal(16, name=f"ev_length{parity}")
            ev_drop = Signal(name=f"ev_drop{parity}")
            ours = event.queue[0] == parity
            m.d.sync += [
                ev_row.eq(event.queue[1:]),
                ev_packet.eq(event.packet & ours & (event.queue < nq)),
                ev_length.eq(event.length),
                ev_drop.eq(event.drop & ours & (event.queue < nq)),
            ]
            m.d.comb += update.addr.eq(event.queue[1:])
            # stage 2: add, write back; while clearing, write 0 + 0 (the zeroing
            # shares its LUT with the read's transparency)
            row = Mux(clearing, 0, update.data)
            count_packet = ev_packet & ~clearing
            def counter(stat, increment):
                """The row's ``stat`` counter plus ``increment``, wrapping at 32 bits."""
                total = row.word_select(stat, _COUNTER_BITS) + increment
                return total[:_COUNTER_BITS]
            m.d.comb += [
                write.addr.eq(Mux(clearing, clear_row[:len(ev_row)], ev_row)),
                write.data.eq(Cat(counter(QueueStat.PACKETS, count_packet),
                                  counter(QueueStat.BYTES, Mux(count_packet, ev_length, 0)),
                                  counter(QueueStat.DROPS, ev_drop & ~clearing))),
                write.en.eq(Mux(clearing, clear_row < rows, ev_packet | ev_drop)),
            ]
            m.d.comb += [shown.addr.eq(bus_q[1:]), shown.en.eq(self.bus.r_stb)]
            tables.append(shown)

        m.d.sync += wire_drops.eq(wire_drops + self.rx_drop)

        # --- drops by reason ----------------------------------------------------
        # A LUT RAM word per reason, and per reason a count of the pulses not
        # in it yet; each cycle one reason's count (`turn`, round robin) is
        # added to its word. A word's turn comes every REASON_SLOTS cycles,
        # so a count never passes REASON_SLOTS. The clearing after reset
        # lasts a round at least: every word is written with 0.
        reason_ram = Memory(shape=_COUNTER_BITS, depth=REASON_SLOTS, init=[])
        m.submodules.reasons = reason_ram
        fold_read = reason_ram.read_port(domain="comb")
        bus_read = reason_ram.read_port(domain="comb")
        fold_write = reason_ram.write_port()
        turn = Signal(range(REASON_SLOTS))
        m.d.sync += turn.eq(turn + 1)
        pending = [Signal(range(REASON_SLOTS + 1), name=f"pending_{r.name.lower()}")
                   for r in DropCounter]
        turn_pending = Signal(range(REASON_SLOTS + 1))
        with m.Switch(turn):
            for reason, count in zip(DropCounter, pending):
                with m.Case(reason):
                    m.d.comb += turn_pending.eq(count)
        m.d.comb += [fold_read.addr.eq(turn), fold_write.addr.eq(turn), fold_write.en.eq(1),
                     fold_write.data.eq(Mux(clearing, 0, fold_read.data + turn_pending))]
        for reason, count in zip(DropCounter, pending):
            pulse = self.reasons[reason] & ~clearing
            with m.If(turn == reason):
                m.d.sync += count.eq(pulse)
            with m.Else():
                m.d.sync += count.eq(count + pulse)

        # --- the window -------------------------------------------------------
        # r_data: the row read on the r_stb edge (held by the port's enable),
        # or a reason's pending count, plus ``extra``; both latched then:
        # ``extra`` is a reason's word or queue 0's drops before steering.
        stat_q = Signal.like(bus_stat)
        parity_q = Signal()
        from_table = Signal()                # r_data includes the table's counter
        extra = Signal(_COUNTER_BITS)
        small = Signal(range(REASON_SLOTS + 1))   # a reason's pending count
        m.d.comb += bus_read.addr.eq(self.bus.addr[:len(bus_read.addr)])
        with m.If(self.bus.r_stb):
            m.d.sync += [stat_q.eq(bus_stat), parity_q.eq(bus_q[0]), extra.eq(0), small.eq(0),
                         from_table.eq(bus_queue_dw & (bus_stat < len(QueueStat)))]
            # queue 0's drops include the frames dropped before steering
            with m.If(bus_queue_dw & (bus_q == 0) & (bus_stat == QueueStat.DROPS)):
                m.d.sync += extra.eq(wire_drops)
            with m.Switch(self.bus.addr):
                for reason, count in zip(DropCounter, pending):
                    with m.Case(reason):
                        m.d.sync += [extra.eq(bus_read.data), small.eq(count)]
        queue_word = Signal(_COUNTER_BITS)
        for parity, shown in enumerate(tables):
            with m.If(parity_q == parity):
                m.d.comb += queue_word.eq(shown.data.word_select(stat_q, _COUNTER_BITS))
        m.d.comb += self.bus.r_data.eq(Mux(from_table, queue_word, small) + extra)
        return m
