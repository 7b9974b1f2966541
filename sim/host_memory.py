"""Guarded host memory: the device may write only what the driver mapped FROM_DEVICE.

The driver maps every buffer it posts (`Transport.dma_map`, like Linux's
dma_map_single) and unmaps it when the device has given it back.
`DmaMappings` keeps the live mappings; `HostMemoryGuard` checks every memory
write the device makes against them, the way an IOMMU (or Linux's
CONFIG_DMA_API_DEBUG) would.

How it sees the device's writes: cocotbext-pcie 0.2.16's `RootComplex`
dispatches every TLP that arrives from below (``downstream_recv`` ->
``handle_tlp``) through its table ``rx_tlp_handler``, filled with
``register_rx_tlp_handler``; MWr TLPs (``MEM_WRITE``, ``MEM_WRITE_64``) go to
``handle_mem_write_tlp``, which writes the enabled bytes into
``mem_address_space`` (host memory regions, and the MSI region at
0x8000_0000). `HostMemoryGuard.attach` registers a handler for those two
types that looks at the TLP (address, length, byte enables) and then calls
the root complex's own handler, so memory is written as before. Only
requests from the device come this way: the driver's ``dma_write`` writes the
region directly and the root complex's own ``mem_write`` goes downstream to
the device; neither passes the guard.

MSI-X messages are memory writes too, into the root complex's MSI region;
they are counted apart (``stats.msi_writes``), and only a write there that is
not a well-formed message (one DW at the region's base) is a violation.
"""
import dataclasses
import logging
from collections import Counter, defaultdict

from cocotbext.pcie.core.tlp import TlpType

from driver.transport import DmaDirection

__all__ = ["DeviceWrite", "DeviceWriteStats", "DmaMappingError", "DmaMappings",
           "HostMemoryGuard", "Violation", "written_spans"]

PAGE_BYTES = 4096                   # mappings are indexed by page; a MWr never crosses one
DW_BYTES = 4
MSI_MESSAGE_BYTES = 4               # MSI/MSI-X message data: one DW (PCI 3.0 section 6.8)
MEM_WRITE_TYPES = (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64)


