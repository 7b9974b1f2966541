"""The board's PCIe side: the ECP5 DCU, the soft link and the crossings to the
core's clock, as one component with the core's TLP ports in ``sync``::

    pads <-> Ecp5PcieSerdes <-PIPE-> PcieLink <-TLPs-> LinkCrossings <-TLPs-> core
             (boards/serdes.py)      (hdl/pcie_link.py,  (2 x TlpCrossing)    (sync)
                                      in `pcie`, 125 MHz)

Domains: ``pcie`` (125 MHz, the DCU's transmit clock; created and driven by
`Ecp5PcieSerdes`, defined here), the serdes's local ``pcie_rx`` (recovered
clock), and ``sync`` (the core's; the serdes's reset sequencer runs on it).

Resets
------
* PERST# (``perst``, from the pin, asynchronous) is synchronised into ``sync``
  and holds the serdes's reset sequencer, hence the DCU and ``pcie``, in reset
  (PCIe CEM spec, PERST#: the card is in reset while it is asserted).
* ``core_reset`` (``sync``, registered) is 1 while PERST# is asserted, while
  the DCU's transmit side is not ready (``pcie`` stopped or in reset), or
  while the link is not DL_Up: for an upstream port DL_Down is a hot reset of
  everything above the data link layer (PCIe Base 4.0 section 2.9.1). The
  board top puts the core under ``ResetInserter(core_reset)``.
* The crossings lose nothing from before a link reset and nothing after it.
  An `AsyncFIFO` empties when its *write* domain is reset; the read-side
  register of `AsyncFIFOBuffered` empties when its *read* domain is. So each
  crossing runs in two local domains, on the ``sync`` and ``pcie`` clocks,
  with resets of their own:

  - core to link: written in ``tlp_core`` (reset with ``core_reset``), read
    in ``tlp_link`` (reset while not DL_Up, when the data link layer takes
    no TLP, section 3.2);
  - link to core: written in ``tlp_rx_link`` (reset while not LinkUp, when
    the data link layer is reset, DL_Inactive, section 3.2.1), read in
    ``tlp_rx_core`` (reset with LinkUp low, PERST# or the transmit side
    stopped, seen in ``sync``). Not DL_Up: in FC_INIT2 the data link
    layer already receives TLPs (section 3.4.2: a TLP is one way to set
    FI2), and the root complex, DL_Up before us, may send one; it waits in
    the crossing, which shows it to the core (``valid``, ``ready`` gated)
    only once ``core_reset`` is low.

  No half TLP from before a link reset reaches either side after it.

Flow control needs no help here: the data link layer frees receive credits
as TLPs leave its buffer into the crossing, and both crossings apply
back-pressure (``ready``), so nothing is dropped.

Errors: the link's correctable errors (PCIe Base 4.0 section 6.2: Receiver
Error, Bad TLP, Bad DLLP, REPLAY_NUM Rollover, Replay Timer Timeout) cross
into ``sync`` as pulses (`hdl.eth.cdc.PulseCrossing`) for the core's
``link_correctable_error`` (Device Status.Correctable Error Detected). A
burst faster than ``sync`` can take loses pulses but never all of them: the
status bit only needs one. Pulses from while the core is held in reset are
ignored by it (the crossing's read side drains them).
"""
from types import SimpleNamespace

from amaranth.hdl import (ClockDomain, ClockSignal, DomainRenamer, IOPort, Module, ResetInserter,
                          ResetSignal, Shape, Signal)
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import AsyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hdl.eth.cdc import PulseCrossing
from hdl.pcie.tlp import TlpBeat, TlpStreamSignature
from hdl.pcie_link import PcieLink
from hdl.phy.ltssm import LtssmState
from hdl.phy.phy import PortRole
from hdl.phy.pipe import PIPE_CLK_HZ

from .serdes import PCIE_DOMAIN, PCIE_RX_DOMAIN, Ecp5PcieSerdes


__all__ = ["TLP_CROSSING_DEPTH", "SYNC_STAGES", "ERROR_HOLD_S", "PulseStretcher",
           "TlpCrossing", "LinkCrossings", "CoreResetControl", "BoardPcieLink",
           "free_pcie_pads"]


#: Beats each TLP crossing holds (AsyncFIFOBuffered: a power of 2 plus one).
#: 17 beats of 2 DWs: more than a 4-DW header plus 16 DWs of data in flight
#: while the pointers cross (a few cycles each way); maps to distributed RAM.
TLP_CROSSING_DEPTH = 17
#: Flip-flop stages of the level synchronisers into ``sync``.
SYNC_STAGES = 2
#: How long a receiver-error pulse (``pcie``) stays visible on its LED.
ERROR_HOLD_S = 50e-3

