"""BlockRamReadPort: a synchronous read port as Amaranth's, and nothing but
block RAM on ECP5."""
import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib.memory import Memory

from boards.build import _synth_alone
from hdl.lib.block_ram import BLOCK_RAM_ATTRS, BlockRamReadPort
from tests.amaranth_sim import simulate

WIDTH, DEPTH = 36, 64


class _Ram(Elaboratable):
    """A write port and a read port; ``ours`` picks `BlockRamReadPort` (with
    `BLOCK_RAM_ATTRS`) or Amaranth's own synchronous read port."""

    def __init__(self, ours, width=WIDTH):
        self.ours, self.width = ours, width
        self.w_addr = Signal(range(DEPTH))
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.r_addr = Signal(range(DEPTH))
        self.r_en = Signal(init=1)
        self.r_data = Signal(width)

    def ports(self):
        return [self.w_addr, self.w_data, self.w_en, self.r_addr, self.r_en, self.r_data]

    def elaborate(self, platform):
        m = Module()
        attrs = BLOCK_RAM_ATTRS if self.ours else {"ram_style": "block"}
        m.submodules.ram = ram = Memory(shape=self.width, depth=DEPTH, init=[], attrs=attrs)
        write = ram.write_port()
        read = BlockRamReadPort(m, ram) if self.ours else ram.read_port()
        m.d.comb += [write.addr.eq(self.w_addr), write.data.eq(self.w_data),
                     write.en.eq(self.w_en), read.addr.eq(self.r_addr), read.en.eq(self.r_en),
                     self.r_data.eq(read.data)]
        return m


def _trace(ours, seed=3, cycles=400):
    """The data read each cycle under random writes, reads, enables and
    collisions (the read address often the written one)."""
    rng = random.Random(seed)
    dut = _Ram(ours)
    seen = []

    async def testbench(ctx):
        for _ in range(cycles):
            addr = rng.randrange(8)
            ctx.set(dut.w_addr, addr)
            ctx.set(dut.w_data, rng.getrandbits(WIDTH))
            ctx.set(dut.w_en, rng.random() < 0.6)
            ctx.set(dut.r_addr, addr if rng.random() < 0.5 else rng.randrange(8))
            ctx.set(dut.r_en, rng.random() < 0.8)
            await ctx.tick()
            seen.append(ctx.get(dut.r_data))

    simulate(dut, testbench)
    return seen


def test_reads_as_a_non_transparent_synchronous_port():
    """Cycle for cycle the same data as Amaranth's port: the word the cycle
    after its address, held while ``en`` is low, the old word when the
    address is written in the same cycle."""
    ours, theirs = _trace(True), _trace(False)
    assert len(set(theirs)) > 50                 # the trace reads many words
    assert ours == theirs


@pytest.mark.parametrize("ours, expect_logic", [(True, False), (False, True)])
def test_maps_to_block_ram_alone(tmp_path, ours, expect_logic):
    """On ECP5 the port is the DP16KD's own: no registers and multiplexers for
    read/write collisions, which Amaranth's port costs (so this can fail)."""
    dut = _Ram(ours)
    cells, _ = _synth_alone(dut, "ram", dut.ports(), tmp_path, lambda _msg: None)
    assert cells.get("DP16KD") == 1, cells
    logic = cells.get("LUT4", 0) + cells.get("TRELLIS_FF", 0)
    assert (logic > WIDTH) if expect_logic else (logic == 0), cells