class DmaMappingError(ValueError):
    """A dma_map/dma_unmap the DMA API would refuse (driver bug)."""


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One live ``dma_map(addr, length, direction)``."""
    addr: int
    length: int
    direction: DmaDirection

    @property
    def end(self):
        return self.addr + self.length

    def __str__(self):
        return f"[{self.addr:#x}, {self.end:#x}) {self.direction.name}"


@dataclasses.dataclass(frozen=True)
class Violation:
    """A device write that touched bytes it may not write.

    ``outside``: the byte ranges [start, end) of the write that no live
    FROM_DEVICE mapping covers (all of it for a malformed MSI message)."""
    addr: int
    length: int
    outside: tuple
    reason: str
    time_ns: float = None
    requester: str = None

    def __str__(self):
        ranges = ", ".join(f"[{start:#x}, {end:#x})" for start, end in self.outside)
        when = f" at {self.time_ns:.0f} ns" if self.time_ns is not None else ""
        who = f" by {self.requester}" if self.requester else ""
        return (f"device write {self.addr:#x}+{self.length}{who}{when}: {self.reason}; "
                f"bytes {ranges}")


@dataclasses.dataclass
class DeviceWriteStats:
    """What the device wrote: host memory writes (TLPs and bytes) and MSI messages."""
    writes: int = 0
    bytes: int = 0
    msi_writes: int = 0


@dataclasses.dataclass(frozen=True)
class DeviceWrite:
    """One device write into host memory: ``spans`` are its (addr, length) runs of enabled bytes."""
    addr: int
    length: int
    spans: tuple
    time_ns: float = None


def written_spans(address, length_dw, first_be, last_be):
    """The byte runs (addr, length) a memory write TLP writes.

    ``address`` is the TLP's DW address; the first DW's bytes are enabled by
    ``first_be``, the last DW's (when there are two or more) by ``last_be``,
    the ones between whole (PCIe 6.0 section 2.2.5). Runs are split where an
    enable bit is clear, as the root complex's handler splits its writes.
    """
    enables = []
    for index in range(length_dw):
        if index == 0:
            mask = first_be
        elif index == length_dw - 1:
            mask = last_be
        else:
            mask = 0xF
        enables.extend(bool(mask >> bit & 1) for bit in range(DW_BYTES))
    spans = []
    start = None
    for offset, enabled in enumerate(enables + [False]):
        if enabled and start is None:
            start = offset
        elif not enabled and start is not None:
            spans.append((address + start, offset - start))
            start = None
    return spans


class DmaMappings:
    """The live DMA mappings, by direction (pure bookkeeping, no simulator).

    The same range may be mapped more than once and ranges may overlap; a
    byte is mapped in a direction while any live mapping in that direction
    covers it. ``unmap`` must name a live mapping exactly (address, length,
    direction), as the DMA API requires.
    """

    def __init__(self):
        self._live = Counter()                       # Mapping -> times mapped
        self._pages = defaultdict(Counter)           # (direction, page) -> Mapping -> times

    def __len__(self):
        return sum(self._live.values())

    def live(self, direction=None):
        """The live mappings (each once per time mapped), lowest address first."""
        found = [m for m, times in self._live.items() for _ in range(times)
                 if direction is None or m.direction == direction]
        return sorted(found, key=lambda m: (m.addr, m.length, m.direction.value))

    @staticmethod
    def _pages_of(addr, length):
        return range(addr // PAGE_BYTES, (addr + length - 1) // PAGE_BYTES + 1)

    @staticmethod
    def _check_args(addr, length, direction):
        if not isinstance(direction, DmaDirection):
            raise DmaMappingError(f"direction {direction!r} is not a DmaDirection")
        if addr < 0 or length <= 0:
            raise DmaMappingError(f"cannot map {length} bytes at {addr:#x}")

    def map(self, addr, length, direction):
        self._check_args(addr, length, direction)
        mapping = Mapping(addr, length, direction)
        self._live[mapping] += 1
        for page in self._pages_of(addr, length):
            self._pages[direction, page][mapping] += 1
        return mapping

    def unmap(self, addr, length, direction):
        self._check_args(addr, length, direction)
        mapping = Mapping(addr, length, direction)
        if not self._live.get(mapping):
            overlapping = [str(m) for m in self.live() if m.addr < addr + length and addr < m.end]
            raise DmaMappingError(
                f"unmap of {mapping}, which is not mapped"
                + (f" (live mappings there: {', '.join(overlapping)})" if overlapping else ""))
        self._remove(self._live, mapping)
        for page in self._pages_of(addr, length):
            self._remove(self._pages[direction, page], mapping)
            if not self._pages[direction, page]:
                del self._pages[direction, page]

    @staticmethod
    def _remove(counter, key):
        counter[key] -= 1
        if not counter[key]:
            del counter[key]

    def uncovered(self, addr, length, direction=DmaDirection.FROM_DEVICE):
        """The byte ranges [start, end) of [addr, addr + length) that no live
        mapping in ``direction`` covers (empty: all covered)."""
        if length <= 0:
            return []
        end = addr + length
        intervals = set()
        for page in self._pages_of(addr, length):
            for m in self._pages.get((direction, page), ()):
                if m.addr < end and addr < m.end:
                    intervals.add((max(m.addr, addr), min(m.end, end)))
        gaps = []
        cursor = addr
        for start, stop in sorted(intervals):
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, stop)
        if cursor < end:
            gaps.append((cursor, end))
        return gaps

    def covered(self, addr, length, direction=DmaDirection.FROM_DEVICE):
        return not self.uncovered(addr, length, direction)


class HostMemoryGuard:
    """Checks every memory write the device makes against the FROM_DEVICE mappings.

    ``rc``: the cocotbext-pcie RootComplex (hooked at construction, see the
    module docstring). ``map``/``unmap`` are fed by the transport's
    ``dma_map``/``dma_unmap``.

    A violation is logged as an error when the write arrives, kept in
    ``violations``, and raised by `check` (AssertionError listing them all).
    With ``fail_fast`` it is also raised from the root complex's TLP task,
    which fails the cocotb test at once (after the write was done).

    ``stats`` counts device writes into host memory (TLPs, bytes) and MSI
    messages; ``writes`` keeps each host memory write (`DeviceWrite`).
    """

    def __init__(self, rc, *, fail_fast=False, log=None):
        self.rc = rc
        self.fail_fast = fail_fast
        self.log = log or logging.getLogger("cocotb.tb.host_memory")
        self.mappings = DmaMappings()
        self.violations = []
        self.writes = []
        self.stats = DeviceWriteStats()
        msi = rc.msi_region
        self.msi_base = msi.get_absolute_address(0)
        self.msi_size = msi.size
        self._forward = {}
        self.attach()

    def attach(self):
        """Put the guard in front of the root complex's MWr handlers (once)."""
        for fmt_type in MEM_WRITE_TYPES:
            handler = self.rc.rx_tlp_handler[fmt_type]
            if getattr(handler, "__self__", None) is self:
                continue
            self._forward[fmt_type] = handler
            self.rc.register_rx_tlp_handler(fmt_type, self._on_mem_write)

    # --- the DMA API side ----------------------------------------------------

    def map(self, addr, length, direction):
        self.mappings.map(addr, length, direction)

    def unmap(self, addr, length, direction):
        self.mappings.unmap(addr, length, direction)

    # --- the device side -----------------------------------------------------

    async def _on_mem_write(self, tlp):
        violation = self.observe_tlp(tlp, time_ns=_now_ns())
        await self._forward[tlp.fmt_type](tlp)
        if violation is not None and self.fail_fast:
            raise AssertionError(str(violation))

    def observe_tlp(self, tlp, time_ns=None):
        """Check a MWr TLP from the device; return its Violation or None."""
        spans = written_spans(tlp.address, tlp.length, tlp.first_be, tlp.last_be)
        return self.observe_write(tlp.address, tlp.length * DW_BYTES, spans, time_ns=time_ns,
                                  requester=str(tlp.requester_id))

    def observe_write(self, addr, length, spans, *, time_ns=None, requester=None):
        """Check a device write of byte runs ``spans`` [(addr, length)] within
        [addr, addr + length); return its Violation or None."""
        if self.msi_base <= addr < self.msi_base + self.msi_size:
            self.stats.msi_writes += 1
            if spans == [(self.msi_base, MSI_MESSAGE_BYTES)]:
                return None
            return self._violation(addr, length, tuple((a, a + n) for a, n in spans),
                                   "not an MSI message (one DW at the MSI address)",
                                   time_ns, requester)
        self.stats.writes += 1
        self.stats.bytes += sum(n for _, n in spans)
        self.writes.append(DeviceWrite(addr, length, tuple(spans), time_ns))
        outside = []
        for start, n in spans:
            outside.extend(self.mappings.uncovered(start, n))
        if not outside:
            return None
        return self._violation(addr, length, tuple(outside),
                               "outside every FROM_DEVICE mapping", time_ns, requester)

    def _violation(self, addr, length, outside, reason, time_ns, requester):
        violation = Violation(addr, length, outside, reason, time_ns, requester)
        self.violations.append(violation)
        self.log.error("%s", violation)
        return violation

    def written(self, addr, length):
        """The device's host memory writes that touched [addr, addr + length)."""
        return [w for w in self.writes
                if any(a < addr + length and addr < a + n for a, n in w.spans)]

    def check(self):
        """Raise AssertionError listing every violation so far."""
        if self.violations:
            lines = "\n  ".join(str(v) for v in self.violations)
            raise AssertionError(
                f"{len(self.violations)} device write(s) outside the DMA mappings:\n  {lines}")


def _now_ns():
    """Simulated time in ns; None outside a simulator (the unit tests)."""
    from cocotb.simtime import get_sim_time
    try:
        return get_sim_time("ns")
    except RuntimeError:
        return None
