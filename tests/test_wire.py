"""The testbench's own models: host memory guard (pure Python), and the wire
models, pcap and guard in the simulator (sim/cocotb_tests/wire.py)."""
import asyncio
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from cocotbext.pcie.core.tlp import Tlp, TlpType

from driver.transport import DmaDirection
from hdl.top import CoreParams
from sim.build import run_cocotb
from sim.host_memory import DmaMappingError, DmaMappings, HostMemoryGuard, written_spans
from sim.tests_results import cases, failed_cases
from sim.wire import frame_to_beats, pack_beat, unpack_beat

FROM, TO = DmaDirection.FROM_DEVICE, DmaDirection.TO_DEVICE
WIRE_CASES = ["echo_frames", "guard_catches_device_writes"]


# --- DMA mapping bookkeeping ----------------------------------------------------

def test_overlapping_maps_cover_their_union():
    maps = DmaMappings()
    maps.map(0x1000, 0x100, FROM)
    maps.map(0x1080, 0x100, FROM)
    assert maps.covered(0x1000, 0x180)
    assert maps.uncovered(0x0FFE, 0x184) == [(0x0FFE, 0x1000), (0x1180, 0x1182)]
    assert maps.uncovered(0x2000, 4) == [(0x2000, 0x2004)]


def test_direction_matters():
    maps = DmaMappings()
    maps.map(0x1000, 0x100, TO)
    assert maps.uncovered(0x1000, 4) == [(0x1000, 0x1004)]
    assert maps.covered(0x1000, 4, TO)


def test_unmap_closes_only_its_own_range():
    maps = DmaMappings()
    maps.map(0x1000, 0x100, FROM)
    maps.map(0x1080, 0x100, FROM)
    maps.unmap(0x1000, 0x100, FROM)
    assert maps.uncovered(0x1000, 0x100) == [(0x1000, 0x1080)]
    assert maps.covered(0x1080, 0x100)
    maps.unmap(0x1080, 0x100, FROM)
    assert len(maps) == 0 and maps.uncovered(0x1080, 1) == [(0x1080, 0x1081)]


def test_same_range_mapped_twice_needs_two_unmaps():
    maps = DmaMappings()
    maps.map(0x1000, 64, FROM)
    maps.map(0x1000, 64, FROM)
    maps.unmap(0x1000, 64, FROM)
    assert maps.covered(0x1000, 64)
    maps.unmap(0x1000, 64, FROM)
    assert not maps.covered(0x1000, 64)


@pytest.mark.parametrize("addr,length,direction", [
    (0x1000, 32, FROM),          # shorter than mapped
    (0x1004, 64, FROM),          # another start
    (0x1000, 64, TO),            # another direction
    (0x5000, 64, FROM),          # never mapped
])
def test_unmap_must_name_a_live_mapping(addr, length, direction):
    maps = DmaMappings()
    maps.map(0x1000, 64, FROM)
    with pytest.raises(DmaMappingError):
        maps.unmap(addr, length, direction)
    assert maps.covered(0x1000, 64)


@pytest.mark.parametrize("args", [(0x1000, 0, FROM), (-4, 8, FROM), (0x1000, 8, "from_device")])
def test_bad_map_arguments(args):
    with pytest.raises(DmaMappingError):
        DmaMappings().map(*args)


def test_mappings_across_pages():
    maps = DmaMappings()
    maps.map(0x0F00, 0x3000, FROM)          # pages 0..3
    assert maps.covered(0x0FFC, 8)
    assert maps.uncovered(0x3EFC, 8) == [(0x3F00, 0x3F04)]


# --- which bytes a MWr TLP writes --------------------------------------------------

@pytest.mark.parametrize("addr,length", [(0x100, 4), (0x101, 1), (0x102, 5), (0x13E, 40),
                                          (0x100, 256), (0x103, 2)])
def test_written_spans_match_tlp_byte_enables(addr, length):
    tlp = Tlp()
    tlp.fmt_type = TlpType.MEM_WRITE
    tlp.set_addr_be_data(addr, bytes(length))
    assert written_spans(tlp.address, tlp.length, tlp.first_be, tlp.last_be) == [(addr, length)]


def test_written_spans_with_holes():
    # one DW, bytes 0 and 3 (PCIe allows non-contiguous enables in a 1-DW write)
    assert written_spans(0x200, 1, 0b1001, 0) == [(0x200, 1), (0x203, 1)]
    assert written_spans(0x200, 1, 0, 0) == []           # zero-length write
    assert written_spans(0x200, 3, 0b1100, 0b0011) == [(0x202, 8)]


# --- the guard, on a stand-in root complex -------------------------------------------

MSI_BASE = 0x8000_0000


class _MsiRegion:
    size = 16

    def get_absolute_address(self, offset):
        return MSI_BASE + offset


class _FakeRootComplex:
    """What HostMemoryGuard uses of cocotbext-pcie's RootComplex."""

    def __init__(self):
        self.msi_region = _MsiRegion()
        self.done = []
        self.rx_tlp_handler = {TlpType.MEM_WRITE: self.handle_mem_write_tlp,
                               TlpType.MEM_WRITE_64: self.handle_mem_write_tlp}

    def register_rx_tlp_handler(self, fmt_type, func):
        self.rx_tlp_handler[fmt_type] = func

    async def handle_mem_write_tlp(self, tlp):
        self.done.append(tlp)