# Local domains of the crossings (see the module docstring). Core to link:
# the core side, reset with the core; the link side, reset while not DL_Up.
_CORE_SIDE = "tlp_core"
_LINK_SIDE = "tlp_link"
# Link to core: the link side, reset while not LinkUp; the core side, reset
# while not LinkUp (seen in sync), PERST# or the transmit side stopped.
_RX_LINK_SIDE = "tlp_rx_link"
_RX_CORE_SIDE = "tlp_rx_core"


class PulseStretcher(wiring.Component):
    """``active`` (registered) is 1 for ``cycles`` cycles after the last ``pulse``.

    Ports (``sync``): pulse: In(1); active: Out(1).
    """

    pulse: In(1)
    active: Out(1)

    def __init__(self, cycles):
        self.cycles = cycles
        super().__init__()

    @property
    def flops(self):
        """Flip-flops it adds: the down-counter."""
        return Shape.cast(range(self.cycles + 1)).width

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.cycles + 1))
        with m.If(self.pulse):
            m.d.sync += count.eq(self.cycles)
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        m.d.comb += self.active.eq(count != 0)
        return m


class TlpCrossing(wiring.Component):
    """A TLP stream from ``w_domain`` to ``r_domain`` through an
    `AsyncFIFOBuffered` of `TLP_CROSSING_DEPTH` beats (the whole `TlpBeat`
    payload). Emptied when ``w_domain`` is reset.

    Ports: w: In(TlpStreamSignature()), ``w_domain``;
           r: Out(TlpStreamSignature()), ``r_domain``.
    """

    w: In(TlpStreamSignature())
    r: Out(TlpStreamSignature())

    def __init__(self, *, w_domain, r_domain, depth=TLP_CROSSING_DEPTH):
        self.w_domain, self.r_domain, self.depth = w_domain, r_domain, depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = AsyncFIFOBuffered(
            width=Shape.cast(TlpBeat()).width, depth=self.depth,
            w_domain=self.w_domain, r_domain=self.r_domain)
        m.d.comb += [
            fifo.w_data.eq(self.w.payload),
            fifo.w_en.eq(self.w.valid),
            self.w.ready.eq(fifo.w_rdy),
            self.r.payload.eq(fifo.r_data),
            self.r.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.r.ready),
        ]
        return m


class CoreResetControl(wiring.Component):
    """Combines what holds the core in reset, in ``sync``.

    Ports:
        perst: In(1), PERST# asserted (pin, asynchronous); synchronised here.
        tx_ready: In(1), ``sync``: the serdes's transmit side runs (``pcie`` is live).
        dl_up: In(1), ``pcie`` (any clock): the link is DL_Up; synchronised here.
        perst_sync: Out(1), ``sync``: PERST# synchronised (starts asserted).
        dl_up_sync: Out(1), ``sync``: ``dl_up`` synchronised.
        core_reset: Out(1), ``sync``, registered: PERST#, or transmit side
            not ready, or not DL_Up (section 2.9.1); 1 out of reset.
    """

    perst: In(1)
    tx_ready: In(1)
    dl_up: In(1)
    perst_sync: Out(1, init=1)
    dl_up_sync: Out(1)
    core_reset: Out(1, init=1)

    #: Flip-flops it adds: two synchronisers and the output register.
    FLOPS = 2 * SYNC_STAGES + 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.perst_sync = FFSynchronizer(self.perst, self.perst_sync, init=1,
                                                 stages=SYNC_STAGES)
        m.submodules.dl_up_sync = FFSynchronizer(self.dl_up, self.dl_up_sync,
                                                 stages=SYNC_STAGES)
        m.d.sync += self.core_reset.eq(self.perst_sync | ~self.tx_ready | ~self.dl_up_sync)
        return m


