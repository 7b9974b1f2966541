"""Board build (boards/): core-only synthesis, harness coverage, full Versa build.

The core comes from ``hdl.top`` (or the module named by the environment
variable ``VIRTIO_BOARD_CORE_MODULE``, for developing against a stand-in).
"""
import random

import pytest
from amaranth.build import ResourceError
from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from boards.build import (FF_MIN_RATIO, LUT_MIN_RATIO, CoverageError, build, check_coverage,
                          synth_core)
from boards.top import LED_COUNT, SYNC_CLK_HZ, CoreHarness, VersaTop, make_core
from boards.versa import (PCIE_REFCLK_RESOURCE, PCIE_RESOURCE, VersaPlatform,
                          request_pcie_pads)


#: A core-only synthesis below this many LUT4s means the core was gutted.
MIN_CORE_LUT4 = 200
STIMULUS_CYCLES = 400
OBSERVE_CYCLES = 4
SEED = 0x5EED


def _inspected_core():
    """A core whose signature a test reads; elaborated (cheap) so Amaranth
    does not warn that its sub-elaboratables were never used."""
    core, _params = make_core()
    Fragment.get(core, None)
    return core


def _flat_widths(core, flow):
    return sum(len(value.as_value() if hasattr(value, "as_value") else value)
               for _path, member, value in core.signature.flatten(core)
               if member.flow == flow)


def test_core_synth_nontrivial(tmp_path):
    cells = synth_core(None, tmp_path, progress=lambda _msg: None)
    assert cells.get("LUT4", 0) >= MIN_CORE_LUT4, cells
    assert cells.get("TRELLIS_FF", 0) > 0, cells


def test_harness_covers_every_core_port():
    core = _inspected_core()
    harness = CoreHarness(core.signature)
    Fragment.get(harness, None)
    # Every core output bit enters the MISR; every input bit is stimulus or a switch.
    assert harness.observed_width == _flat_widths(core, wiring.Out)
    assert harness.stimulus_width + 2 == _flat_widths(core, wiring.In)


