"""The DUT as a cocotbext-pcie device: TLPs between the RootComplex and the core's ports."""
import cocotb
from cocotb.queue import Queue
from cocotb.triggers import ReadOnly, RisingEdge
from cocotbext.pcie.core import Device
from cocotbext.pcie.core.tlp import Tlp

from hdl.pcie.tlp import TlpBeat

from .tlp_codec import beats_to_tlp, tlp_to_beats

__all__ = ["CoreDevice"]

_BEAT = TlpBeat()
# Tags from here up are the testbench's own (`inject`); the root complex uses 0-255.
INJECT_TAG_BASE = 0x200


def _pack_beat(data, keep, first, last):
    return (data << _BEAT["data"].offset | keep << _BEAT["keep"].offset
            | int(first) << _BEAT["first"].offset | int(last) << _BEAT["last"].offset)


def _unpack_beat(value):
    def field(name):
        f = _BEAT[name]
        return value >> f.offset & ((1 << f.width) - 1)
    return field("data"), field("keep"), field("first"), field("last")


class CoreDevice(Device):
    """Moves packed TLPs: RootComplex -> ``tlp_rx``; ``tlp_tx`` -> RootComplex.

    Every TLP the core sends is also kept in ``sent`` (packed), for tests that
    look at completions' fields. ``tlp_tx.ready`` is held high: the root
    complex model takes TLPs as they come.
    """

    def __init__(self, dut, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dut = dut
        self.clk = dut.clk
        self.to_core = Queue()
        self.sent = []
        self.received = []
        dut.tlp_rx__valid.value = 0
        dut.tlp_tx__ready.value = 1
        self._tasks = [cocotb.start_soon(self._drive_rx()), cocotb.start_soon(self._monitor_tx())]

    async def upstream_recv(self, tlp):
        self.log.debug("to core: %r", tlp)
        await self.to_core.put(tlp)

    async def inject(self, tlp, *, expect_reply=True, timeout_cycles=1000):
        """Put ``tlp`` straight into the core, bypassing the root complex's
        routing (which would answer requests it cannot route itself); return
        the core's reply (a Tlp), or None for posted requests."""
        before = len(self.sent)
        await self.to_core.put(tlp)
        for _ in range(timeout_cycles):
            await RisingEdge(self.clk)
            for packed in self.sent[before:]:
                reply = Tlp.unpack(packed)
                if reply.tag == tlp.tag and reply.requester_id == tlp.requester_id:
                    if not expect_reply:
                        raise AssertionError(f"posted request was answered: {reply!r}")
                    return reply
        if expect_reply:
            raise TimeoutError(f"no reply from the core to {tlp!r}")
        return None

    async def _drive_rx(self):
        dut = self.dut
        while True:
            tlp = await self.to_core.get()
            self.received.append(tlp)
            for beat in tlp_to_beats(tlp.pack()):
                dut.tlp_rx__payload.value = _pack_beat(*beat)
                dut.tlp_rx__valid.value = 1
                while True:
                    await ReadOnly()
                    taken = bool(dut.tlp_rx__ready.value)
                    await RisingEdge(self.clk)
                    if taken:
                        break
            dut.tlp_rx__valid.value = 0
            tlp.release_fc()

    async def _monitor_tx(self):
        dut = self.dut
        beats = []
        while True:
            await ReadOnly()
            if dut.rst.value:
                beats = []
            elif dut.tlp_tx__valid.value and dut.tlp_tx__ready.value:
                beat = _unpack_beat(int(dut.tlp_tx__payload.value))
                if beat[2]:
                    beats = []          # a TLP starts; nothing before it belongs to it
                beats.append(beat)
                if beat[3]:
                    packed = beats_to_tlp(beats)
                    beats = []
                    self.sent.append(packed)
                    tlp = Tlp.unpack(packed)
                    self.log.debug("from core: %r", tlp)
                    if tlp.tag < INJECT_TAG_BASE:
                        cocotb.start_soon(self.upstream_send(tlp))
            await RisingEdge(self.clk)
