"""Block RAM read ports without read/write collision logic.

A non-transparent synchronous read port of an Amaranth `Memory` promises the
old word when its address is written in the same cycle. An ECP5 DP16KD does
not keep that promise between its two ports, so yosys keeps it with logic
around the RAM: the write's address and data in registers, a comparator, and
a multiplexer per data bit (about a LUT4 and two flip-flops per bit read; a
208-bit port costs 218 LUT4 and 422 flip-flops).

`BlockRamReadPort` is the same port built as an asynchronous read and a
register on its output, which yosys folds into the RAM's own read port; with
the memory's ``no_rw_check`` attribute (`BLOCK_RAM_ATTRS`) it leaves a
collision undefined and adds nothing. In simulation it behaves as a
non-transparent synchronous port (a collision reads the old word).

Only for memories whose users never use a word read in the cycle its address
is written: each user says why beside its memory.
"""
from amaranth.hdl import Signal

__all__ = ["BLOCK_RAM_ATTRS", "BlockRamReadPort"]

BLOCK_RAM_ATTRS = {"ram_style": "block", "no_rw_check": 1}
"""`Memory` attributes: block RAM, a read in the cycle of a write to the same
address undefined (yosys)."""


class BlockRamReadPort:
    """A synchronous read port of ``memory`` (built with `BLOCK_RAM_ATTRS`).

    Attributes, as those of a `amaranth.lib.memory.ReadPort`:
        addr: the address, set by the user (the port's ``addr``).
        en:   set by the user, default 1: ``data`` takes the word at ``addr``
              at the clock edge; held while 0.
        data: the word read, the cycle after ``addr``.
    """

    def __init__(self, m, memory, *, domain="sync", name="read"):
        port = memory.read_port(domain="comb")
        self.addr = port.addr
        self.en = Signal(init=1, name=f"{name}_en")
        self.data = Signal(memory.shape, name=f"{name}_data")
        with m.If(self.en):
            m.d[domain] += self.data.eq(port.data)
