"""The system testbench: clock, reset, root complex, the core as a PCIe device, host memory."""
import logging
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.utils import PcieId

from hdl import spec

from .build import CLOCK_PERIOD_NS, params_from_json
from .device import CoreDevice
from .transport import CocotbPcieTransport

__all__ = ["TB"]

HOST_MEMORY_BYTES = 1 << 20
# one root port (00:01.0), whose secondary bus 1 holds the DUT
DUT_ID = PcieId(1, 0, 0)
RESET_CYCLES = 8


class TB:
    """Owns the clock, reset and the models around the DUT.

    After ``await init()``: ``rc`` has enumerated the bus, ``function`` is the
    DUT's PciDevice (BARs assigned, memory and bus mastering on, MSI-X vectors
    allocated) and ``transport`` is what the driver is given.
    """

    def __init__(self, dut):
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
        self.function = None
        self.transport = None
        dut.link_up.value = 1
        dut.notify__ready.value = 1
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
                                             self.mem.get_absolute_address(0))
        if msix:
            vectors = self.params.msix_vectors
            await self.function.alloc_irq_vectors(vectors, vectors)
            self.transport.msix_enabled = True
            self.transport.count_interrupts()
        return self.function

    def _find_function(self):
        """The enumerated virtio function: the only device behind the root port."""
        function = self.rc.find_device(DUT_ID)
        if function is None or function.vendor_id != spec.VIRTIO_PCI_VENDOR_ID:
            raise RuntimeError(f"enumeration found no virtio device at {DUT_ID}")
        return function