class LinkCrossings(wiring.Component):
    """Both TLP crossings between the link (``pcie``) and the core (``sync``),
    with the reset rules of the module docstring.

    Ports (directions from this component)
    --------------------------------------
    link_rx : In(TlpStreamSignature()), ``pcie``: from the data link layer.
    link_tx : Out(TlpStreamSignature()), ``pcie``: to the data link layer.
    core_rx : Out(TlpStreamSignature()), ``sync``: to the core; ``valid`` and
        ``ready`` are gated off while ``core_reset`` is 1 (TLPs wait).
    core_tx : In(TlpStreamSignature()), ``sync``: from the core.
    dl_up, link_up : In(1), ``pcie``: DL_Up and LinkUp of the link.
    core_reset : In(1), ``sync``: the core is held in reset.
    stopped : In(1), ``sync``: PERST# asserted or the ``pcie`` clock not
        running (so ``link_up`` may be stale).
    """

    link_rx: In(TlpStreamSignature())
    link_tx: Out(TlpStreamSignature())
    core_rx: Out(TlpStreamSignature())
    core_tx: In(TlpStreamSignature())
    dl_up: In(1)
    link_up: In(1)
    core_reset: In(1)
    stopped: In(1)

    def elaborate(self, platform):
        m = Module()
        dl_down, link_down = Signal(init=1), Signal(init=1)
        m.d.pcie += [dl_down.eq(~self.dl_up), link_down.eq(~self.link_up)]
        link_down_sync, rx_hold = Signal(init=1), Signal(init=1)
        m.submodules.link_down_sync = FFSynchronizer(link_down, link_down_sync, init=1,
                                                     stages=SYNC_STAGES)
        m.d.sync += rx_hold.eq(self.stopped | link_down_sync)
        resets = {
            _CORE_SIDE: ("sync", self.core_reset),
            _LINK_SIDE: (PCIE_DOMAIN, dl_down),
            _RX_LINK_SIDE: (PCIE_DOMAIN, link_down),
            _RX_CORE_SIDE: ("sync", rx_hold),
        }
        for name, (clock, reset) in resets.items():
            cd = ClockDomain(name, local=True)
            m.domains += cd
            m.d.comb += [cd.clk.eq(ClockSignal(clock)),
                         cd.rst.eq(ResetSignal(clock) | reset)]
        m.submodules.rx_crossing = rx_x = TlpCrossing(w_domain=_RX_LINK_SIDE,
                                                      r_domain=_RX_CORE_SIDE)
        m.submodules.tx_crossing = tx_x = TlpCrossing(w_domain=_CORE_SIDE, r_domain=_LINK_SIDE)
        wiring.connect(m, wiring.flipped(self.link_rx), rx_x.w)
        # received TLPs wait while the core is in reset
        m.d.comb += [
            self.core_rx.payload.eq(rx_x.r.payload),
            self.core_rx.valid.eq(rx_x.r.valid & ~self.core_reset),
            rx_x.r.ready.eq(self.core_rx.ready & ~self.core_reset),
        ]
        wiring.connect(m, wiring.flipped(self.core_tx), tx_x.w)
        wiring.connect(m, tx_x.r, wiring.flipped(self.link_tx))
        return m


