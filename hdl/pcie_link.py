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

Errors: the physical and data link layers' errors that section 6.2 (table
"Physical/Data Link Layer error list") classes as Correctable leave as
``correctable`` (one bit per cause) and ``correctable_error`` (any), for
Device Status.Correctable Error Detected in the core's config space. The
Uncorrectable ones of that list (Data Link Protocol Error, Surprise Down,
receiver overflow, flow control protocol errors) are not reported.
"""
from amaranth.hdl import Cat, Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dll.data_link import DataLink
from .pcie.tlp import TlpStreamSignature
from .phy.ltssm import LtssmState
from .phy.phy import PhysicalLayer, PortRole
from .phy.pipe import PipeSignature

__all__ = ["CorrectableErrors", "PcieLink"]


class CorrectableErrors(data.Struct):
    """The correctable errors of section 6.2's Physical/Data Link Layer
    error list, one pulse bit each (the AER Correctable Error Status bits
    of the same names, section 7.8.4.5, if AER is ever added)."""
    receiver_error: 1         # framing or 8b/10b error while LinkUp (4.2.1.2)
    bad_tlp: 1                # LCRC, framing or sequence number (3.6.3.1)
    bad_dllp: 1               # DLLP CRC (3.6.2.2)
    replay_num_rollover: 1    # REPLAY_NUM 11b -> 00b (3.6.2.1)
    replay_timer_timeout: 1   # REPLAY_TIMER expired (3.6.2.1)


class PcieLink(wiring.Component):
    """Ports (one clock domain, ``sync``; the board renames it ``pcie``):
        pipe:    Out(PipeSignature()), to the SERDES (or a lane model).
        tlp_tx:  In(TlpStreamSignature()), TLPs to send (from the core).
        tlp_rx:  Out(TlpStreamSignature()), TLPs received, good ones only, in
                 order, each once (to the core).
        link_up: Out(1), the physical layer's LinkUp.
        dl_up:   Out(1), DL_Active: TLPs flow.
        state:   Out(LtssmState), the LTSSM's state (LEDs, debug).
        receiver_error: Out(1), pulse: framing or 8b/10b error (section 4.2.1.2),
                 in any LTSSM state.
        correctable: Out(CorrectableErrors), registered pulses: the
                 correctable errors by cause (section 6.2); receiver errors
                 only while LinkUp (training from Detect sees noise).
        correctable_error: Out(1), registered pulse, with ``correctable``:
                 any of them.
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
    correctable: Out(CorrectableErrors)
    correctable_error: Out(1)
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
        # Correctable errors (section 6.2). The sources are registered
        # pulses; one more register here keeps these outputs off the layers'
        # paths (the pcie domain's timing) wherever they are taken.
        causes = {
            "receiver_error": phy.receiver_error & phy.link_up,
            "bad_tlp": dll.bad_tlp,
            "bad_dllp": dll.bad_dllp,
            "replay_num_rollover": dll.retrain,
            "replay_timer_timeout": dll.replay_timer_timeout,
        }
        m.d.sync += [getattr(self.correctable, name).eq(value) for name, value in causes.items()]
        m.d.sync += self.correctable_error.eq(Cat(*causes.values()).any())
        return m
