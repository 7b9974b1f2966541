"""Board build (boards/): core-only synthesis, harness coverage, the Ethernet
MAC on the board, full Versa build.

The core comes from ``hdl.top`` (or the module named by the environment
variable ``VIRTIO_BOARD_CORE_MODULE``, for developing against a stand-in).
"""
import json
import random

import pytest
from amaranth.build import ResourceError
from amaranth.hdl import Fragment, Module, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from boards.build import (FF_MIN_RATIO, LUT_MIN_RATIO, CoverageError, _clock_nets_by_bit,
                          _parse_report, build, check_coverage, synth_core, synth_mac)
from boards.top import (ETH_PORT, ETH_RX_CLK_HZ, ETH_TX_CLK_HZ, HARNESS_PORTS, LED_COUNT,
                        MAC_EVENT_BITS, MAC_PORTS, SYNC_CLK_HZ, CoreHarness, PhyResetTimer,
                        VersaTop, mac_events, make_core)
from boards.versa import (PCIE_REFCLK_RESOURCE, PCIE_RESOURCE, VersaPlatform,
                          request_pcie_pads)
from hdl.eth.mac import EthernetMac, MacCounter


#: A core-only synthesis below this many LUT4s means the core was gutted.
MIN_CORE_LUT4 = 200
STIMULUS_CYCLES = 400
OBSERVE_CYCLES = 4
SEED = 0x5EED
#: Every clock domain of the board and its requirement (MHz).
BOARD_DOMAINS_MHZ = {"sync": SYNC_CLK_HZ / 1e6, "eth_tx": ETH_TX_CLK_HZ / 1e6,
                     "eth_rx": ETH_RX_CLK_HZ / 1e6}
#: RGMII DDR registers: TXC, TX_CTL, TXD[4] out; RX_CTL, RXD[4] in (RXC is the clock).
RGMII_ODDR = 6
RGMII_IDDR = 5
#: Ball names of the Versa's RGMII port 0 (amaranth-boards): TXC, TX_CTL,
#: TXD[3:0], RXC, RX_CTL, RXD[3:0].
RGMII0_SITES = ("P19", "R20", "N19", "N20", "P18", "P20", "L20", "U19", "T20", "U20", "T19",
                "R18")


def _inspected_core():
    """A core whose signature a test reads; elaborated (cheap) so Amaranth
    does not warn that its sub-elaboratables were never used."""
    core, _params = make_core()
    Fragment.get(core, None)
    return core


def _flat_widths(core, flow, ports=None):
    return sum(len(value.as_value() if hasattr(value, "as_value") else value)
               for path, member, value in core.signature.flatten(core)
               if member.flow == flow and (ports is None or path[0] in ports))


class _StandInCore(wiring.Component):
    """A component with the real core's ports and almost no logic: lets
    `VersaTop` elaborate and convert in seconds (the real core takes minutes)."""

    def __init__(self, signature):
        super().__init__(signature)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.tlp_tx.valid.eq(self.tlp_rx.valid)
        m.d.comb += self.wire_tx.valid.eq(self.wire_rx.valid)
        return m


def _versa_plan_with_stand_in_core():
    """`VersaTop` around a stand-in with the real core's signature, prepared
    for the Versa: ``(plan, top)`` (RTLIL, LPF, scripts; no tools run)."""
    core = _inspected_core()
    top = VersaTop(core.params, core=_StandInCore(core.signature))
    return VersaPlatform().prepare(top, name="top"), top


def test_core_synth_nontrivial(tmp_path):
    cells = synth_core(None, tmp_path, progress=lambda _msg: None)
    assert cells.get("LUT4", 0) >= MIN_CORE_LUT4, cells
    assert cells.get("TRELLIS_FF", 0) > 0, cells


def test_every_core_port_is_served():
    """Each core port belongs to the harness or to the MAC: a new core port
    must be given to one of them (else synthesis would remove its logic)."""
    core = _inspected_core()
    assert set(core.signature.members) == set(HARNESS_PORTS) | set(MAC_PORTS)
    assert not set(HARNESS_PORTS) & set(MAC_PORTS)
    mac = EthernetMac()
    Fragment.get(mac, None)
    assert len(mac_events(mac)) == MAC_EVENT_BITS


def test_harness_covers_its_core_ports():
    core = _inspected_core()
    harness = CoreHarness(core.signature, events=MAC_EVENT_BITS)
    Fragment.get(harness, None)
    # Every output bit of its ports, and the MAC's events, enter the MISR;
    # every input bit of its ports is stimulus or a switch.
    assert harness.observed_width == (_flat_widths(core, wiring.Out, HARNESS_PORTS)
                                      + MAC_EVENT_BITS)
    assert harness.stimulus_width + 2 == _flat_widths(core, wiring.In, HARNESS_PORTS)