def test_core_inputs_all_toggle():
    """With the harness in front, every input bit of the real core moves."""
    core, _params = make_core()
    harness = CoreHarness(core.signature)
    m = Module()
    m.submodules.core = core
    m.submodules.harness = harness
    wiring.connect(m, harness.tlp_rx, core.tlp_rx)
    wiring.connect(m, core.tlp_tx, harness.tlp_tx)
    wiring.connect(m, harness.wire_rx, core.wire_rx)
    wiring.connect(m, core.wire_tx, harness.wire_tx)
    m.d.comb += core.link_up.eq(harness.link_up)

    inputs = {
        "tlp_rx.payload": core.tlp_rx.payload.as_value(),
        "tlp_rx.valid": core.tlp_rx.valid,
        "tlp_tx.ready": core.tlp_tx.ready,
        "wire_rx.payload": core.wire_rx.payload.as_value(),
        "wire_rx.valid": core.wire_rx.valid,
        "wire_tx.ready": core.wire_tx.ready,
        "link_up": core.link_up,
    }
    seen_one = {name: 0 for name in inputs}
    seen_zero = {name: 0 for name in inputs}

    async def testbench(ctx):
        rng = random.Random(SEED)
        for cycle in range(STIMULUS_CYCLES):
            ctx.set(harness.serial_in, rng.getrandbits(1))
            ctx.set(harness.tx_ready_in, cycle // 8 % 2)
            ctx.set(harness.link_up_in, cycle // 16 % 2)
            await ctx.tick()
            for name, value in inputs.items():
                bits = ctx.get(value)
                seen_one[name] |= bits
                seen_zero[name] |= ~bits & ((1 << len(value)) - 1)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    for name, value in inputs.items():
        full = (1 << len(value)) - 1
        assert seen_one[name] == full and seen_zero[name] == full, \
            f"{name}: bits stuck (never 1: {~seen_one[name] & full:#x}, never 0: {~seen_zero[name] & full:#x})"


def _led_trace(harness, observed, inject):
    """LED values over a few cycles after ``inject`` is applied to the observed bits once."""
    trace = []

    async def testbench(ctx):
        ctx.set(observed, inject)
        await ctx.tick()
        ctx.set(observed, 0)
        for _ in range(OBSERVE_CYCLES):
            await ctx.tick()
            trace.append(ctx.get(harness.leds))

    sim = Simulator(harness)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return trace


def test_every_core_output_reaches_the_leds():
    """Flipping any one core output bit for one cycle changes the LEDs."""
    core = _inspected_core()
    harness = CoreHarness(core.signature)
    observed = harness.observed()
    baseline = _led_trace(harness, observed, 0)
    assert baseline == [0] * OBSERVE_CYCLES
    for bit in range(len(observed)):
        harness = CoreHarness(core.signature)
        assert _led_trace(harness, harness.observed(), 1 << bit) != baseline, f"bit {bit}"


def test_board_top_elaborates():
    """VersaTop elaborates on the Versa platform, takes its pins and constrains its clock.

    Elaboration only: converting the real core to RTLIL takes minutes (see the
    slow tests).
    """
    platform = VersaPlatform()
    Fragment.get(VersaTop(), platform)
    used = [("clk100", 0), ("rst", 0), ("uart", 0), ("switch", 0), ("switch", 1),
            *(("led", index) for index in range(LED_COUNT))]
    for name, number in used:
        with pytest.raises(ResourceError, match="already been requested"):
            platform.request(name, number, dir="-")
    assert sorted(hz for _port, hz in platform.iter_port_clock_constraints()) == [100e6]


def test_pcie_resources():
    """The PCIe lane and refclk exist and can be requested raw (for a DCUA)."""
    platform = VersaPlatform()
    lane = platform.lookup(PCIE_RESOURCE, 0)
    assert [s.name for s in lane.ios] == ["tx", "rx", "perst"]
    assert platform.lookup(PCIE_REFCLK_RESOURCE, 0).clock.frequency == 100e6
    lane, refclk = request_pcie_pads(platform)
    assert lane.tx.p.name and lane.rx.n.name and refclk.p.name


def test_coverage_check_rejects_a_gutted_core():
    core = {"LUT4": 1000, "CCU2C": 50, "TRELLIS_FF": 800, "DP16KD": 4}
    board_ok = {"LUT4": 1000, "CCU2C": 50, "TRELLIS_FF": 1000, "DP16KD": 4}
    assert check_coverage(board_ok, core, harness_flops=150)["TRELLIS_FF"]["ratio"] >= 1
    lost_ram = dict(board_ok, DP16KD=3)
    with pytest.raises(CoverageError, match="DP16KD"):
        check_coverage(lost_ram, core, harness_flops=150)
    lost_luts = dict(board_ok, LUT4=int(LUT_MIN_RATIO * 1000) - 100)
    with pytest.raises(CoverageError, match="LUT"):
        check_coverage(lost_luts, core, harness_flops=150)
    # FFs the harness adds do not count towards the core.
    with pytest.raises(CoverageError, match="TRELLIS_FF"):
        check_coverage(dict(board_ok, TRELLIS_FF=800), core, harness_flops=150)


def test_full_board_build(tmp_path):
    """Place and route the Versa top: a bitstream, timing met, whole core present."""
    result = build(None, tmp_path, progress=lambda _msg: None)
    assert result["timing_met"], result["fmax_mhz"]
    assert set(result["fmax_mhz"]) == {"sync"}
    assert result["required_mhz"] == {"sync": SYNC_CLK_HZ / 1e6}
    assert (tmp_path / "top.bit").stat().st_size > 0
    used, total = result["utilisation"]["TRELLIS_COMB"]
    assert 0 < used < total
    assert result["coverage"]["TRELLIS_FF"]["ratio"] >= FF_MIN_RATIO
    assert result["coverage"]["LUT-equivalents"]["ratio"] >= LUT_MIN_RATIO


@pytest.mark.parametrize("out_mhz", [75, 80, 100, 125])
def test_pll_dividers_make_the_frequency_within_the_vco_range(out_mhz):
    from boards.pll import VCO_MAX_HZ, VCO_MIN_HZ, pll_dividers
    clki, clkfb, clkop = pll_dividers(100e6, out_mhz * 1e6)
    assert 100e6 / clki * clkfb == out_mhz * 1e6
    assert VCO_MIN_HZ <= out_mhz * 1e6 * clkop <= VCO_MAX_HZ


def test_pll_refuses_what_it_cannot_make():
    from boards.pll import pll_dividers
    with pytest.raises(ValueError):
        pll_dividers(100e6, 1e6)
