"""Board build (boards/): core-only synthesis, who serves each core port, the
PCIe side's crossings, core reset and LEDs, the Ethernet MAC and the PCIe
link on the board, full Versa build.

The core comes from ``hdl.top`` (or the module named by the environment
variable ``VIRTIO_BOARD_CORE_MODULE``, for developing against a stand-in).
"""
import json
import random
import zlib

import pytest
from amaranth.build import ResourceError
from amaranth.hdl import (ClockDomain, Elaboratable, Fragment, Module, ResetInserter,
                          ResetSignal, Signal)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.sim import Simulator

from boards.build import (FF_MIN_RATIO, LUT_MIN_RATIO, CoverageError, _clock_nets_by_bit,
                          _parse_report, block_weight, build, check_coverage, format_blocks,
                          synth_blocks, synth_core, synth_mac, synth_pcie)
from boards.pcie import (BoardPcieLink, CoreResetControl, LinkCrossings,
                         TlpCrossing, free_pcie_pads)
from boards.serdes import PCIE_DOMAIN, PCIE_RX_DOMAIN
from boards.top import (ETH_PORT, ETH_RX_CLK_HZ, ETH_TX_CLK_HZ, LED_COUNT, LINK_PORTS,
                        LTSSM_LEDS, MAC_ACTIVITY_BITS, MAC_EVENT_BITS, MAC_PORTS,
                        RESET_SYNC_STAGES, SWITCH_LINK_UP, SWITCH_PORTS, SYNC_CLK_HZ, BoardMac,
                        Led, PhyResetTimer, StatusLeds, VersaTop, mac_events, make_core)
from boards.versa import (PCIE_REFCLK_RESOURCE, PCIE_RESOURCE, VersaPlatform,
                          request_pcie_pads)
from hdl.eth.frame import FCS_LENGTH, PREAMBLE_LENGTH, PREAMBLE_OCTET, SFD_OCTET
from hdl.eth.gmii import ETH_RX_DOMAIN, ETH_TX_DOMAIN
from hdl.eth.mac import EthernetMac, MacCounter
from hdl.eth.rgmii import RESET_SYNC_STAGES as RX_RESET_SYNC_STAGES
from hdl.pcie.tlp import TlpBeat
from hdl.phy.ltssm import LtssmState
from hdl.phy.pipe import PIPE_CLK_HZ
from tests.amaranth_sim import beats


#: A core-only synthesis below this many LUT4s means the core was gutted.
MIN_CORE_LUT4 = 200
#: The PCIe side alone (measured: 3471 LUT4, 2687 FF): well below means gutted.
MIN_PCIE_LUT4 = 1500
MIN_PCIE_FF = 1000
SEED = 0x5EED
#: Beats sent through a TLP crossing in simulation.
CROSSING_BEATS = 200
#: Cycles for a level or a beat to cross between sync and pcie, with margin.
SETTLE_CYCLES = 24
#: LED hold time (cycles) in the LED simulation (the board's is 50 ms).
LED_TEST_HOLD = 6
#: Every clock domain of the board and its requirement (MHz): the core's
#: PLL, the MAC's GMII clocks, the DCU's transmit and recovered clocks.
BOARD_DOMAINS_MHZ = {"sync": SYNC_CLK_HZ / 1e6, "eth_tx": ETH_TX_CLK_HZ / 1e6,
                     "eth_rx": ETH_RX_CLK_HZ / 1e6, PCIE_DOMAIN: PIPE_CLK_HZ / 1e6,
                     PCIE_RX_DOMAIN: PIPE_CLK_HZ / 1e6}
