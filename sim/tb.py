"""The system testbench: clock, reset, root complex, the core as a PCIe device,
guarded host memory, and the wire side (frame source, frame sink, pcap)."""
import logging
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.utils import PcieId

from hdl import spec

from .build import CLOCK_PERIOD_NS, params_from_json
from .device import CoreDevice
from .host_memory import HostMemoryGuard
from .transport import CocotbPcieTransport
from .wire import FrameSink, FrameSource, PcapRecorder

__all__ = ["TB"]

HOST_MEMORY_BYTES = 8 << 20     # rings and buffers of every queue pair (4 x 256 x 1.5 KiB for RX alone)
# one root port (00:01.0), whose secondary bus 1 holds the DUT
DUT_ID = PcieId(1, 0, 0)
RESET_CYCLES = 8
PCAP_NAME = "wire.pcapng"


def output_dir():
    """Where a run's files go: $VNF_OUT if it is a directory, the directory of
    the file it names otherwise (the CLI's jobs), else the simulator's working
    directory (build/<params>/sim_build)."""
    out = os.environ.get("VNF_OUT")
    if not out:
        return Path.cwd()
    out = Path(out)
    return out if out.is_dir() else out.parent


class TB:
    """Owns the clock, reset and the models around the DUT.

    After ``await init()``: ``rc`` has enumerated the bus, ``function`` is the
    DUT's PciDevice (BARs assigned, memory and bus mastering on, MSI-X vectors
    allocated) and ``transport`` is what the driver is given.

    From construction on: ``guard`` (sim.host_memory.HostMemoryGuard) checks
    every device write against the driver's FROM_DEVICE mappings (call
    `check_memory` at the end of a test); ``wire_source`` drives ``wire_rx``
    (frames into the device), ``wire_sink`` takes ``wire_tx`` (frames out of
    it, always ready until told otherwise); ``pcap`` records both into
    ``output_dir() / pcap_name`` (created at the first frame).
    """

    def __init__(self, dut, *, pcap_name=PCAP_NAME):
        self.dut = dut
        self.log = logging.getLogger("cocotb.tb")
        # cocotbext-pcie reports every empty slot it probes; keep its errors only
        logging.getLogger("cocotb.pcie").setLevel(
            logging.DEBUG if os.environ.get("VNF_VERBOSE") else logging.ERROR)
        self.params = params_from_json(os.environ["VNF_PARAMS"])
        self.rc = RootComplex()
        self.dev = CoreDevice(dut)
        self.rc.make_port().connect(self.dev)
        self.mem = self.rc.mem_pool.alloc_region(HOST_MEMORY_BYTES)
        self.guard = HostMemoryGuard(self.rc)
        self.wire_source = FrameSource(dut, "wire_rx", dut.clk)
        self.wire_sink = FrameSink(dut, "wire_tx", dut.clk, reset=dut.rst)
        self.pcap = PcapRecorder(output_dir() / pcap_name)
        self.pcap.attach(self.wire_source, self.wire_sink)
        self.function = None
        self.transport = None
        dut.link_up.value = 1
        cocotb.start_soon(Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start())

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(RESET_CYCLES):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def init(self, *, msix=True):
        await self.reset()
        await self.rc.enumerate()
        self.function = self._find_function()
        await self.function.enable_device()
        await self.function.set_master()
        self.transport = CocotbPcieTransport(self.rc, self.function, self.mem,
                                             self.mem.get_absolute_address(0), self.guard)
        if msix:
            vectors = self.params.msix_vectors
            await self.function.alloc_irq_vectors(vectors, vectors)
            self.transport.msix_enabled = True
            self.transport.count_interrupts()
        return self.function

    def check_memory(self):
        """Fail (AssertionError, listing them) if the device wrote host memory
        outside the FROM_DEVICE mappings, or sent a malformed MSI message."""
        self.guard.check()

    def _find_function(self):
        """The enumerated virtio function: the only device behind the root port."""
        function = self.rc.find_device(DUT_ID)
        if function is None or function.vendor_id != spec.VIRTIO_PCI_VENDOR_ID:
            raise RuntimeError(f"enumeration found no virtio device at {DUT_ID}")
        return function
