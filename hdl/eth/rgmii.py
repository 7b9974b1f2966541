"""RGMII (Reduced Gigabit Media Independent Interface, HP/Broadcom/Marvell
RGMII v2.0) between the MAC's GMII and a PHY, on ECP5 DDR I/O.

RGMII v2.0 (signal definitions, Table 1) halves the GMII's data pins by
using both clock edges, at 125 MHz for 1000 Mb/s:

- ``TXD[3:0]`` carries GMII ``txd[3:0]`` on the rising edge of TXC and
  ``txd[7:4]`` on the falling edge; ``TX_CTL`` carries ``tx_en`` on the
  rising edge and ``tx_en XOR tx_er`` on the falling edge (the TX_ER/RX_ER
  coding: the line does not toggle while idle or while good data flows).
- ``RXD``/``RX_CTL`` do the same for ``rxd``, ``rx_dv`` and ``rx_er``,
  timed by the PHY's RXC.

Clocks and the 90-degree shift. RGMII v2.0's timing (Table 2) has clock and
data leave edge-aligned; the receiving end needs the clock delayed by about
2 ns (a quarter cycle at 125 MHz). RGMII v2.0 also lets a device add that
delay internally ("RGMII-ID"). This block relies on it in both directions (the choice
documented in docs/architecture.md): TXC is driven from the ``eth_tx`` clock
itself, through a DDR output holding 1 on the first half-cycle and 0 on the
second, so it leaves edge-aligned with TXD, like the data; the PHY delays it
internally. RXC likewise arrives edge-aligned and the PHY has delayed it.
LiteX's Versa ECP5 target runs the same PHY this way (``tx_delay=0``,
``rx_delay=0``). If a board needs the FPGA to shift TXC instead, pass
``tx_clk_domain`` the name of a domain clocked by a second PLL output at
125 MHz, +90 degrees (ECP5 EHXPLLL CLKOS with CLKOS_CPHASE/CLKOS_FPHASE); TXC
then comes out a quarter cycle after the data.

The receive clock is its own clock domain, ``eth_rx``, clocked by RXC. The
block hands RXC out (``rx_clk``); the parent defines the domain (Amaranth
wants a domain defined above every module that uses it), with `add_rx_domain`.

I/O: with pads from the platform (``platform.request("eth_rgmii", n,
dir="-")``, raw ports), the DDR registers are `amaranth.lib.io.DDRBuffer`,
which the ECP5 platform turns into ODDRX1F/IDDRX1F. `io.DDRBuffer` does not
simulate, so with `RgmiiSimPads` (`io.SimulationPort`) the same registers
are modelled in logic (`SimDdrBuffer`): output registers on the rising edge
selected by the clock, input registers on both edges.
"""
from amaranth.hdl import ClockDomain, ClockSignal, IOPort, Module, Mux, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from .gmii import ETH_RX_DOMAIN, ETH_TX_DOMAIN, GMII_CLK_HZ, GmiiRxSignature, GmiiTxSignature

__all__ = ["RGMII_DATA_PINS", "RgmiiSimPads", "SimDdrBuffer", "Rgmii", "add_rx_domain"]

#: RGMII v2.0 section 2: four data pins each way.
RGMII_DATA_PINS = 4
_RISE, _FALL = 0, 1                 # io.DDRBuffer lanes: rising-edge, falling-edge half
#: TXC, as a DDR output: high on the first half-cycle, low on the second.
_CLOCK_HALVES = (1, 0)
#: Stages of the eth_rx reset synchroniser.
RESET_SYNC_STAGES = 2


def _pin(pads, *names):
    """The first of ``names`` that ``pads`` has: amaranth-boards' Versa names
    the control pins ``tx_ctl``/``rx_ctl`` on port 0, ``tx_ctrl``/``rx_ctrl`` on port 1."""
    for name in names:
        if hasattr(pads, name):
            return getattr(pads, name)
    raise AttributeError(f"RGMII pads have none of {names}")