#: Clocks constrained on pins (MHz): clk100, the PCIe REFCLK, the PHY's RXC.
PORT_CLOCKS_MHZ = [100, 100, 125]
#: RGMII DDR registers: TXC, TX_CTL, TXD[4] out; RX_CTL, RXD[4] in (RXC is the clock).
RGMII_ODDR = 6
RGMII_IDDR = 5
#: `test_mac_is_reset_with_the_core`: frame lengths (no padding: at least
#: 60 octets); octet times for the wire and the loopback to empty; the
#: receive clock's phase against the transmit clock, in periods.
MAC_TEST_FRAME_MIN = 60
MAC_TEST_FRAME_MAX = 200
MAC_TEST_DRAIN_OCTETS = 2 * (MAC_TEST_FRAME_MAX + 40)
MAC_TEST_RX_PHASE = 0.25
#: Core cycles a frame has been on the wire when the core reset cuts it
#: (fewer than its preamble and shortest frame take at 125 MHz).
MAC_TEST_CUT_CYCLES = 20
#: Ethernet clocks (Hz) `test_mac_is_reset_with_the_core` runs at: the
#: board's, and a fifth of it (the MAC runs at any clock) against the same
#: core clock, so that the release of the resets is also checked with the
#: core clock faster than the Ethernet side's.
MAC_TEST_ETH_HZ = (ETH_TX_CLK_HZ, ETH_TX_CLK_HZ / 5)
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


