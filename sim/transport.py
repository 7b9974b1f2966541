"""The driver's Transport over cocotbext-pcie: what a guest kernel's PCI core gives a driver."""
from cocotb.triggers import with_timeout

from driver.transport import Transport

__all__ = ["CocotbPcieTransport"]


class CocotbPcieTransport(Transport):
    """``rc``: the RootComplex; ``function``: the enumerated PciDevice; ``mem``:
    a host memory region (cocotbext-pcie's MemoryRegion) for DMA; ``guard``:
    a sim.host_memory.HostMemoryGuard that ``dma_map``/``dma_unmap`` feed
    (None: mappings are only range-checked)."""

    def __init__(self, rc, function, mem, mem_base, guard=None):
        self.rc = rc
        self.function = function
        self.mem = mem
        self.mem_base = mem_base
        self.guard = guard
        self._next_free = 0
        self.msix_enabled = False
        self.interrupts = []

    async def config_read(self, offset, size):
        data = await self.function.config_read(offset, size)
        return int.from_bytes(data, "little")

    async def config_write(self, offset, size, value):
        await self.function.config_write(offset, value.to_bytes(size, "little"))

    def bar_address(self, bar):
        return self.function.bar_addr[bar] or 0

    def bar_size(self, bar):
        return self.function.bar_size[bar] or 0

    async def mmio_read(self, addr, size):
        return int.from_bytes(await self.rc.mem_read(addr, size), "little")

    async def mmio_write(self, addr, size, value):
        await self.rc.mem_write(addr, value.to_bytes(size, "little"))

    def dma_alloc(self, size, align):
        start = -(-self._next_free // align) * align
        if start + size > self.mem.size:
            raise MemoryError(f"host DMA memory exhausted ({self.mem.size} bytes)")
        self._next_free = start + size
        return self.mem_base + start

    def _mem_offset(self, addr, length):
        offset = addr - self.mem_base
        if offset < 0 or offset + length > self.mem.size:
            raise ValueError(f"DMA access {addr:#x}+{length} outside host memory")
        return offset

    async def dma_read(self, addr, length):
        return bytes(await self.mem.read(self._mem_offset(addr, length), length))

    async def dma_write(self, addr, data):
        await self.mem.write(self._mem_offset(addr, len(data)), bytes(data))

    def dma_map(self, addr, length, direction):
        self._mem_offset(addr, length)
        if self.guard is not None:
            self.guard.map(addr, length, direction)

    def dma_unmap(self, addr, length, direction):
        self._mem_offset(addr, length)
        if self.guard is not None:
            self.guard.unmap(addr, length, direction)

    def msix_vectors_available(self):
        return len(self.function.msi_vectors) if self.msix_enabled else 0

    def count_interrupts(self):
        """Start counting MSI-X messages per vector (after the vectors are allocated)."""
        self.interrupts = [0] * len(self.function.msi_vectors)
        for index, vector in enumerate(self.function.msi_vectors):
            async def seen(index=index):
                self.interrupts[index] += 1
            vector.cb.append(seen)

    async def wait_interrupt(self, vector, timeout_ns):
        # cocotbext-pcie 0.2.16's PciDevice.msi_get_event calls a RootComplex
        # method that does not exist: use the vector's own event.
        # The event stays set once a message came (a pending bit): one that
        # arrived before this wait is taken, not lost.
        event = self.function.msi_vectors[vector].event
        if not event.is_set():
            await with_timeout(event.wait(), timeout_ns, "ns")
        event.clear()