class RgmiiSimPads:
    """Simulation stand-in for an ``eth_rgmii`` resource: the six RGMII pins
    as `io.SimulationPort` (``tx_clk``, ``tx_ctl``, ``tx_data``: outputs;
    ``rx_clk``, ``rx_ctl``, ``rx_data``: inputs)."""

    def __init__(self, name="rgmii"):
        self.tx_clk = io.SimulationPort("o", 1, name=f"{name}_tx_clk")
        self.tx_ctl = io.SimulationPort("o", 1, name=f"{name}_tx_ctl")
        self.tx_data = io.SimulationPort("o", RGMII_DATA_PINS, name=f"{name}_tx_data")
        self.rx_clk = io.SimulationPort("i", 1, name=f"{name}_rx_clk")
        self.rx_ctl = io.SimulationPort("i", 1, name=f"{name}_rx_ctl")
        self.rx_data = io.SimulationPort("i", RGMII_DATA_PINS, name=f"{name}_rx_data")


class SimDdrBuffer(wiring.Component):
    """`io.DDRBuffer`'s behaviour, in logic, on an `io.SimulationPort`.

    Output (``o_domain``): ``o[0]`` and ``o[1]`` are registered on the rising
    edge; the pin shows ``o[0]`` while the clock is high and ``o[1]`` while it is
    low (output latency 1, as the ECP5's ODDRX1F up to its extra pipeline).
    Input (``i_domain``): the pin is sampled on the rising edge and on the
    falling edge after it; both samples appear together on ``i[0]``/``i[1]``
    after the next rising edge (as IDDRX1F's Q0/Q1).
    """

    def __init__(self, direction, port, *, i_domain=None, o_domain=None):
        if not isinstance(port, io.SimulationPort):
            raise TypeError(f"SimDdrBuffer needs an io.SimulationPort, not {port!r}")
        self.port = port
        self.i_domain = i_domain or "sync"
        self.o_domain = o_domain or "sync"
        super().__init__(io.DDRBuffer.Signature(direction, len(port)).flip())

    def elaborate(self, platform):
        m = Module()
        width = len(self.port)
        invert = sum(bit << index for index, bit in enumerate(self.port.invert))
        direction = self.signature.direction
        if direction is not io.Direction.Output:
            m.domains.fall = fall = ClockDomain("fall", clk_edge="neg", local=True,
                                                reset_less=True)
            m.d.comb += fall.clk.eq(ClockSignal(self.i_domain))
            at_rise = Signal(width)
            at_fall = Signal(width)
            m.d[self.i_domain] += at_rise.eq(self.port.i ^ invert)
            m.d.fall += at_fall.eq(self.port.i ^ invert)
            m.d[self.i_domain] += [self.i[_RISE].eq(at_rise), self.i[_FALL].eq(at_fall)]
        if direction is not io.Direction.Input:
            first = Signal(width)
            second = Signal(width)
            m.d[self.o_domain] += [first.eq(self.o[_RISE]), second.eq(self.o[_FALL])]
            m.d.comb += [
                self.port.o.eq(Mux(ClockSignal(self.o_domain), first, second) ^ invert),
                self.port.oe.eq(self.oe),
            ]
        return m


def _ddr(direction, port, domain):
    domain_arg = {"o_domain": domain} if direction == "o" else {"i_domain": domain}
    if isinstance(port, io.SimulationPort):
        return SimDdrBuffer(direction, port, **domain_arg)
    return io.DDRBuffer(direction, port, **domain_arg)


