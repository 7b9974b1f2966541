"""The soft PCIe link: physical layer (`hdl/phy`) and data link layer
(`hdl/dll`) between a PIPE port and the core's TLP streams.

On the board (`boards/top.py`) this runs in the ``pcie`` domain (125 MHz,
the SERDES's transmit clock) between `boards.serdes.Ecp5PcieSerdes` and the
clock-domain crossings to the core; in simulation two of them, an upstream
and a downstream port, train against each other over a lane model
(`tests/test_pcie_link.py`)::

    PIPE <-> PhysicalLayer <-link packets-> DataLink <-TLPs-> core

LinkUp (section 4.2.6) enables the data link layer; DL_Up (section 3.2)
means TLPs can flow. For an upstream port, DL_Down is a reset of everything
above it (section 2.9.1): the board holds the core in reset while ``dl_up``
is low.
"""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dll.data_link import DataLink
from .pcie.tlp import TlpStreamSignature
from .phy.ltssm import LtssmState
from .phy.phy import PhysicalLayer, PortRole
from .phy.pipe import PipeSignature

__all__ = ["PcieLink"]


class PcieLink(wiring.Component):
    """Ports (one clock domain, ``sync``; the board renames it ``pcie``):
        pipe:    Out(PipeSignature()), to the SERDES (or a lane model).
        tlp_tx:  In(TlpStreamSignature()), TLPs to send (from the core).
        tlp_rx:  Out(TlpStreamSignature()), TLPs received, good ones only, in
                 order, each once (to the core).
        link_up: Out(1), the physical layer's LinkUp.
        dl_up:   Out(1), DL_Active: TLPs flow.
        state:   Out(LtssmState), the LTSSM's state (LEDs, debug).
        receiver_error: Out(1), pulse: framing or 8b/10b error (section 4.2.1.2).
        retrain: In(1),  pulse: go to Recovery (besides the data link layer's
                 own request when REPLAY_NUM rolls over, section 3.6.2.1).

    ``phy`` and ``dll`` are keyword dicts for `PhysicalLayer` and `DataLink`
    (timers shrunk for simulation, credits).
    """

    pipe: Out(PipeSignature())
    tlp_tx: In(TlpStreamSignature())
    tlp_rx: Out(TlpStreamSignature())
    link_up: Out(1)
    dl_up: Out(1)
    state: Out(LtssmState)
    receiver_error: Out(1)
    retrain: In(1)

    def __init__(self, role=PortRole.UPSTREAM, *, phy=None, dll=None):
        self.physical = PhysicalLayer(role, **(phy or {}))
        self.data_link = DataLink(**(dll or {}))
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.phy = phy = self.physical
        m.submodules.dll = dll = self.data_link
        wiring.connect(m, phy.pipe, wiring.flipped(self.pipe))
        wiring.connect(m, dll.tx, phy.tx)
        wiring.connect(m, phy.rx, dll.rx)
        wiring.connect(m, wiring.flipped(self.tlp_tx), dll.tlp_tx)
        wiring.connect(m, dll.tlp_rx, wiring.flipped(self.tlp_rx))
        m.d.comb += [
            dll.link_up.eq(phy.link_up),
            phy.retrain.eq(dll.retrain | self.retrain),
            self.link_up.eq(phy.link_up),
            self.dl_up.eq(dll.dl_up),
            self.state.eq(phy.state),
            self.receiver_error.eq(phy.receiver_error),
        ]
        return m