def _mwr(addr, data):
    tlp = Tlp()
    tlp.fmt_type = TlpType.MEM_WRITE
    tlp.set_addr_be_data(addr, data)
    return tlp


def _deliver(rc, tlp):
    asyncio.run(rc.rx_tlp_handler[tlp.fmt_type](tlp))


def test_guard_flags_partial_overlap_and_forwards_every_write():
    rc = _FakeRootComplex()
    guard = HostMemoryGuard(rc)
    guard.map(0x1000, 0x40, FROM)
    inside, partial = _mwr(0x1010, bytes(16)), _mwr(0x103E, bytes(6))
    _deliver(rc, inside)
    _deliver(rc, partial)
    assert rc.done == [inside, partial], "the root complex's handler must still write"
    assert len(guard.violations) == 1
    violation = guard.violations[0]
    assert violation.outside == ((0x1040, 0x1044),)
    assert (violation.addr, violation.length) == (0x103C, 8)
    assert guard.stats.writes == 2 and guard.stats.bytes == 22
    with pytest.raises(AssertionError, match="0x1040"):
        guard.check()


def test_guard_lets_msi_messages_through():
    rc = _FakeRootComplex()
    guard = HostMemoryGuard(rc)
    _deliver(rc, _mwr(MSI_BASE, (3).to_bytes(4, "little")))
    assert guard.stats.msi_writes == 1 and guard.stats.writes == 0
    guard.check()
    _deliver(rc, _mwr(MSI_BASE + 4, bytes(8)))          # not a message
    assert len(guard.violations) == 1


def test_guard_hooks_once():
    rc = _FakeRootComplex()
    guard = HostMemoryGuard(rc)
    guard.attach()
    _deliver(rc, _mwr(0x1000, bytes(4)))
    assert guard.stats.writes == 1 and len(rc.done) == 1


def test_guard_fail_fast_raises_after_the_write():
    rc = _FakeRootComplex()
    guard = HostMemoryGuard(rc, fail_fast=True)
    with pytest.raises(AssertionError, match="outside every FROM_DEVICE mapping"):
        _deliver(rc, _mwr(0x1000, bytes(4)))
    assert len(rc.done) == 1 and len(guard.violations) == 1


# --- frame beats ------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 60, 61, 62, 63, 1514])
def test_frame_beats_round_trip(length):
    data = bytes((i * 7) & 0xFF for i in range(length))
    beats = frame_to_beats(data)
    assert len(beats) == -(-length // 4)
    assert all(keep == 0xF and not last for _, keep, last in beats[:-1])
    assert beats[-1][2] and beats[-1][1] == (1 << (length - 4 * (len(beats) - 1))) - 1
    for beat in beats:
        assert unpack_beat(pack_beat(*beat)) == beat


# --- in the simulator -------------------------------------------------------------

def _skipped_cases(results_xml):
    return [c.get("name") for c in ET.parse(results_xml).iter("testcase")
            if c.find("skipped") is not None]


@pytest.mark.system
def test_wire_models_in_simulation(tmp_path):
    results = run_cocotb(CoreParams(), "sim.cocotb_tests.wire", WIRE_CASES,
                         env={"VNF_OUT": str(tmp_path)})
    assert cases(results) == WIRE_CASES
    assert not failed_cases(results), f"cocotb tests failed: {failed_cases(results)}"
    assert not _skipped_cases(results)
    pcap = tmp_path / "wire.pcapng"
    assert pcap.exists()
    assert shutil.which("tshark"), "tshark is needed to dissect the capture (Debian package tshark)"
    _check_with_tshark(pcap)


def _tshark(pcap, *args):
    done = subprocess.run(["tshark", "-n", "-r", str(pcap), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _check_with_tshark(pcap):
    rows = [line.split("\t") for line in _tshark(
        pcap, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.packet_flags_direction",
        "-e", "frame.len", "-e", "frame.protocols")]
    assert len(rows) == 200
    by_port = {}
    for name, direction, length, protocols in rows:
        by_port.setdefault(name, []).append((int(direction, 0), int(length), protocols))
    assert sorted(by_port) == ["wire_rx", "wire_tx"]
    assert {d for d, _, _ in by_port["wire_rx"]} == {1}       # inbound
    assert {d for d, _, _ in by_port["wire_tx"]} == {2}       # outbound
    # (protocols differ between the copies: tshark takes the second TCP copy for a retransmission)
    lengths = [length for _, length, _ in by_port["wire_tx"]]
    assert lengths == [length for _, length, _ in by_port["wire_rx"]]
    assert min(lengths) == 60 and max(lengths) == 1514
    protocols = ":".join(p for _, _, p in by_port["wire_tx"]).split(":")
    for expected in ("arp", "ip", "udp", "tcp", "icmp", "ipv6", "icmpv6", "vlan"):
        assert expected in protocols, expected
    assert not _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= error")
    assert not _tshark(pcap, "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                       "-o", "tcp.check_checksum:TRUE",
                       "-Y", "ip.checksum.status == \"Bad\" || udp.checksum.status == \"Bad\""
                             " || tcp.checksum.status == \"Bad\"")