class _Adder(wiring.Component):
    def __init__(self, width):
        super().__init__({"a": In(width), "b": In(width), "s": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.s.eq(self.a + self.b)
        return m


class _TwoAdders(wiring.Component):
    """A 32-bit and an 8-bit adder, each a block; its own logic: an XOR."""
    a: In(32)
    b: In(32)
    s: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.wide = wide = _Adder(32)
        m.submodules.narrow = narrow = _Adder(8)
        m.d.comb += [wide.a.eq(self.a), wide.b.eq(self.b), narrow.a.eq(self.a[:8]),
                     narrow.b.eq(self.b[8:16]), self.s.eq(wide.s ^ narrow.s)]
        return m


def test_blocks_are_counted_each_on_its_own_and_ranked(tmp_path):
    blocks = synth_blocks(_TwoAdders(), name="pair", out_dir=tmp_path, progress=lambda _msg: None)
    names = [block for block, _ in blocks]
    assert set(names) == {"pair", "wide", "narrow"}, names
    cells = dict(blocks)
    # a 32-bit registered adder: 16 CCU2C and 32 flops; the 8-bit one a quarter
    assert cells["wide"].get("CCU2C", 0) == 4 * cells["narrow"].get("CCU2C", 0) > 0, cells
    assert cells["wide"]["TRELLIS_FF"] == 32 and cells["narrow"]["TRELLIS_FF"] == 8, cells
    assert names.index("wide") < names.index("narrow")
    assert [block_weight(c) for _, c in blocks] == sorted((block_weight(c) for _, c in blocks),
                                                          reverse=True)
    table = format_blocks(blocks)
    assert table.splitlines()[1].split()[0] == names[0] and "total" in table


def test_every_core_port_is_served():
    """Each core port belongs to the PCIe link, the MAC or a switch: a new core
    port must be given to one of them (else synthesis would remove its
    logic). The PCIe side's TLP ports fit the core's (`wiring.connect`
    checks the signatures)."""
    core = _inspected_core()
    served = (LINK_PORTS, MAC_PORTS, SWITCH_PORTS)
    assert set(core.signature.members) == set().union(*served)
    assert sum(len(ports) for ports in served) == len(set().union(*served))
    pcie = BoardPcieLink(*free_pcie_pads(), sync_clk_hz=SYNC_CLK_HZ)
    Fragment.get(pcie, None)
    m = Module()
    wiring.connect(m, pcie.tlp_rx, core.tlp_rx)
    wiring.connect(m, core.tlp_tx, pcie.tlp_tx)
    Fragment.get(m, None)
    mac = EthernetMac()
    Fragment.get(mac, None)
    assert len(mac_events(mac)) == MAC_EVENT_BITS


def test_tlp_crossing_keeps_every_beat_in_order():
    """Beats cross from 125 to 70 MHz and back with random valid/ready, none
    lost, duplicated or reordered; a write-domain reset empties the crossing."""
    rng = random.Random(SEED)
    width = TlpBeat().size
    for w_hz, r_hz in ((125e6, 70e6), (70e6, 125e6)):
        dut = TlpCrossing(w_domain="w", r_domain="r")
        m = Module()
        m.domains.w = ClockDomain("w")
        m.domains.r = ClockDomain("r")
        m.submodules.dut = dut
        beats = [rng.getrandbits(width) for _ in range(CROSSING_BEATS)]
        received = []

        async def writer(ctx):
            for beat in beats:
                ctx.set(dut.w.payload.as_value(), beat)
                ctx.set(dut.w.valid, 1)
                await ctx.tick("w").until(dut.w.ready)
                ctx.set(dut.w.valid, 0)
                if rng.random() < 0.3:
                    await ctx.tick("w").repeat(rng.randrange(1, 4))

        async def reader(ctx):
            while len(received) < len(beats):
                ready = rng.random() < 0.7
                ctx.set(dut.r.ready, ready)
                _, _, valid, payload = await ctx.tick("r").sample(dut.r.valid,
                                                                   dut.r.payload.as_value())
                if ready and valid:
                    received.append(payload)

        sim = Simulator(m)
        sim.add_clock(1 / w_hz, domain="w")
        sim.add_clock(1 / r_hz, domain="r")
        sim.add_testbench(writer)
        sim.add_testbench(reader)
        sim.run()
        assert received == beats, (w_hz, r_hz)


def test_tlp_crossing_empties_on_a_write_side_reset():
    """What a link reset leaves in a crossing is gone after it: a reset of the
    write domain empties the FIFO, the read side sees nothing more."""
    dut = TlpCrossing(w_domain="w", r_domain="r")
    m = Module()
    m.domains.w = cd_w = ClockDomain("w")
    m.domains.r = ClockDomain("r")
    m.submodules.dut = dut
    seen = []

    async def testbench(ctx):
        ctx.set(dut.w.valid, 1)
        ctx.set(dut.w.payload.first, 1)
        await ctx.tick("w").repeat(4)
        ctx.set(dut.w.valid, 0)
        ctx.set(cd_w.rst, 1)
        await ctx.delay(3 / 125e6)      # ticks of a domain in reset raise DomainReset
        ctx.set(cd_w.rst, 0)
        await ctx.tick("r").repeat(12)
        for _ in range(8):
            await ctx.tick("r")
            seen.append(ctx.get(dut.r.valid))

    sim = Simulator(m)
    sim.add_clock(1 / 125e6, domain="w")
    sim.add_clock(1 / 70e6, domain="r")
    sim.add_testbench(testbench)
    sim.run()
    assert seen == [0] * 8


def test_link_crossings_hold_tlps_for_the_core_and_drop_stale_ones():
    """A TLP the link delivers before DL_Up (FC_INIT2, section 3.4.2) waits
    in the crossing until the core leaves reset; what is in a crossing when
    the link goes down (LinkUp low, DL_Down) never comes out after it."""
    dut = LinkCrossings()
    m = Module()
    m.domains.sync = ClockDomain("sync")
    m.domains.pcie = ClockDomain("pcie")
    m.submodules.dut = dut
    results = {}

    async def push(ctx, stream, domain, beat):
        ctx.set(stream.payload.as_value(), beat)
        ctx.set(stream.valid, 1)
        await ctx.tick(domain).until(stream.ready)
        ctx.set(stream.valid, 0)

    async def collect(ctx, stream, domain, cycles):
        beats = []
        for _ in range(cycles):
            _, _, valid, ready, payload = await ctx.tick(domain).sample(
                stream.valid, stream.ready, stream.payload.as_value())
            if valid and ready:
                beats.append(payload)
        return beats

    async def testbench(ctx):
        ctx.set(dut.core_rx.ready, 1)
        ctx.set(dut.link_tx.ready, 1)
        # FC_INIT2: LinkUp, not DL_Up, core in reset; the link delivers a TLP
        ctx.set(dut.link_up, 1)
        ctx.set(dut.core_reset, 1)
        await ctx.tick("sync").repeat(SETTLE_CYCLES)
        for beat in (0x11, 0x22):
            await push(ctx, dut.link_rx, "pcie", beat)
        results["held"] = await collect(ctx, dut.core_rx, "sync", SETTLE_CYCLES)
        # DL_Up, the core leaves reset: the TLP comes out whole
        ctx.set(dut.dl_up, 1)
        ctx.set(dut.core_reset, 0)
        results["released"] = await collect(ctx, dut.core_rx, "sync", SETTLE_CYCLES)
        # the core sends: the TLP reaches the link
        await push(ctx, dut.core_tx, "sync", 0x33)
        results["sent"] = await collect(ctx, dut.link_tx, "pcie", SETTLE_CYCLES)
        # stale beats both ways, then the link goes down and comes back
        ctx.set(dut.core_rx.ready, 0)
        ctx.set(dut.link_tx.ready, 0)
        await push(ctx, dut.link_rx, "pcie", 0x44)
        await push(ctx, dut.core_tx, "sync", 0x55)
        await ctx.tick("sync").repeat(SETTLE_CYCLES)
        ctx.set(dut.link_up, 0)
        ctx.set(dut.dl_up, 0)
        await ctx.tick("pcie")
        ctx.set(dut.core_reset, 1)
        await ctx.tick("sync").repeat(SETTLE_CYCLES)
        ctx.set(dut.link_up, 1)
        await ctx.tick("sync").repeat(SETTLE_CYCLES)
        ctx.set(dut.dl_up, 1)
        ctx.set(dut.core_reset, 0)
        ctx.set(dut.core_rx.ready, 1)
        results["stale_rx"] = await collect(ctx, dut.core_rx, "sync", SETTLE_CYCLES)
        ctx.set(dut.link_tx.ready, 1)
        results["stale_tx"] = await collect(ctx, dut.link_tx, "pcie", SETTLE_CYCLES)

    sim = Simulator(m)
    sim.add_clock(1 / SYNC_CLK_HZ, domain="sync")
    sim.add_clock(1 / PIPE_CLK_HZ, domain="pcie")
    sim.add_testbench(testbench)
    sim.run()
    assert results == {"held": [], "released": [0x11, 0x22], "sent": [0x33],
                       "stale_rx": [], "stale_tx": []}, results


def test_core_reset_follows_perst_serdes_and_dl_up():
    """``core_reset`` is 1 out of reset, and while PERST# is asserted, the
    serdes's transmit side is not ready or the link is not DL_Up (section
    2.9.1); 0 only with all three good, a few ``sync`` cycles later."""
    dut = CoreResetControl()
    m = Module()
    m.domains.sync = ClockDomain("sync")
    m.submodules.dut = dut
    settle = CoreResetControl.FLOPS + 2
    seen = {}

    async def testbench(ctx):
        assert ctx.get(dut.core_reset) == 1
        for name, (perst, tx_ready, dl_up) in {
                "perst": (1, 1, 1), "tx_not_ready": (0, 0, 1), "dl_down": (0, 1, 0),
                "all_good": (0, 1, 1), "dl_down_again": (0, 1, 0)}.items():
            ctx.set(dut.perst, perst)
            ctx.set(dut.tx_ready, tx_ready)
            ctx.set(dut.dl_up, dl_up)
            await ctx.tick().repeat(settle)
            seen[name] = ctx.get(dut.core_reset)

    sim = Simulator(m)
    sim.add_clock(1 / SYNC_CLK_HZ)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == {"perst": 1, "tx_not_ready": 1, "dl_down": 1, "all_good": 0,
                    "dl_down_again": 1}, seen


def _leds_after(setup, hold=LED_TEST_HOLD, cycles=2):
    """LED values ``cycles`` cycles after ``setup(ctx, dut)`` (one cycle of
    inputs, then inputs back to 0 except what ``setup`` leaves set)."""
    dut = StatusLeds(hold)
    trace = []

    async def testbench(ctx):
        await setup(ctx, dut)
        for _ in range(cycles):
            await ctx.tick()
            trace.append(ctx.get(dut.leds))

    sim = Simulator(dut)
    sim.add_clock(1 / SYNC_CLK_HZ)
    sim.add_testbench(testbench)
    sim.run()
    return trace


def test_status_leds_show_the_link_and_the_mac():
    """The LED map of boards/top.py: SERDES ready, DL_Up, LTSSM state in
    binary, Ethernet activity held, errors held; every MAC event bit reaches
    an LED (so its crossing stays in the build)."""
    async def l0(ctx, dut):
        ctx.set(dut.serdes_ready, 1)
        ctx.set(dut.dl_up, 1)
        ctx.set(dut.state, LtssmState.L0)
    leds = _leds_after(l0)[-1]
    assert leds & (1 << Led.SERDES_READY) and leds & (1 << Led.DL_UP)
    assert (leds >> Led.LTSSM) & ((1 << LTSSM_LEDS) - 1) == LtssmState.L0
    assert not leds & (1 << Led.ETH_ACTIVITY | 1 << Led.ERROR)

    async def pcie_error(ctx, dut):
        ctx.set(dut.pcie_error, 1)
    assert _leds_after(pcie_error)[-1] == 1 << Led.ERROR

    for bit in range(MAC_EVENT_BITS):
        async def event(ctx, dut, bit=bit):
            ctx.set(dut.mac_events, 1 << bit)
            await ctx.tick()
            ctx.set(dut.mac_events, 0)
        trace = _leds_after(event, cycles=LED_TEST_HOLD + 2)
        led = Led.ETH_ACTIVITY if bit in MAC_ACTIVITY_BITS else Led.ERROR
        # held for the hold time, then off
        assert trace[LED_TEST_HOLD - 2] == 1 << led, (bit, trace)
        assert trace[-1] == 0, (bit, trace)


def test_board_top_elaborates():
    """VersaTop elaborates on the Versa platform, takes its pins (the PCIe edge
    and its REFCLK, the RGMII port, the link_up switch, the LEDs) and
    constrains every clock pin: clk100, the PCIe REFCLK and the PHY's RXC.

    Elaboration only: converting the real core to RTLIL takes minutes (see the
    slow tests).
    """
    platform = VersaPlatform()
    top = VersaTop()
    Fragment.get(top, platform)
    used = [("clk100", 0), ("rst", 0), ("switch", SWITCH_LINK_UP), (PCIE_RESOURCE, 0),
            (PCIE_REFCLK_RESOURCE, 0), ("eth_rgmii", ETH_PORT),
            *(("led", index) for index in range(LED_COUNT))]
    for name, number in used:
        with pytest.raises(ResourceError, match="already been requested"):
            platform.request(name, number, dir="-")
    assert sorted(hz / 1e6 for _port, hz in platform.iter_port_clock_constraints()) \
        == PORT_CLOCKS_MHZ
    assert {d: hz / 1e6 for d, hz in top.clock_frequencies.items()} == BOARD_DOMAINS_MHZ


def test_board_top_holds_the_mac_and_the_link():
    """With a stand-in core (fast), the board's RTLIL has the MAC on RGMII port 0
    (ECP5 DDR registers on the port's pins, the MAC's crossings, RXC
    constrained), two PLLs (70 and 125 MHz), and the PCIe side: one DCUA and
    one EXTREFB, the DCU's three clocks constrained on their nets, the two TLP
    crossings and the error crossing; every domain has a kept clock probe
    for the build report."""
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
    # the PCIe side: the DCU and its reference clock input, once each
    assert rtlil.count("cell \\DCUA ") == 1 and rtlil.count("cell \\EXTREFB ") == 1
    assert 'FREQUENCY PORT "pcie_refclk_0__p" 100000000.0 HZ' in lpf
    link = VersaTop.PCIE_LINK
    for net, hz in (("pcie_refclk", 100e6), ("pcie_tx_pclk", 125e6), ("pcie_rx_pclk", 125e6)):
        assert f'FREQUENCY NET "{link}.serdes.{net}" {hz} HZ' in lpf, net
    assert "rx_crossing" in rtlil and "tx_crossing" in rtlil
    # the link's correctable errors cross into sync for the core (Device Status);
    # the MAC's core side runs in its own domain, reset with the core
    assert "error_crossing" in rtlil and "link_correctable_error" in rtlil
    assert "mac_core" in rtlil
    assert set(top.clock_nets) == set(BOARD_DOMAINS_MHZ)
    for name in top.clock_nets.values():
        leaf = name.rsplit(".", 1)[-1]
        assert f"\\{leaf}" in rtlil, name
    # the coverage check's accounting: the top's own flops, now that it is elaborated
    assert top.pcie_link is not None and top.board_flops > 0


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


class _MacUnderCoreReset(Elaboratable):
    """`BoardMac` wired as `VersaTop` wires it, for simulation: ``sync`` reset
    by ``board_reset``; ``eth_tx`` by a `ResetSynchronizer` on
    ``board_reset`` or the MAC's ``eth_reset_request``; ``eth_rx``'s
    following ``eth_tx``'s (as `add_rx_domain` does); the GMII looped back
    from transmit to receive (no RGMII)."""

    def __init__(self):
        self.board_mac = BoardMac(EthernetMac())
        self.board_reset = Signal(init=1)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.eth_tx = ClockDomain(ETH_TX_DOMAIN)
        m.domains.eth_rx = ClockDomain(ETH_RX_DOMAIN)
        m.submodules.board_mac = mac = self.board_mac
        m.d.comb += cd_sync.rst.eq(self.board_reset)
        m.submodules.eth_tx_rst = ResetSynchronizer(
            self.board_reset | mac.eth_reset_request, domain=ETH_TX_DOMAIN, stages=RESET_SYNC_STAGES)
        m.submodules.eth_rx_rst = ResetSynchronizer(
            ResetSignal(ETH_TX_DOMAIN), domain=ETH_RX_DOMAIN, stages=RX_RESET_SYNC_STAGES)
        m.d.comb += [mac.gmii_rx.rxd.eq(mac.gmii_tx.txd),
                     mac.gmii_rx.rx_dv.eq(mac.gmii_tx.tx_en),
                     mac.gmii_rx.rx_er.eq(mac.gmii_tx.tx_er)]
        return m


def _wire_frame(burst):
    """The frame in a GMII burst [(octet, tx_er)] if it has the preamble, the
    SFD, no tx_er and a good FCS (802.3 clause 3.2.9); else None."""
    octets = bytes(octet for octet, _ in burst)
    start = bytes([PREAMBLE_OCTET] * PREAMBLE_LENGTH + [SFD_OCTET])
    if any(error for _, error in burst) or not octets.startswith(start):
        return None
    body = octets[len(start):]
    frame, fcs = body[:-FCS_LENGTH], body[-FCS_LENGTH:]
    if len(frame) < 1 or zlib.crc32(frame) != int.from_bytes(fcs, "little"):
        return None
    return frame


@pytest.mark.parametrize("eth_hz", MAC_TEST_ETH_HZ, ids=lambda hz: f"eth{hz / 1e6:g}MHz")
def test_mac_is_reset_with_the_core(eth_hz):
    """A core reset cuts frames in the MAC (`BoardMac`): half a frame in the
    transmit FIFO (the core reset while sending it, store-and-forward: no
    token yet), a frame on the wire, and one more half frame under a
    one-cycle core reset. None of them reaches the wire with a good FCS or
    the core's receive side as a good frame; the whole frames before and
    after each reset do, once each, in order (the GMII is looped back)."""
    rng = random.Random(SEED)
    frames = {name: rng.randbytes(rng.randrange(MAC_TEST_FRAME_MIN, MAC_TEST_FRAME_MAX))
              for name in "ABCDEFG"}
    dut = _MacUnderCoreReset()
    mac = dut.board_mac
    drain = round(MAC_TEST_DRAIN_OCTETS * SYNC_CLK_HZ / eth_hz)     # sync cycles
    bursts = []          # on the wire: [(octet, tx_er)] per tx_en burst
    received = []        # at the core: (frame, abort)

    async def send(ctx, frame, *, beats_only=None):
        for index, (data, keep, last) in enumerate(beats(frame)):
            if beats_only is not None and index == beats_only:
                break
            ctx.set(mac.tx.payload, {"data": data, "keep": keep, "last": last})
            ctx.set(mac.tx.valid, 1)
            await ctx.tick().until(mac.tx.ready)
            ctx.set(mac.tx.valid, 0)

    async def wait(ctx, cycles):        # tick().repeat() refuses to run through a reset
        for _ in range(cycles):
            await ctx.tick()

    async def core_reset(ctx, cycles):
        ctx.set(mac.core_reset, 1)
        await wait(ctx, cycles)
        ctx.set(mac.core_reset, 0)

    async def core(ctx):
        ctx.set(mac.core_reset, 1)
        await wait(ctx, 10)
        ctx.set(dut.board_reset, 0)
        await wait(ctx, 10)
        ctx.set(mac.core_reset, 0)
        await send(ctx, frames["A"])
        await wait(ctx, drain)                            # A on the wire and back
        half = len(beats(frames["B"])) // 2
        await send(ctx, frames["B"], beats_only=half)     # the core resets mid-frame
        await core_reset(ctx, 5)
        await send(ctx, frames["C"])
        await wait(ctx, drain)
        await send(ctx, frames["D"])
        sent_before = len(bursts)
        while len(bursts) == sent_before and not ctx.get(mac.gmii_tx.tx_en):
            await ctx.tick()
        await wait(ctx, MAC_TEST_CUT_CYCLES)              # D is on the wire: cut it
        assert ctx.get(mac.gmii_tx.tx_en)
        await core_reset(ctx, 3)
        await send(ctx, frames["E"])
        await wait(ctx, drain)
        await send(ctx, frames["F"], beats_only=half)
        await core_reset(ctx, 1)                          # a one-cycle reset
        await send(ctx, frames["G"])
        await wait(ctx, drain)

    async def wire(ctx):
        burst = []
        while True:
            _, _, tx_en, txd, tx_er = await ctx.tick(ETH_TX_DOMAIN).sample(
                mac.gmii_tx.tx_en, mac.gmii_tx.txd, mac.gmii_tx.tx_er)
            if tx_en:
                burst.append((txd, tx_er))
            elif burst:
                bursts.append(burst)
                burst = []

    async def core_rx(ctx):
        frame = bytearray()
        ctx.set(mac.rx.ready, 1)
        while True:
            _, _, valid, payload, abort, in_reset = await ctx.tick().sample(
                mac.rx.valid, mac.rx.payload, mac.rx_abort, mac.core_reset)
            if in_reset:                 # the core's receive buffer is reset too
                frame = bytearray()
            if not valid:
                continue
            frame += payload.data.to_bytes(4, "little")[:payload.keep.bit_length()]
            if payload.last:
                received.append((bytes(frame), abort))
                frame = bytearray()

    sim = Simulator(dut)
    sim.add_clock(1 / SYNC_CLK_HZ)
    sim.add_clock(1 / eth_hz, domain=ETH_TX_DOMAIN)
    sim.add_clock(1 / eth_hz, domain=ETH_RX_DOMAIN, phase=MAC_TEST_RX_PHASE / eth_hz)
    sim.add_testbench(core)
    sim.add_testbench(wire, background=True)
    sim.add_testbench(core_rx, background=True)
    sim.run()

    good = [_wire_frame(burst) for burst in bursts]
    whole = [frames[name] for name in "ACEG"]
    assert [frame for frame in good if frame is not None] == whole, \
        [len(frame) if frame else None for frame in good]
    assert frames["D"] not in good and len(bursts) == len(whole) + 1   # D went out, cut
    assert [frame for frame, abort in received if not abort] == whole


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
    assert check_coverage(board_ok, core, board_flops=150)["TRELLIS_FF"]["ratio"] >= 1
    lost_ram = dict(board_ok, DP16KD=3)
    with pytest.raises(CoverageError, match="DP16KD"):
        check_coverage(lost_ram, core, board_flops=150)
    lost_luts = dict(board_ok, LUT4=int(LUT_MIN_RATIO * 1000) - 100)
    with pytest.raises(CoverageError, match="LUT"):
        check_coverage(lost_luts, core, board_flops=150)
    # FFs the board top adds do not count towards the core.
    with pytest.raises(CoverageError, match="TRELLIS_FF"):
        check_coverage(dict(board_ok, TRELLIS_FF=800), core, board_flops=150)


def test_clock_nets_map_to_domains(tmp_path):
    """nextpnr's clock nets are found by the bit of each domain's kept wire,
    whatever name nextpnr picked; the fmax of each domain is the lowest."""
    netlist = {"modules": {"top": {"netnames": {
        "sync_clock": {"bits": [7]}, "core.clk": {"bits": [7]},
        "eth_tx_clock": {"bits": [9]}, "eth_pll.clk_out": {"bits": [9]},
        "eth_rx_clock": {"bits": [11]}, "eth_rx_reset.async_ff_clk": {"bits": [11]},
        "pcie_link.pcie_clock": {"bits": [13]}, "pcie_link.pcie_clk": {"bits": [13]},
        "pcie_link.serdes.pcie_rx_clock": {"bits": [15]},
        "pcie_link.serdes.pcie_rx_clk": {"bits": [15]},
        "other": {"bits": [12]}}}}}
    (tmp_path / "top.json").write_text(json.dumps(netlist))
    report = {"fmax": {
        "$glbnet$core.clk": {"achieved": 91.234, "constraint": 80},
        "$glbnet$eth_pll.clk_out": {"achieved": 180.0, "constraint": 125},
        "$glbnet$eth_rx_reset.async_ff_clk": {"achieved": 200.0, "constraint": 125},
        # two more 125 MHz clocks: told apart by their bits, not their constraint
        "$glbnet$pcie_link.pcie_clk": {"achieved": 130.0, "constraint": 125},
        "$glbnet$pcie_link.serdes.pcie_rx_clk": {"achieved": 210.0, "constraint": 125}},
        "utilization": {"DP16KD": {"used": 8, "available": 108}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    nets = _clock_nets_by_bit(tmp_path / "top.json", "top", {
        "sync": "sync_clock", "eth_tx": "eth_tx_clock", "eth_rx": "eth_rx_clock",
        PCIE_DOMAIN: "pcie_link.pcie_clock", PCIE_RX_DOMAIN: "pcie_link.serdes.pcie_rx_clock"})
    fmax, clock_nets, utilisation = _parse_report(tmp_path / "report.json",
                                                  BOARD_DOMAINS_MHZ, nets)
    assert fmax == {"sync": 91.23, "eth_tx": 180.0, "eth_rx": 200.0, PCIE_DOMAIN: 130.0,
                    PCIE_RX_DOMAIN: 210.0}
    assert clock_nets["eth_rx"] == ["$glbnet$eth_rx_reset.async_ff_clk"]
    assert utilisation == {"DP16KD": [8, 108]}


def test_mac_reference_synthesis(tmp_path):
    """The MAC as the board uses it (counters unread): one DP16KD for the
    transmit FIFO, and fewer flops than with its counters."""
    cells = synth_mac(None, tmp_path, progress=lambda _msg: None)
    assert cells["DP16KD"] == 1
    assert 0 < cells["TRELLIS_FF"] < 32 * len(MacCounter) + 600, cells


def test_pcie_reference_synthesis(tmp_path):
    """The PCIe side alone (the coverage reference): the DCU and its REFCLK
    input, block RAM for the data link layer's buffers, and a real link's
    worth of logic (the LTSSM, scrambler, LCRC, replay and flow control)."""
    cells = synth_pcie(tmp_path, progress=lambda _msg: None)
    assert cells["DCUA"] == 1 and cells["EXTREFB"] == 1 and cells["DCCA"] == 2
    assert cells["DP16KD"] >= 2, cells
    assert cells.get("LUT4", 0) >= MIN_PCIE_LUT4 and cells["TRELLIS_FF"] >= MIN_PCIE_FF, cells


def test_full_board_build(tmp_path):
    """Place and route the Versa top: a bitstream, every clock domain constrained
    and met (sync, eth_tx, eth_rx, pcie, pcie_rx), the MAC on the pins, the
    DCU in the placed design, whole core, MAC and PCIe link present."""
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
    assert result["utilisation"]["DCUA"][0] == 1, result["utilisation"]
    assert result["utilisation"]["EXTREFB"][0] == 1, result["utilisation"]
    board = result["board_cells"]
    assert board["ODDRX1F"] == RGMII_ODDR and board["IDDRX1F"] == RGMII_IDDR
    assert board["DCUA"] == 1
    assert board["DP16KD"] >= sum(result[f"{part}_cells"]["DP16KD"]
                                  for part in ("core", "mac", "pcie"))
    assert result["coverage"]["TRELLIS_FF"]["ratio"] >= FF_MIN_RATIO
    assert result["coverage"]["LUT-equivalents"]["ratio"] >= LUT_MIN_RATIO
    # nextpnr constrained every clock (the pads', the PLLs' derived ones, the
    # DCU's on its nets and derived through the DCCAs), none left at 12 MHz
    log = (tmp_path / "top.tim").read_text()
    assert "constraining clock net 'clk100_0__p' to 100.00 MHz" in log
    assert f"constraining clock net 'eth_rgmii_{ETH_PORT}__rx_clk__io' to 125.00 MHz" in log
    for domain in ("sync", "eth_tx"):         # the PLL outputs
        mhz = BOARD_DOMAINS_MHZ[domain]
        assert f"Derived frequency constraint of {mhz:.1f} MHz for net {domain}_clock" in log
    link = VersaTop.PCIE_LINK
    assert f"constraining clock net '{link}.serdes.pcie_tx_pclk' to 125.00 MHz" in log
    assert f"constraining clock net '{link}.serdes.pcie_rx_pclk' to 125.00 MHz" in log
    assert "12.00 MHz" not in log


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
