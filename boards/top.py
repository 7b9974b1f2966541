"""Versa board top: the portable core, clocked and reset, with a test harness.

Until the soft PCIe link exists, nothing on the board speaks TLPs. To make the
board build contain the *whole* core (synthesis removes logic whose inputs are
constant or whose outputs go nowhere), `CoreHarness` drives every core input
from board pins and observes every core output on the LEDs:

* inputs: ``tlp_rx`` and ``wire_rx`` (payload, valid) and ``wire_tx.ready`` come from a
  shift register whose serial input is the UART RX pin, mixed with a feedback
  tap so it keeps changing with the pin idle; ``tlp_tx.ready`` and
  ``link_up`` come from DIP switches;
* outputs: ``tlp_tx`` and ``wire_tx`` (payload, valid), ``tlp_rx.ready`` and
  ``wire_rx.ready`` enter a MISR (multiple-input signature register), whose
  slices are XOR-reduced onto the 8 LEDs. A MISR rather than one big XOR:
  two output bits that happen to be equal would cancel in a plain XOR and let
  synthesis drop both; in a MISR each bit enters its own state bit.

The stimulus is not a protocol-correct TLP source; it only keeps the logic
alive. The core module is imported lazily (see `load_core_module`) so the
board code can be imported before ``hdl/top.py`` exists.
"""
import importlib
import os

from amaranth.hdl import Cat, ClockDomain, Module, Elaboratable, Signal, Shape
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer
from amaranth.lib.wiring import In, Out

from .pll import Ecp5Pll
from .versa import CLK100_HZ


__all__ = [
    "CORE_MODULE_ENV", "DEFAULT_CORE_MODULE", "LED_COUNT", "SYNC_CLK_HZ",
    "load_core_module", "make_core", "CoreHarness", "VersaTop",
]


#: Environment variable naming the module that provides ``VirtioNetCore`` and
#: ``CoreParams``; for developing the board build against a stand-in core.
CORE_MODULE_ENV = "VIRTIO_BOARD_CORE_MODULE"
DEFAULT_CORE_MODULE = "hdl.top"

#: The ``sync`` domain runs from a PLL on the board's 100 MHz oscillator, at a
#: frequency the core meets today (the 125 MHz goal belongs to the board issue).
SYNC_CLK_HZ = 80_000_000
LED_COUNT = 8

# DIP switches (amaranth-boards resource "switch") driving core inputs.
SWITCH_TX_READY = 0
SWITCH_LINK_UP = 1
# Flip-flop stages of the pin synchronisers and of the reset synchroniser.
SYNC_STAGES = 2
RESET_SYNC_STAGES = 2
# UART TX is not used; hold it at the line's idle level.
UART_IDLE = 1
# Feedback tap (distance from the serial end) of the stimulus shift register.
STIMULUS_TAP = 7


def load_core_module():
    """Import the core's module (``hdl.top`` unless `CORE_MODULE_ENV` says otherwise)."""
    return importlib.import_module(os.environ.get(CORE_MODULE_ENV, DEFAULT_CORE_MODULE))


def make_core(params=None):
    """Return ``(core, params)``: a `VirtioNetCore` built from ``params`` (default: defaults)."""
    module = load_core_module()
    if params is None:
        params = module.CoreParams()
    return module.VirtioNetCore(params), params


def _source_signature(member):
    """The stream signature of a core port member, as seen by its source."""
    signature = member.signature
    if isinstance(signature, wiring.FlippedSignature):
        signature = signature.flip()
    return signature


def _payload_width(stream_signature):
    return Shape.cast(stream_signature.members["payload"].shape).width


