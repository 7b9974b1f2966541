"""MSI-X capability and its table and PBA (PCI 3.0 section 6.8.2).

Capability in config space:

    +0x00 | Message Control (enable, mask, size-1) | next ptr | ID 0x11 |
    +0x04 | Table offset                                     | BIR     |
    +0x08 | PBA offset                                       | BIR     |

Table in a BAR, 16 bytes a vector:

    +0x0 Message Address | +0x4 Message Upper Address | +0x8 Message Data
    +0xC Vector Control (bit 0: masked; masked after reset)

The PBA holds a pending bit per vector. Sending messages comes with the ring
engine; until then no vector becomes pending.
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from .config_space import Capability, Dword

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
    """The MSI-X table (in block RAM) and PBA as BAR register windows.

    Ports:
        table: In(RegisterBusSignature), the table's window in the BAR.
        pba:   In(RegisterBusSignature), the PBA's window in the BAR.
        pending: In(vectors), pending bits, shown in the PBA.
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
            "pending": In(vectors),
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
        m.d.comb += [
            read.addr.eq(self.table.addr),
            read.en.eq(self.table.r_stb),
            self.table.r_data.eq(read.data & in_table_q.replicate(32)),
            write.addr.eq(self.table.addr),
            write.data.eq(self.table.w_data),
            write.en.eq(self.table.be & (self.table.w_stb & in_table).replicate(4)),
        ]

        # PBA: read only.
        words = [self.pending[n:n + 32] for n in range(0, self.vectors, 32)]
        with m.If(self.pba.r_stb):
            m.d.sync += self.pba.r_data.eq(0)
            for index, word in enumerate(words):
                with m.If(self.pba.addr == index):
                    m.d.sync += self.pba.r_data.eq(word)
        return m