class BoardPcieLink(wiring.Component):
    """The DCU, the soft PCIe link (in ``pcie``) and the TLP crossings to ``sync``.

    Parameters
    ----------
    lane, refclk :
        Raw pads from `boards.versa.request_pcie_pads` (``lane.perst`` is not
        used here: buffer it in the top and drive ``perst``).
    sync_clk_hz : float
        Frequency of ``sync`` (times the serdes's reset sequence).

    Ports (directions from this component)
    --------------------------------------
    perst : In(1)
        PERST# asserted (1 = in reset), straight from the pin's buffer.
    tlp_rx : Out(TlpStreamSignature()), ``sync``
        TLPs received from the link, to the core's ``tlp_rx``.
    tlp_tx : In(TlpStreamSignature()), ``sync``
        TLPs from the core's ``tlp_tx``, to the link.
    core_reset : Out(1), ``sync``
        Hold the core in reset (see `CoreResetControl`).
    serdes_ready, dl_up, link_up : Out(1), ``sync``
        The DCU's transmit and receive paths run (TX PLL and CDR locked, a
        signal present); DL_Up; the physical layer's LinkUp.
    state : Out(LtssmState), ``sync``
        The LTSSM state, synchronised bit by bit (for display: a change may
        show a mixed value for one cycle).
    receiver_error : Out(1), ``sync``
        A receiver (framing or 8b/10b) error in the last `ERROR_HOLD_S`.
    correctable_error : Out(1), ``sync``, registered
        Pulse: the link found a correctable error (`PcieLink.correctable_error`,
        section 6.2), for the core's ``link_correctable_error``.

    ``clock_frequencies`` and ``clock_nets`` (relative to this component:
    prefix its submodule name) give the domains it creates for build reports.
    """

    #: The clock domains it creates (Hz): both fixed by the SERDES (2.5 GT/s / 20).
    CLOCK_FREQUENCIES = {PCIE_DOMAIN: PIPE_CLK_HZ, PCIE_RX_DOMAIN: PIPE_CLK_HZ}
    #: Kept wires on their clocks, relative to this component (prefix the
    #: submodule name), for build reports mapping nextpnr's clock nets to domains.
    CLOCK_NETS = {PCIE_DOMAIN: "pcie_clock", PCIE_RX_DOMAIN: "serdes.pcie_rx_clock"}

    def __init__(self, lane, refclk, *, sync_clk_hz):
        self.serdes = Ecp5PcieSerdes(lane, refclk, ctrl_clk_hz=sync_clk_hz)
        self.link = PcieLink(role=PortRole.UPSTREAM)
        self.reset_control = CoreResetControl()
        self.crossings = LinkCrossings()
        self.error_stretcher = PulseStretcher(round(ERROR_HOLD_S * PIPE_CLK_HZ))
        self.error_crossing = PulseCrossing(1, i_domain=PCIE_DOMAIN, o_domain="sync")
        if (self.serdes.clock_frequencies != self.CLOCK_FREQUENCIES
                or f"serdes.{self.serdes.clock_nets[PCIE_RX_DOMAIN]}"
                != self.CLOCK_NETS[PCIE_RX_DOMAIN]):
            raise ValueError("Ecp5PcieSerdes's clocks changed: update BoardPcieLink's")
        self.clock_frequencies = dict(self.CLOCK_FREQUENCIES)
        self.clock_nets = dict(self.CLOCK_NETS)
        super().__init__({
            "perst": In(1),
            "tlp_rx": Out(TlpStreamSignature()),
            "tlp_tx": In(TlpStreamSignature()),
            "core_reset": Out(1, init=1),
            "serdes_ready": Out(1),
            "dl_up": Out(1),
            "link_up": Out(1),
            "state": Out(LtssmState),
            "receiver_error": Out(1),
            "correctable_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        serdes = self.serdes
        m.domains.pcie = serdes.cd_pcie
        m.submodules.reset_control = rc = self.reset_control
        # PERST# restarts the serdes's reset sequence and holds it there.
        m.submodules.serdes = ResetInserter({"sync": rc.perst_sync})(serdes)
        m.submodules.link = link = DomainRenamer({"sync": PCIE_DOMAIN})(self.link)
        wiring.connect(m, link.pipe, serdes.pipe)
        m.d.comb += [
            rc.perst.eq(self.perst),
            rc.tx_ready.eq(serdes.tx_ready),
            rc.dl_up.eq(link.dl_up),
            self.core_reset.eq(rc.core_reset),
            self.dl_up.eq(rc.dl_up_sync),
            self.serdes_ready.eq(serdes.tx_ready & serdes.rx_ready),
        ]

        # --- the crossings (reset rules: module docstring) ----------------------------------
        m.submodules.crossings = crossings = self.crossings
        m.d.comb += [
            crossings.dl_up.eq(link.dl_up),
            crossings.link_up.eq(link.link_up),
            crossings.core_reset.eq(rc.core_reset),
            crossings.stopped.eq(rc.perst_sync | ~serdes.tx_ready),
        ]
        wiring.connect(m, link.tlp_rx, crossings.link_rx)
        wiring.connect(m, crossings.link_tx, link.tlp_tx)
        wiring.connect(m, crossings.core_rx, wiring.flipped(self.tlp_rx))
        wiring.connect(m, wiring.flipped(self.tlp_tx), crossings.core_tx)

        # --- status into sync -----------------------------------------------------------------
        m.submodules.error_stretcher = stretcher = DomainRenamer(PCIE_DOMAIN)(self.error_stretcher)
        m.d.comb += stretcher.pulse.eq(link.receiver_error)
        state = Signal(LtssmState)
        m.d.pcie += state.eq(link.state)      # registered before crossing
        for name, source, target in (("link_up", link.link_up, self.link_up),
                                     ("state", state, self.state),
                                     ("error", stretcher.active, self.receiver_error)):
            m.submodules[f"{name}_sync"] = FFSynchronizer(source, target, stages=SYNC_STAGES)

        # correctable errors (section 6.2): pulses into sync, registered there
        m.submodules.error_crossing = error_crossing = self.error_crossing
        m.d.comb += error_crossing.i.eq(link.correctable_error)
        m.d.sync += self.correctable_error.eq(error_crossing.o)

        # a named, kept alias of the pcie clock, for the build report (`clock_nets`)
        probe = Signal(name=self.clock_nets[PCIE_DOMAIN], attrs={"keep": 1})
        m.d.comb += probe.eq(ClockSignal(PCIE_DOMAIN))
        return m


def free_pcie_pads():
    """Stand-ins for `request_pcie_pads`'s ``(lane, refclk)`` without a platform:
    top-level ports, for synthesising `BoardPcieLink` alone (the coverage
    reference, `boards.build.synth_pcie`)."""
    def pair(name):
        return SimpleNamespace(p=IOPort(1, name=f"{name}_p"), n=IOPort(1, name=f"{name}_n"))
    lane = SimpleNamespace(tx=pair("pcie_tx"), rx=pair("pcie_rx"))
    return lane, pair("pcie_refclk")