class Rgmii(wiring.Component):
    """GMII <-> RGMII for one PHY port at 1000 Mb/s.

    Ports:
        gmii_tx:   In(GmiiTxSignature), from the MAC, in ``eth_tx``; reaches the
                   pins one cycle later.
        gmii_rx:   Out(GmiiRxSignature), to the MAC, in ``eth_rx``.
        rx_clk:    Out(1), RXC from its pin: the ``eth_rx`` clock (`add_rx_domain`).
        phy_reset: In(1), asynchronous: hold the PHY in reset (its ``rst`` pin,
                   if the pads have one).

    Pads: ``tx_clk``, ``tx_ctl`` (or ``tx_ctrl``), ``tx_data`` [4] out;
    ``rx_clk``, ``rx_ctl`` (or ``rx_ctrl``), ``rx_data`` [4] in; optional
    ``rst`` (out) and ``mdc`` (out, held low: management is not implemented).

    ``tx_domain`` and ``rx_domain`` name the two domains (``eth_tx``, ``eth_rx``
    by default; a second port needs other names). ``tx_clk_domain`` clocks the
    TXC output (default: ``tx_domain``, edge-aligned, for a PHY that delays TXC).
    """
    gmii_tx: In(GmiiTxSignature)
    gmii_rx: Out(GmiiRxSignature)
    rx_clk: Out(1)
    phy_reset: In(1)

    def __init__(self, pads, *, tx_domain=ETH_TX_DOMAIN, rx_domain=ETH_RX_DOMAIN,
                 tx_clk_domain=None):
        self.pads = pads
        self.tx_domain = tx_domain
        self.rx_domain = rx_domain
        self.tx_clk_domain = tx_clk_domain or tx_domain
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        pads = self.pads
        nibble = RGMII_DATA_PINS

        # --- transmit, eth_tx -------------------------------------------------
        m.submodules.tx_data = tx_data = _ddr("o", pads.tx_data, self.tx_domain)
        m.submodules.tx_ctl = tx_ctl = _ddr("o", _pin(pads, "tx_ctl", "tx_ctrl"), self.tx_domain)
        m.submodules.tx_clk = tx_clk = _ddr("o", pads.tx_clk, self.tx_clk_domain)
        gmii_tx = self.gmii_tx
        m.d.comb += [
            tx_data.o[_RISE].eq(gmii_tx.txd[:nibble]),
            tx_data.o[_FALL].eq(gmii_tx.txd[nibble:]),
            tx_ctl.o[_RISE].eq(gmii_tx.tx_en),
            tx_ctl.o[_FALL].eq(gmii_tx.tx_en ^ gmii_tx.tx_er),
            tx_clk.o[_RISE].eq(_CLOCK_HALVES[_RISE]),
            tx_clk.o[_FALL].eq(_CLOCK_HALVES[_FALL]),
        ]

        # --- receive clock ----------------------------------------------------
        if isinstance(pads.rx_clk, io.SimulationPort):
            m.d.comb += self.rx_clk.eq(pads.rx_clk.i)
        else:
            m.submodules.rx_clk = rx_clk = io.Buffer("i", pads.rx_clk)
            m.d.comb += self.rx_clk.eq(rx_clk.i)
            if platform is not None and isinstance(getattr(pads.rx_clk, "io", None), IOPort):
                # on the pad, as the board's clk100 is: a net name may not survive synthesis
                platform.add_clock_constraint(pads.rx_clk.io, GMII_CLK_HZ)

        # --- receive, eth_rx ----------------------------------------------------
        m.submodules.rx_data = rx_data = _ddr("i", pads.rx_data, self.rx_domain)
        m.submodules.rx_ctl = rx_ctl = _ddr("i", _pin(pads, "rx_ctl", "rx_ctrl"), self.rx_domain)
        gmii_rx = self.gmii_rx
        m.d.comb += [
            gmii_rx.rxd[:nibble].eq(rx_data.i[_RISE]),
            gmii_rx.rxd[nibble:].eq(rx_data.i[_FALL]),
            gmii_rx.rx_dv.eq(rx_ctl.i[_RISE]),
            gmii_rx.rx_er.eq(rx_ctl.i[_RISE] ^ rx_ctl.i[_FALL]),
        ]

        # --- PHY reset and management pins --------------------------------------
        if hasattr(pads, "rst"):
            m.submodules.phy_rst = phy_rst = io.Buffer("o", pads.rst)
            m.d.comb += phy_rst.o.eq(self.phy_reset)
        if hasattr(pads, "mdc"):
            m.submodules.mdc = mdc = io.Buffer("o", pads.mdc)
            m.d.comb += mdc.o.eq(0)
        return m


def add_rx_domain(m, rgmii, *, reset):
    """Define ``rgmii``'s receive domain in module ``m`` (a parent of the blocks
    that use it): clocked by ``rgmii.rx_clk``, reset by ``reset`` (asynchronous,
    for example ``ResetSignal("eth_tx")``) through a `ResetSynchronizer`.
    Returns the `ClockDomain`."""
    domain = ClockDomain(rgmii.rx_domain)
    m.domains += domain
    m.d.comb += domain.clk.eq(rgmii.rx_clk)
    m.submodules[f"{rgmii.rx_domain}_reset"] = ResetSynchronizer(
        reset, domain=rgmii.rx_domain, stages=RESET_SYNC_STAGES)
    return domain