def test_core_inputs_all_toggle():
    """With the harness in front, every input bit of its core ports moves (the
    frame ports are the MAC's: the full build checks that logic is kept)."""
    core, _params = make_core()
    harness = CoreHarness(core.signature)
    m = Module()
    m.submodules.core = core
    m.submodules.harness = harness
    wiring.connect(m, harness.tlp_rx, core.tlp_rx)
    wiring.connect(m, core.tlp_tx, harness.tlp_tx)
    m.d.comb += core.link_up.eq(harness.link_up)

    inputs = {
        "tlp_rx.payload": core.tlp_rx.payload.as_value(),
        "tlp_rx.valid": core.tlp_rx.valid,
        "tlp_tx.ready": core.tlp_tx.ready,
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
    """Flipping any one observed bit (core TLP outputs, MAC events) for one
    cycle changes the LEDs."""
    core = _inspected_core()
    harness = CoreHarness(core.signature, events=MAC_EVENT_BITS)
    observed = harness.observed()
    baseline = _led_trace(harness, observed, 0)
    assert baseline == [0] * OBSERVE_CYCLES
    for bit in range(len(observed)):
        harness = CoreHarness(core.signature, events=MAC_EVENT_BITS)
        assert _led_trace(harness, harness.observed(), 1 << bit) != baseline, f"bit {bit}"


def test_board_top_elaborates():
    """VersaTop elaborates on the Versa platform, takes its pins (the RGMII
    port included) and constrains both clock pins: clk100 and the PHY's RXC.

    Elaboration only: converting the real core to RTLIL takes minutes (see the
    slow tests).
    """
    platform = VersaPlatform()
    top = VersaTop()
    Fragment.get(top, platform)
    used = [("clk100", 0), ("rst", 0), ("uart", 0), ("switch", 0), ("switch", 1),
            ("eth_rgmii", ETH_PORT), *(("led", index) for index in range(LED_COUNT))]
    for name, number in used:
        with pytest.raises(ResourceError, match="already been requested"):
            platform.request(name, number, dir="-")
    assert sorted(hz for _port, hz in platform.iter_port_clock_constraints()) == [100e6, 125e6]
    assert {d: hz / 1e6 for d, hz in top.clock_frequencies.items()} == BOARD_DOMAINS_MHZ


def test_board_top_holds_the_mac():
    """With a stand-in core (fast), the board's RTLIL has the MAC on RGMII port 0:
    ECP5 DDR registers on the port's pins, two PLLs (80 and 125 MHz), the
    MAC's crossings, RXC constrained; the frame ports go to the MAC."""
    plan, top = _versa_plan_with_stand_in_core()
    rtlil, lpf = plan.files["top.il"], plan.files["top.lpf"]
    assert rtlil.count("ODDRX1F") == RGMII_ODDR
    assert rtlil.count("IDDRX1F") == RGMII_IDDR
    assert rtlil.count("EHXPLLL") == 2
    # 100 MHz / CLKI_DIV * CLKFB_DIV, feedback from CLKOP
    assert "CLKOP_DIV" in rtlil and "FREQUENCY_PIN_CLKOP" in rtlil
    assert f'"{ETH_TX_CLK_HZ / 1e6}"' in rtlil and f'"{SYNC_CLK_HZ / 1e6}"' in rtlil
    for site in RGMII0_SITES:
        assert f'SITE "{site}"' in lpf, site
    assert 'FREQUENCY PORT "clk100_0__p" 100000000.0 HZ' in lpf
    assert f'FREQUENCY PORT "eth_rgmii_{ETH_PORT}__rx_clk__io" 125000000.0 HZ' in lpf
    # the MAC's beat FIFOs cross sync <-> eth_tx / eth_rx
    assert "tx_fifo" in rtlil and "rx_fifo" in rtlil and "eth_rx_reset" in rtlil
    assert set(top.clock_nets) == set(BOARD_DOMAINS_MHZ)
    for name in top.clock_nets.values():
        assert f"\\{name}" in rtlil, name


def test_phy_reset_is_held_after_the_board_reset():
    """The PHY's reset pin follows the board reset and stays asserted
    ``cycles`` cycles longer; the timer runs once."""
    cycles = 5
    board_reset = Signal()
    timer = ResetInserter(board_reset)(PhyResetTimer(cycles))
    seen = []

    async def testbench(ctx):
        for reset in [1] * 3 + [0] * (cycles + 4):
            ctx.set(board_reset, reset)
            await ctx.tick()
            seen.append(ctx.get(timer.phy_reset))

    sim = Simulator(timer)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    # registered: the last reset cycle still shows, then `cycles` more, then off
    assert seen == [1] * 3 + [1] * cycles + [0] * 4, seen


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


def test_clock_nets_map_to_domains(tmp_path):
    """nextpnr's clock nets are found by the bit of each domain's kept wire,
    whatever name nextpnr picked; the fmax of each domain is the lowest."""
    netlist = {"modules": {"top": {"netnames": {
        "sync_clock": {"bits": [7]}, "core.clk": {"bits": [7]},
        "eth_tx_clock": {"bits": [9]}, "eth_pll.clk_out": {"bits": [9]},
        "eth_rx_clock": {"bits": [11]}, "eth_rx_reset.async_ff_clk": {"bits": [11]},
        "other": {"bits": [12]}}}}}
    (tmp_path / "top.json").write_text(json.dumps(netlist))
    report = {"fmax": {
        "$glbnet$core.clk": {"achieved": 91.234, "constraint": 80},
        "$glbnet$eth_pll.clk_out": {"achieved": 180.0, "constraint": 125},
        "$glbnet$eth_rx_reset.async_ff_clk": {"achieved": 200.0, "constraint": 125}},
        "utilization": {"DP16KD": {"used": 8, "available": 108}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    nets = _clock_nets_by_bit(tmp_path / "top.json", "top", {
        "sync": "sync_clock", "eth_tx": "eth_tx_clock", "eth_rx": "eth_rx_clock"})
    fmax, clock_nets, utilisation = _parse_report(tmp_path / "report.json",
                                                  BOARD_DOMAINS_MHZ, nets)
    assert fmax == {"sync": 91.23, "eth_tx": 180.0, "eth_rx": 200.0}
    assert clock_nets["eth_rx"] == ["$glbnet$eth_rx_reset.async_ff_clk"]
    assert utilisation == {"DP16KD": [8, 108]}


def test_mac_reference_synthesis(tmp_path):
    """The MAC as the board uses it (counters unread): one DP16KD for the
    transmit FIFO, and fewer flops than with its counters."""
    cells = synth_mac(None, tmp_path, progress=lambda _msg: None)
    assert cells["DP16KD"] == 1
    assert 0 < cells["TRELLIS_FF"] < 32 * len(MacCounter) + 600, cells


def test_full_board_build(tmp_path):
    """Place and route the Versa top: a bitstream, every clock domain constrained
    and met (sync, eth_tx, eth_rx), the MAC on the pins, whole core present."""
    result = build(None, tmp_path, progress=lambda _msg: None)
    assert result["required_mhz"] == BOARD_DOMAINS_MHZ
    assert set(result["fmax_mhz"]) == set(BOARD_DOMAINS_MHZ), result["fmax_mhz"]
    for domain, mhz in BOARD_DOMAINS_MHZ.items():
        entry = result["domains"][domain]
        assert entry["required_mhz"] == mhz
        assert entry["fmax_mhz"] >= mhz and entry["met"], (domain, entry)
        assert entry["nets"], domain
    assert result["timing_met"], result["domains"]
    assert (tmp_path / "top.bit").stat().st_size > 0
    used, total = result["utilisation"]["TRELLIS_COMB"]
    assert 0 < used < total
    assert result["utilisation"]["EHXPLLL"][0] == 2
    board = result["board_cells"]
    assert board["ODDRX1F"] == RGMII_ODDR and board["IDDRX1F"] == RGMII_IDDR
    assert board["DP16KD"] >= result["core_cells"]["DP16KD"] + result["mac_cells"]["DP16KD"]
    assert result["coverage"]["TRELLIS_FF"]["ratio"] >= FF_MIN_RATIO
    assert result["coverage"]["LUT-equivalents"]["ratio"] >= LUT_MIN_RATIO
    # nextpnr constrained the three clocks (the pads' and the PLLs' derived ones)
    log = (tmp_path / "top.tim").read_text()
    assert "constraining clock net 'clk100_0__p' to 100.00 MHz" in log
    assert f"constraining clock net 'eth_rgmii_{ETH_PORT}__rx_clk__io' to 125.00 MHz" in log
    for domain in ("sync", "eth_tx"):         # the PLL outputs
        mhz = BOARD_DOMAINS_MHZ[domain]
        assert f"Derived frequency constraint of {mhz:.1f} MHz for net {domain}_clock" in log


@pytest.mark.parametrize("out_mhz", [70, 75, 80, 100, 125])
def test_pll_dividers_make_the_frequency_within_the_vco_range(out_mhz):
    from boards.pll import VCO_MAX_HZ, VCO_MIN_HZ, pll_dividers
    clki, clkfb, clkop = pll_dividers(100e6, out_mhz * 1e6)
    assert 100e6 / clki * clkfb == out_mhz * 1e6
    assert VCO_MIN_HZ <= out_mhz * 1e6 * clkop <= VCO_MAX_HZ


def test_pll_refuses_what_it_cannot_make():
    from boards.pll import pll_dividers
    with pytest.raises(ValueError):
        pll_dividers(100e6, 1e6)
