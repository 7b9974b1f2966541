"""A behavioural host for Amaranth-simulator tests of the DMA requester:
decode memory request TLPs (as the core's DW streams carry them, see
hdl/pcie/tlp.py) and build completions (PCIe Base 4.0 sections 2.2.4, 2.2.5,
2.2.9, 2.3.1.1). No Amaranth import.
"""
import random

from hdl import spec

__all__ = ["HostMemory", "MemRequest", "parse_request", "completion", "split_at_rcb",
           "dw_bytes", "bytes_dw"]

LANES = 4
_LENGTH_FIELD = 1 << 10
_TYPE_MASK = 0x1F


def dw_bytes(dw):
    """A payload DW's bytes in address order."""
    return dw.to_bytes(LANES, "little")


def bytes_dw(four):
    return int.from_bytes(bytes(four), "little")


def _lanes(be):
    return [lane for lane in range(LANES) if be >> lane & 1]


def _contiguous(be):
    lanes = _lanes(be)
    return bool(lanes) and lanes == list(range(lanes[0], lanes[-1] + 1))


class HostMemory:
    """Sparse byte-addressed memory; bytes never written read as a fixed
    pseudo-random value of their address (so a test can tell them apart)."""

    def __init__(self, seed=0):
        self.seed = seed
        self.written = {}

    def initial(self, addr):
        return random.Random(self.seed * 0x9E3779B97F4A7C15 + addr).getrandbits(8)

    def __getitem__(self, addr):
        return self.written.get(addr, self.initial(addr))

    def write(self, addr, value):
        self.written[addr] = value

    def read(self, addr, length):
        return bytes(self[addr + n] for n in range(length))


class MemRequest:
    """A decoded MRd or MWr TLP (fields as the spec names them)."""

    def __init__(self, dws):
        dw0, dw1 = dws[0], dws[1]
        self.fmt = dw0 >> 29
        self.type = dw0 >> 24 & _TYPE_MASK
        self.fmt_type = dw0 >> 24
        self.tc = dw0 >> 20 & 0b111
        self.td = dw0 >> 15 & 1
        self.ep = dw0 >> 14 & 1
        self.attr = dw0 >> 12 & 0b11
        self.at = dw0 >> 10 & 0b11
        field = dw0 & (_LENGTH_FIELD - 1)
        self.length_dw = field or _LENGTH_FIELD
        self.requester_id = dw1 >> 16
        self.tag = dw1 >> 8 & 0xFF
        self.last_be = dw1 >> 4 & 0xF
        self.first_be = dw1 & 0xF
        self.header_dws = 4 if self.fmt in (spec.TlpFmt.DW4_DATA, spec.TlpFmt.DW4_NODATA) else 3
        if self.header_dws == 4:
            self.addr = dws[2] << 32 | dws[3]
        else:
            self.addr = dws[2]
        self.addr_reserved = self.addr & 0b11
        self.dw_addr = self.addr & ~0b11
        self.payload = dws[self.header_dws:]

    @property
    def with_data(self):
        return self.fmt in (spec.TlpFmt.DW3_DATA, spec.TlpFmt.DW4_DATA)

    def check_byte_enables(self):
        """Section 2.2.5 for contiguous requests: a one-DW request has Last BE
        0; a longer one has a First BE that reaches lane 3 and a Last BE that
        starts at lane 0, both non-zero. Returns the problem or None."""
        if self.length_dw == 1:
            if self.last_be != 0:
                return f"1-DW request with Last BE {self.last_be:04b}"
            if not _contiguous(self.first_be):
                return f"1-DW request with First BE {self.first_be:04b}"
            return None
        if not _contiguous(self.first_be) or not self.first_be >> (LANES - 1) & 1:
            return f"First BE {self.first_be:04b} does not run up to lane 3"
        if not _contiguous(self.last_be) or not self.last_be & 1:
            return f"Last BE {self.last_be:04b} does not start at lane 0"
        return None

    def byte_range(self):
        """(first byte address, byte count) of a contiguous request."""
        first = self.dw_addr + _lanes(self.first_be)[0]
        if self.length_dw == 1:
            end = self.dw_addr + _lanes(self.first_be)[-1] + 1
        else:
            end = self.dw_addr + LANES * (self.length_dw - 1) + _lanes(self.last_be)[-1] + 1
        return first, end - first

    def enabled_bytes(self):
        """[(address, payload byte)] of a memory write, byte enables applied."""
        out = []
        for index, dw in enumerate(self.payload):
            if index == 0:
                be = self.first_be
            elif index == self.length_dw - 1:
                be = self.last_be
            else:
                be = (1 << LANES) - 1
            for lane in _lanes(be):
                out.append((self.dw_addr + LANES * index + lane, dw_bytes(dw)[lane]))
        return out


def parse_request(dws):
    return MemRequest(dws)


def completion(*, requester_id, completer_id, tag, status, byte_count, lower_address,
               payload=(), ep=False, length=None):
    """A Cpl (no payload) or CplD as DWs (section 2.2.9). ``length`` overrides
    the Length field (to make a malformed TLP)."""
    fmt_type = spec.TlpFmtType.CPLD if payload else spec.TlpFmtType.CPL
    length = (len(payload) if length is None else length) % _LENGTH_FIELD
    dw0 = fmt_type << 24 | int(ep) << 14 | length
    dw1 = completer_id << 16 | status << 13 | byte_count % (1 << spec.PCIE_BYTE_COUNT_BITS)
    dw2 = requester_id << 16 | tag << 8 | lower_address % (1 << spec.PCIE_LOWER_ADDRESS_BITS)
    return [dw0, dw1, dw2] + list(payload)


def split_at_rcb(rng, addr, length, *, rcb=spec.PCIE_RCB_BYTES, max_bytes=256):
    """Split a read of ``length`` bytes at ``addr`` into completions that end
    on Read Completion Boundaries (section 2.3.1.1): [(addr, nbytes)]. Sizes
    are random multiples of the RCB up to ``max_bytes``."""
    chunks = []
    end = addr + length
    while addr < end:
        boundary = (addr // rcb + 1) * rcb
        boundary += rcb * rng.randrange(max_bytes // rcb)
        stop = min(end, boundary)
        chunks.append((addr, stop - addr))
        addr = stop
    return chunks