class CoreHarness(wiring.Component):
    """Drives every input of the core from a few pins; folds every output onto LEDs.

    Built from the core's signature, so it follows the core's stream widths.

    Ports (directions from the harness's point of view)
    ---------------------------------------------------
    serial_in : In(1)
        Stimulus bit (already synchronised), shifted in every cycle.
    tx_ready_in : In(1)
        Becomes the core's ``tlp_tx.ready`` (synchronised).
    link_up_in : In(1)
        Becomes the core's ``link_up`` (synchronised).
    leds : Out(LED_COUNT)
        XOR-reduced slices of the output signature register.
    tlp_rx : Out(core's tlp_rx signature)
        Source feeding the core's ``tlp_rx``; ``ready`` is observed.
    tlp_tx : In(core's tlp_tx signature)
        Sink of the core's ``tlp_tx``; payload and valid are observed.
    wire_rx : Out(core's wire_rx signature)
        Source feeding the core's ``wire_rx`` (frames); ``ready`` is observed.
    wire_tx : In(core's wire_tx signature)
        Sink of the core's ``wire_tx``; its ``ready`` comes from the stimulus.
    link_up : Out(1)
        Drives the core's ``link_up``.
    """

    def __init__(self, core_signature):
        members = core_signature.members
        self._rx_sig = _source_signature(members["tlp_rx"])
        self._tx_sig = _source_signature(members["tlp_tx"])
        self._wire_rx_sig = _source_signature(members["wire_rx"])
        self._wire_tx_sig = _source_signature(members["wire_tx"])
        super().__init__({
            "serial_in": In(1),
            "tx_ready_in": In(1),
            "link_up_in": In(1),
            "leds": Out(LED_COUNT),
            "tlp_rx": Out(self._rx_sig),
            "tlp_tx": In(self._tx_sig),
            "wire_rx": Out(self._wire_rx_sig),
            "wire_tx": In(self._wire_tx_sig),
            "link_up": Out(1),
        })

    @property
    def stimulus_width(self):
        """Bits of the stimulus register: TLP rx and frame rx payload and
        valid, frame tx ready."""
        return _payload_width(self._rx_sig) + _payload_width(self._wire_rx_sig) + 3

    @property
    def observed_width(self):
        """Bits entering the MISR: TLP and frame tx payload+valid, both rx readys."""
        return _payload_width(self._tx_sig) + _payload_width(self._wire_tx_sig) + 4

    @property
    def flops(self):
        """Flip-flops this harness adds: stimulus, MISR, LED registers."""
        return self.stimulus_width + self.observed_width + LED_COUNT

    def observed(self):
        """Every core output bit, as one value (the MISR's parallel input)."""
        return Cat(self.tlp_tx.payload, self.tlp_tx.valid, self.tlp_rx.ready,
                   self.wire_tx.payload, self.wire_tx.valid, self.wire_rx.ready)

    def elaborate(self, platform):
        m = Module()

        stimulus = Signal(self.stimulus_width)
        feedback = stimulus[-1] ^ stimulus[-STIMULUS_TAP] ^ self.serial_in
        m.d.sync += stimulus.eq(Cat(feedback, stimulus[:-1]))
        m.d.comb += [
            Cat(self.tlp_rx.payload, self.tlp_rx.valid, self.wire_rx.payload, self.wire_rx.valid,
                self.wire_tx.ready).eq(stimulus),
            self.tlp_tx.ready.eq(self.tx_ready_in),
            self.link_up.eq(self.link_up_in),
        ]

        signature = Signal(self.observed_width)
        m.d.sync += signature.eq(Cat(signature[-1], signature[:-1]) ^ self.observed())

        slice_len = -(-self.observed_width // LED_COUNT)
        for index in range(LED_COUNT):
            m.d.sync += self.leds[index].eq(
                signature[index * slice_len:(index + 1) * slice_len].xor())
        return m


class VersaTop(Elaboratable):
    """ECP5-5G Versa top around the unchanged `VirtioNetCore`.

    Pins: ``clk100`` (in, 100 MHz; a PLL makes the ``sync`` clock), ``rst`` button (in,
    reset, synchronised), ``uart.rx`` (in, stimulus), ``uart.tx`` (out, held
    idle), ``switch`` 0/1 (in, ``tlp_tx.ready``/``link_up``), ``led`` 0..7
    (out, output signature). The PCIe resources are not requested yet.

    ``clock_frequencies`` maps each clock domain to its constrained frequency
    (Hz) for the build report.
    """

    def __init__(self, params=None, *, core=None):
        if core is None:
            core, params = make_core(params)
        self.core = core
        self.params = params
        self.harness = CoreHarness(core.signature)
        self.clock_frequencies = {"sync": SYNC_CLK_HZ}

    #: Pins passed through an `FFSynchronizer`: UART RX and two switches.
    SYNCHRONISED_PINS = 3

    @property
    def harness_flops(self):
        """Flip-flops the board adds around the core (for the coverage check)."""
        return (self.harness.flops + self.SYNCHRONISED_PINS * SYNC_STAGES
                + RESET_SYNC_STAGES)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.harness = harness = self.harness

        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request("clk100", 0, dir="-"))
        m.submodules.rst_buf = rst_buf = io.Buffer("i", platform.request("rst", 0, dir="-"))
        m.domains.sync = cd_sync = ClockDomain("sync")
        # The constraint sits on the pad (resource Clock(), LPF "FREQUENCY PORT");
        # nextpnr carries it through the input buffer and derives the PLL
        # output's from the PLL's dividers.
        board_hz = platform.lookup("clk100", 0).clock.frequency
        if board_hz != CLK100_HZ:
            raise ValueError(f"clk100 is constrained to {board_hz} Hz, expected {CLK100_HZ} Hz")
        m.submodules.pll = pll = Ecp5Pll(CLK100_HZ, self.clock_frequencies["sync"])
        m.d.comb += [pll.clk_in.eq(clk_buf.i), cd_sync.clk.eq(pll.clk_out)]
        # reset held until the PLL locks
        m.submodules.rst_sync = ResetSynchronizer(rst_buf.i | ~pll.locked, domain="sync",
                                                  stages=RESET_SYNC_STAGES)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += uart_tx.o.eq(UART_IDLE)
        pins = {
            "serial": (uart_rx.i, harness.serial_in),
            "tx_ready": (self._switch(m, platform, SWITCH_TX_READY), harness.tx_ready_in),
            "link_up": (self._switch(m, platform, SWITCH_LINK_UP), harness.link_up_in),
        }
        assert len(pins) == self.SYNCHRONISED_PINS
        for name, (pin, target) in pins.items():
            m.submodules[f"{name}_sync"] = FFSynchronizer(pin, target, stages=SYNC_STAGES)

        wiring.connect(m, harness.tlp_rx, core.tlp_rx)
        wiring.connect(m, core.tlp_tx, harness.tlp_tx)
        wiring.connect(m, harness.wire_rx, core.wire_rx)
        wiring.connect(m, core.wire_tx, harness.wire_tx)
        m.d.comb += core.link_up.eq(harness.link_up)

        for index in range(LED_COUNT):
            m.submodules[f"led_buf_{index}"] = led = io.Buffer(
                "o", platform.request("led", index, dir="-"))
            m.d.comb += led.o.eq(harness.leds[index])
        return m

    @staticmethod
    def _switch(m, platform, index):
        m.submodules[f"switch_buf_{index}"] = switch = io.Buffer(
            "i", platform.request("switch", index, dir="-"))
        return switch.i
