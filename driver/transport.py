"""How the driver reaches the device: PCI config space, BARs, DMA memory, interrupts.

`Transport` is the only door between the driver and a PCI function. The
unit tests implement it with an in-memory model (driver.testing); the cocotb
testbench implements it on top of a simulated root complex. Its methods that
touch the device are coroutines, because the simulation has to run while
they wait.

`Region` is a window of a BAR (what Linux obtains with pci_iomap_range): it
bounds-checks every access against its length so that a driver bug or a
wrong capability shows up as a clear error instead of a stray bus access.
"""
from __future__ import annotations

import abc
import enum

PCI_STD_NUM_BARS = 6        # BAR0..BAR5 of a type-0 header (PCI 3.0 section 6.2.5)

CONFIG_ACCESS_SIZES = (1, 2, 4)
MMIO_ACCESS_SIZES = (1, 2, 4, 8)


class DmaDirection(enum.Enum):
    """Who writes a mapped buffer (Linux's enum dma_data_direction)."""
    TO_DEVICE = "to_device"          # the device only reads it (TX buffers, rings the driver writes)
    FROM_DEVICE = "from_device"      # the device writes it (RX buffers, the used ring)


class TransportError(Exception):
    """A request the transport cannot carry out."""


class RegionAccessError(TransportError):
    """An access outside a Region, or not naturally aligned."""


class Transport(abc.ABC):
    """Access to one PCI function, as the driver sees it."""

    # --- configuration space ------------------------------------------------

    @abc.abstractmethod
    async def config_read(self, offset: int, size: int) -> int:
        """Read `size` (1, 2 or 4) bytes of configuration space at `offset`."""

    @abc.abstractmethod
    async def config_write(self, offset: int, size: int, value: int) -> None:
        """Write `size` (1, 2 or 4) bytes of configuration space at `offset`."""

    # --- BARs (resources assigned by enumeration) ---------------------------

    @abc.abstractmethod
    def bar_address(self, bar: int) -> int:
        """Bus address of memory BAR `bar` (0..5); 0 if absent."""

    @abc.abstractmethod
    def bar_size(self, bar: int) -> int:
        """Size in bytes of memory BAR `bar` (0..5); 0 if absent."""

    # --- memory-mapped I/O, little-endian ------------------------------------

    @abc.abstractmethod
    async def mmio_read(self, addr: int, size: int) -> int:
        """Read `size` (1, 2, 4 or 8) bytes at bus address `addr`."""

    @abc.abstractmethod
    async def mmio_write(self, addr: int, size: int, value: int) -> None:
        """Write `size` (1, 2, 4 or 8) bytes at bus address `addr`."""

    # --- DMA memory (host memory the device reaches as bus master) -----------

    @abc.abstractmethod
    def dma_alloc(self, size: int, align: int) -> int:
        """Allocate `size` bytes aligned to `align`; return their bus address.

        The content is undefined: callers that need zeroes write them.
        """

    @abc.abstractmethod
    async def dma_read(self, addr: int, length: int) -> bytes:
        """Read `length` bytes of DMA memory at bus address `addr`."""

    @abc.abstractmethod
    async def dma_write(self, addr: int, data: bytes) -> None:
        """Write `data` to DMA memory at bus address `addr`."""

    def dma_map(self, addr: int, length: int, direction: DmaDirection) -> None:
        """Hand [addr, addr + length) to the device (Linux's dma_map_single).

        The device may write only what is mapped FROM_DEVICE; a transport
        that can watch the bus (the simulation's guarded host memory) fails
        any other device write. Transports that cannot watch keep the default.
        """

    def dma_unmap(self, addr: int, length: int, direction: DmaDirection) -> None:
        """Take back a range given with `dma_map` (Linux's dma_unmap_single)."""

    # --- interrupts -----------------------------------------------------------

    @abc.abstractmethod
    def msix_vectors_available(self) -> int:
        """MSI-X vectors the transport has enabled for the driver (0: none).

        Enabling MSI-X (table programming, the capability's Enable bit) is
        the transport's job, as the PCI core's is in Linux.
        """

    @abc.abstractmethod
    async def wait_interrupt(self, vector: int, timeout_ns: int) -> None:
        """Wait for MSI-X `vector`; raise TimeoutError after `timeout_ns`."""

    # --- time (optional) --------------------------------------------------------

    async def delay(self, ns: int) -> None:
        """Let `ns` nanoseconds pass on the transport's clock (wall-clock time for
        a model, simulated time for a simulator), letting the device run.

        Optional: the driver uses it to pace its polling of the control queue
        (Linux's cpu_relax loop). A transport without it raises
        NotImplementedError and the driver polls back to back instead.
        """
        raise NotImplementedError


class Region:
    """A window [offset, offset + length) of a BAR, accessed through a Transport."""

    def __init__(self, transport: Transport, bar_address: int, offset: int,
                 length: int, name: str = "region") -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"{name}: negative offset {offset} or length {length}")
        self.transport = transport
        self.bar_address = bar_address
        self.offset = offset
        self.length = length
        self.name = name

    @property
    def address(self) -> int:
        """Bus address of the region's first byte."""
        return self.bar_address + self.offset

    def __repr__(self) -> str:
        return (f"Region({self.name}, address={self.address:#x}, "
                f"length={self.length:#x})")

    def _check(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.length:
            raise RegionAccessError(
                f"{self.name}: {size}-byte access at offset {offset:#x} is outside "
                f"the region (length {self.length:#x})")
        if offset % size:
            raise RegionAccessError(
                f"{self.name}: {size}-byte access at offset {offset:#x} is not "
                f"naturally aligned")
        return self.address + offset

    async def read(self, offset: int, size: int) -> int:
        return await self.transport.mmio_read(self._check(offset, size), size)

    async def write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"{self.name}: value {value:#x} does not fit {size} bytes")
        await self.transport.mmio_write(self._check(offset, size), size, value)

    async def read8(self, offset: int) -> int:
        return await self.read(offset, 1)

    async def read16(self, offset: int) -> int:
        return await self.read(offset, 2)

    async def read32(self, offset: int) -> int:
        return await self.read(offset, 4)

    async def read64(self, offset: int) -> int:
        return await self.read(offset, 8)

    async def write8(self, offset: int, value: int) -> None:
        await self.write(offset, 1, value)

    async def write16(self, offset: int, value: int) -> None:
        await self.write(offset, 2, value)

    async def write32(self, offset: int, value: int) -> None:
        await self.write(offset, 4, value)

    async def write64(self, offset: int, value: int) -> None:
        await self.write(offset, 8, value)
