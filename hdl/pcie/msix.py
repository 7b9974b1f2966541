"""MSI-X capability and its table and PBA (PCI 3.0 section 6.8.2).

Capability in config space:

    +0x00 | Message Control (enable, mask, size-1) | next ptr | ID 0x11 |
    +0x04 | Table offset                                     | BIR     |
    +0x08 | PBA offset                                       | BIR     |

Table in a BAR, 16 bytes a vector:

    +0x0 Message Address | +0x4 Message Upper Address | +0x8 Message Data
    +0xC Vector Control (bit 0: masked; masked after reset)

The PBA holds a pending bit per vector.
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from .config_space import Capability, Dword
from .tlp import DwordStreamSignature, RequestDw1, TlpDw0

__all__ = ["MsixCapability", "MsixTable"]

_BIR_BITS = 3
_DW_PER_ENTRY = spec.MSIX_ENTRY_SIZE // 4


class MsixCapability(Capability):
    cap_id = spec.PciCapId.MSIX
    size = spec.MSIX_CAP_SIZE

    def __init__(self, vectors, bar, table_offset, pba_offset):
        if not 1 <= vectors <= spec.MsixControl.TABLE_SIZE_MASK + 1:
            raise ValueError(f"MSI-X table of {vectors} vectors is out of range (1 to 2048)")
        for name, offset in (("table", table_offset), ("PBA", pba_offset)):
            if offset % (1 << _BIR_BITS):
                raise ValueError(f"MSI-X {name} offset {offset:#x} is not 8-byte aligned")
        self.vectors = vectors
        self.bar = bar
        self.table_offset = table_offset
        self.pba_offset = pba_offset

    def dwords(self, next_ptr):
        control_rw = spec.MsixControl.FUNCTION_MASK | spec.MsixControl.ENABLE
        return [
            Dword(init=self.header(self.cap_id, next_ptr, self.vectors - 1), rw=control_rw << 16),
            Dword(self.table_offset | self.bar),
            Dword(self.pba_offset | self.bar),
        ]


class MsixTable(wiring.Component):
    """The MSI-X table (RAM) and PBA as BAR register windows, and the sender
    that turns a raised vector into its message (PCI 3.0 section 6.8.3.4).

    A raised vector becomes pending. A pending vector is sent when MSI-X is
    enabled, the function is not masked, its own Vector Control mask bit is
    clear and bus mastering is on: a one-DW memory write of Message Data to
    Message Address, after which the pending bit clears. The sender reads the
    entry through the table's one RAM read port when BAR reads leave it free. A masked vector stays
    pending in the PBA and is sent once unmasked.

    Ports:
        table:   In(RegisterBusSignature), the table's window in the BAR.
        pba:     In(RegisterBusSignature), the PBA's window in the BAR (read only).
        raise_:  In(vectors), pulse per vector: an interrupt event.
        enable, function_mask: In(1), from the capability's Message Control.
        bus_master: In(1), Command.BUS_MASTER: no message without it.
        requester_id: In(16), this function's ID, for the message's header.
        msg:     Out(DwordStreamSignature), memory write TLPs to the TX arbiter.
    """

    def __init__(self, vectors, table_addr_width, pba_addr_width):
        from .register_bus import RegisterBusSignature
        if vectors * _DW_PER_ENTRY > 1 << table_addr_width:
            raise ValueError("MSI-X table window too small")
        if (vectors + 31) // 32 > 1 << pba_addr_width:
            raise ValueError("MSI-X PBA window too small")
        self.vectors = vectors
        super().__init__({
            "table": In(RegisterBusSignature(table_addr_width)),
            "pba": In(RegisterBusSignature(pba_addr_width)),
            "raise_": In(vectors),
            "enable": In(1),
            "function_mask": In(1),
            "bus_master": In(1),
            "requester_id": In(16),
            "msg": Out(DwordStreamSignature),
        })

    def elaborate(self, platform):
        m = Module()
        init = []
        for _ in range(self.vectors):
            init += [0, 0, 0, spec.MSIX_VECTOR_MASKED]
        m.submodules.mem = mem = Memory(shape=32, depth=len(init), init=init)
        read = mem.read_port()
        write = mem.write_port(granularity=8)
        in_table = self.table.addr < len(init)
        in_table_q = Signal()
        m.d.sync += in_table_q.eq(in_table)
        # One read port, shared: a BAR read takes it; the sender uses it when free.
        fetch_addr = Signal(range(len(init)))
        fetch_en = Signal()
        m.d.comb += [
            read.addr.eq(Mux(self.table.r_stb, self.table.addr, fetch_addr)),
            read.en.eq(self.table.r_stb | fetch_en),
            self.table.r_data.eq(read.data & in_table_q.replicate(32)),
            write.addr.eq(self.table.addr),
            write.data.eq(self.table.w_data),
            write.en.eq(self.table.be & (self.table.w_stb & in_table).replicate(4)),
        ]

        # Each vector's mask bit, shadowed from table writes so the sender
        # need not read every entry to find one it may send.
        masked = Signal(self.vectors, init=(1 << self.vectors) - 1)
        control_dw = _DW_PER_ENTRY - 1
        for vector in range(self.vectors):
            with m.If(self.table.w_stb & self.table.be[0]
                      & (self.table.addr == vector * _DW_PER_ENTRY + control_dw)):
                m.d.sync += masked[vector].eq(self.table.w_data[0])

        pending = Signal(self.vectors)
        sent = Signal(self.vectors)
        m.d.sync += pending.eq((pending & ~sent) | self.raise_)

        # PBA: read only.
        words = [pending[n:n + 32] for n in range(0, self.vectors, 32)]
        with m.If(self.pba.r_stb):
            m.d.sync += self.pba.r_data.eq(0)
            for index, word in enumerate(words):
                with m.If(self.pba.addr == index):
                    m.d.sync += self.pba.r_data.eq(word)

        # --- sender ---------------------------------------------------------
        sendable = pending & ~masked
        allowed = self.enable & ~self.function_mask & self.bus_master
        vector = Signal(range(self.vectors))
        lowest = Signal(range(self.vectors))
        for v in reversed(range(self.vectors)):
            with m.If(sendable[v]):
                m.d.comb += lowest.eq(v)
        entry = Signal(range(len(init)))
        m.d.comb += entry.eq(vector * _DW_PER_ENTRY)
        address = Signal(64)
        message_data = Signal(32)
        is_64 = Signal()             # 4-DW header: registered as the high DW arrives (timing)
        msg = self.msg

        # Message Address (low, high) and Data: entry DWs 0 to 2, read one a
        # cycle whenever the bus leaves the port free.
        fields = [address[:32], address[32:], message_data]
        next_dw = Signal(range(len(fields) + 1))     # next entry DW to read
        got_dw = Signal(range(len(fields)))          # entry DW read last cycle
        got = Signal()                               # ... if any
        fetching = Signal()
        m.d.comb += [
            fetch_addr.eq(entry + next_dw),
            fetch_en.eq(fetching & ~self.table.r_stb & (next_dw < len(fields))),
        ]
        m.d.sync += [got.eq(fetch_en), got_dw.eq(next_dw)]
        with m.If(fetch_en):
            m.d.sync += next_dw.eq(next_dw + 1)
        with m.If(got):
            with m.Switch(got_dw):
                for index, field in enumerate(fields):
                    with m.Case(index):
                        m.d.sync += field.eq(read.data)
                        if index == 1:           # Message Upper Address
                            m.d.sync += is_64.eq(read.data != 0)

        with m.FSM(name="msix_sender"):
            with m.State("IDLE"):
                with m.If(allowed & (sendable != 0)):
                    m.d.sync += [vector.eq(lowest), next_dw.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += fetching.eq(1)
                with m.If(got & (got_dw == len(fields) - 1)):
                    m.next = "SEND_DW0"
            with m.State("SEND_DW0"):
                dw0 = Signal(TlpDw0)
                m.d.comb += [
                    dw0.fmt.eq(Mux(is_64, spec.TlpFmt.DW4_DATA, spec.TlpFmt.DW3_DATA)),
                    dw0.type.eq(spec.TlpFmtType.MWR32 & 0x1F),
                    dw0.length.eq(1),
                    msg.valid.eq(1),
                    msg.payload.data.eq(dw0),
                    msg.payload.first.eq(1),
                ]
                with m.If(msg.ready):
                    m.next = "SEND_DW1"
            with m.State("SEND_DW1"):
                dw1 = Signal(RequestDw1)
                m.d.comb += [
                    dw1.first_be.eq(0b1111),
                    dw1.requester_id.eq(self.requester_id),
                    msg.valid.eq(1),
                    msg.payload.data.eq(dw1),
                ]
                with m.If(msg.ready):
                    m.next = "SEND_ADDR_HI"
            with m.State("SEND_ADDR_HI"):
                # 4-DW header: upper address first; 3-DW header: skip it
                with m.If(is_64):
                    m.d.comb += [msg.valid.eq(1), msg.payload.data.eq(address[32:])]
                    with m.If(msg.ready):
                        m.next = "SEND_ADDR_LO"
                with m.Else():
                    m.next = "SEND_ADDR_LO"
            with m.State("SEND_ADDR_LO"):
                m.d.comb += [msg.valid.eq(1), msg.payload.data.eq(address[2:32] << 2)]
                with m.If(msg.ready):
                    m.next = "SEND_DATA"
            with m.State("SEND_DATA"):
                m.d.comb += [msg.valid.eq(1), msg.payload.data.eq(message_data),
                             msg.payload.last.eq(1)]
                with m.If(msg.ready):
                    for v in range(self.vectors):
                        m.d.comb += sent[v].eq(vector == v)
                    m.next = "IDLE"
        return m
