"""Rgmii: the RGMII v2.0 pin encoding, checked against a Python model of the
pins (not against the block's own receiver), and the ECP5 build path."""
import random

from amaranth.hdl import (ClockDomain, ClockSignal, DomainRenamer, Elaboratable, Module,
                          ResetSignal)
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hdl.eth.mac import EthernetMac
from hdl.eth.rgmii import Rgmii, RgmiiSimPads, add_rx_domain

PERIOD = 8e-9           # 125 MHz
QUARTER = PERIOD / 4    # the 90-degree RGMII clock delay, 2 ns
NIBBLE = 4
IDLE = (0, 0, 0)
RESET_CYCLES = 4


class Bench(Elaboratable):
    """Rgmii on simulation pads; RXC comes from the ``phy`` domain."""

    def __init__(self):
        self.pads = RgmiiSimPads()
        self.dut = Rgmii(self.pads)

    def elaborate(self, platform):
        m = Module()
        m.domains.eth_tx = ClockDomain()
        m.domains.phy = ClockDomain()
        m.submodules.dut = self.dut
        add_rx_domain(m, self.dut, reset=ResetSignal("eth_tx"))
        m.d.comb += self.pads.rx_clk.i.eq(ClockSignal("phy"))
        return m


def random_symbols(rng, count):
    """(octet, enable, error) triples: bursts with the odd error, idles between."""
    out = []
    while len(out) < count:
        out += [(rng.randrange(256), 1, int(rng.random() < 0.1)) for _ in range(rng.randint(1, 20))]
        out += [(rng.randrange(256) * (rng.random() < 0.5), 0, 0)
                for _ in range(rng.randint(1, 4))]
    return out[:count]


def align(seen, sent):
    """The offsets at which ``sent`` appears whole in ``seen``."""
    return [d for d in range(len(seen) - len(sent) + 1) if seen[d:d + len(sent)] == sent]


def run(bench, *processes):
    sim = Simulator(bench)
    sim.add_clock(PERIOD, phase=PERIOD / 2, domain="eth_tx")
    sim.add_clock(PERIOD, phase=PERIOD / 2 + QUARTER, domain="phy")
    for process in processes:
        sim.add_testbench(process)
    sim.run()


def test_transmit_pins():
    """TXD low nibble on the high half of TXC, high nibble on the low half;
    TX_CTL = tx_en, then tx_en XOR tx_er (RGMII v2.0 section 3)."""
    rng = random.Random(1)
    sent = random_symbols(rng, 300)
    bench = Bench()
    dut, pads = bench.dut, bench.pads
    seen = []

    async def drive_and_sample(ctx):
        for index in range(len(sent) + 4):
            await ctx.tick("eth_tx")
            octet, en, er = sent[index] if index < len(sent) else IDLE
            ctx.set(dut.gmii_tx.txd, octet)
            ctx.set(dut.gmii_tx.tx_en, en)
            ctx.set(dut.gmii_tx.tx_er, er)
            await ctx.delay(QUARTER)              # middle of the high half
            clk_hi, ctl_hi, data_hi = (ctx.get(pads.tx_clk.o), ctx.get(pads.tx_ctl.o),
                                       ctx.get(pads.tx_data.o))
            await ctx.delay(PERIOD / 2)           # middle of the low half
            clk_lo, ctl_lo, data_lo = (ctx.get(pads.tx_clk.o), ctx.get(pads.tx_ctl.o),
                                       ctx.get(pads.tx_data.o))
            assert (clk_hi, clk_lo) == (1, 0), "TXC must be high, then low, each cycle"
            seen.append((data_lo << NIBBLE | data_hi, ctl_hi, ctl_hi ^ ctl_lo))

    run(bench, drive_and_sample)
    assert align(seen, sent) == [1], "every symbol on the pins, one cycle after it was given"


def test_receive_pins():
    """A PHY model drives the RX pins, each half-cycle centred on RXC's edges
    (the PHY's 2 ns delay); gmii_rx must decode every symbol."""
    rng = random.Random(2)
    sent = random_symbols(rng, 300)
    bench = Bench()
    dut, pads = bench.dut, bench.pads
    seen = []
    done = []

    async def phy(ctx):
        await ctx.tick("phy").repeat(RESET_CYCLES)     # eth_rx leaves its reset synchroniser
        await ctx.delay(PERIOD - QUARTER)         # a quarter before the next rising edge
        for octet, dv, er in sent + [IDLE] * 4:
            ctx.set(pads.rx_data.i, octet & 0xF)
            ctx.set(pads.rx_ctl.i, dv)
            await ctx.delay(PERIOD / 2)           # a quarter before the falling edge
            ctx.set(pads.rx_data.i, octet >> NIBBLE)
            ctx.set(pads.rx_ctl.i, dv ^ er)
            await ctx.delay(PERIOD / 2)
        done.append(True)

    async def monitor(ctx):
        while not done:
            _, _, rxd, dv, er = await ctx.tick("eth_rx").sample(
                dut.gmii_rx.rxd, dut.gmii_rx.rx_dv, dut.gmii_rx.rx_er)
            seen.append((rxd, dv, er))

    run(bench, phy, monitor)
    assert len(align(seen, sent)) == 1


def _versa_plan(ports):
    from boards.versa import VersaPlatform

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.domains.sync = ClockDomain()
            m.domains.eth_tx = ClockDomain()
            for port in ports:
                rx_domain = f"eth{port}_rx"
                pads = platform.request("eth_rgmii", port, dir="-")
                m.submodules[f"rgmii{port}"] = rgmii = Rgmii(pads, rx_domain=rx_domain)
                add_rx_domain(m, rgmii, reset=ResetSignal("eth_tx"))
                m.submodules[f"mac{port}"] = mac = DomainRenamer({"eth_rx": rx_domain})(
                    EthernetMac())
                wiring.connect(m, mac.gmii_tx, rgmii.gmii_tx)
                wiring.connect(m, rgmii.gmii_rx, mac.gmii_rx)
            return m

    return VersaPlatform().prepare(Top(), name="eth")


def test_versa_build_uses_ecp5_ddr_registers():
    """With the Versa's pads, both ports elaborate to ODDRX1F/IDDRX1F (6 out and
    5 in per port), on amaranth-boards' pins (port 1 names its control pins
    tx_ctrl/rx_ctrl), with each RXC constrained to 125 MHz."""
    plan = _versa_plan((0, 1))
    rtlil = plan.files["eth.il"]
    lpf = plan.files["eth.lpf"]
    assert rtlil.count("ODDRX1F") == 2 * 6
    assert rtlil.count("IDDRX1F") == 2 * 5
    for site in ("P19", "R20", "N19", "N20", "P18", "P20", "L20", "U19", "T20", "U20", "T19",
                 "R18", "C20", "E19", "J19", "F19"):
        assert f'SITE "{site}"' in lpf, site
    assert lpf.count("125000000.0 HZ") == 2
    for port in (0, 1):
        assert f'FREQUENCY PORT "eth_rgmii_{port}__rx_clk__io" 125000000.0 HZ' in lpf
