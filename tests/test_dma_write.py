"""DmaWriter against a behavioural host: MWr TLPs checked field by field and
applied to a memory model; only the requested bytes may change."""
import random

import pytest

from hdl import spec
from hdl.pcie.dma_write import DmaWriter
from sim.amaranth_host import HostMemory, parse_request
from tests.amaranth_sim import simulate

REQUESTER_ID = 0x0208
FOUR_GIB = 1 << 32
PAGE = spec.PCIE_REQUEST_BOUNDARY_BYTES


def random_write(rng, max_length):
    length = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, rng.randint(1, 70)]
                        + [rng.randint(1, max_length), rng.randint(max_length // 2, max_length)] * 3)
    base = rng.choice([0x0010_0000, 0x7FFF_E000, 0x3_0000_0000, 0xFFFF_FFFF_FFF0_0000])
    page = rng.randrange(8) * PAGE
    if rng.random() < 0.4:
        offset = PAGE - rng.randint(1, min(length + 8, PAGE))     # crosses the page end
    else:
        offset = rng.randrange(PAGE)
    addr = base + page + offset
    return addr, bytes(rng.getrandbits(8) for _ in range(length))


def source_dws(rng, data):
    """Source-aligned DWs of a write; junk past its end in the last DW."""
    padded = data + bytes(rng.getrandbits(8) for _ in range(-len(data) % 4))
    return [int.from_bytes(padded[n:n + 4], "little") for n in range(0, len(padded), 4)]


def run_writes(seed, *, n_writes=0, mps, writes=None, max_length=2000, p_req=0.6, p_data=0.7,
               p_ready=0.7, bus_master_off=(), max_cycles=100_000):
    rng = random.Random(seed)
    memory = HostMemory(seed)
    writes = writes or [random_write(rng, max_length) for _ in range(n_writes)]
    dws = []
    for _, data in writes:
        source = source_dws(rng, data)
        dws += [(dw, n == len(source) - 1) for n, dw in enumerate(source)]
    dut = DmaWriter()
    size = spec.pcie_size_bytes(mps)
    result = {"tlps": 0, "gaps": 0, "header_dws": 0, "payload_dws": 0}

    async def tb(ctx):
        ctx.set(dut.requester_id, REQUESTER_ID)
        ctx.set(dut.mps, mps)
        req_index, req_valid = 0, False
        dw_index, dw_valid = 0, False
        write_index, write_pos = 0, 0        # where the next MWr must start
        tlp_dws = []
        accepted = finished = 0
        prev_bus_master = 1
        offered_before = False
        in_payload = False
        cycle = 0
        while write_index < len(writes) or req_index < len(writes):
            assert cycle < max_cycles, f"writer stopped at write {write_index} of {len(writes)}"
            bus_master = int(not any(a <= cycle < b for a, b in bus_master_off))
            ctx.set(dut.bus_master, bus_master)
            if not req_valid and req_index < len(writes):
                req_valid = rng.random() < p_req
            ctx.set(dut.client.req.valid, req_valid)
            if req_valid:
                addr, data = writes[req_index]
                ctx.set(dut.client.req.payload, {"addr": addr, "length": len(data)})
            # the data stream runs ahead of the requests as it likes
            if not dw_valid and dw_index < len(dws):
                dw_valid = rng.random() < p_data
            ctx.set(dut.client.data.valid, dw_valid)
            if dw_valid:
                dw, last = dws[dw_index]
                ctx.set(dut.client.data.payload, {"data": dw, "last": last, "error": 0})
            ready = rng.random() < p_ready
            ctx.set(dut.tlp.ready, ready)

            # busy: from the cycle after a request is taken to its last TLP DW
            assert ctx.get(dut.client.busy) == (accepted > finished), \
                f"busy {ctx.get(dut.client.busy)} with {accepted - finished} writes under way"

            if req_valid and ctx.get(dut.client.req.ready):
                req_index += 1
                req_valid = False
                if len(writes[req_index - 1][1]):
                    accepted += 1
                elif write_index == req_index - 1:
                    write_index += 1                 # an empty write: no TLP
            if dw_valid and ctx.get(dut.client.data.ready):
                dw_index += 1
                dw_valid = False

            valid = ctx.get(dut.tlp.valid)
            if valid:
                first_dw = ctx.get(dut.tlp.payload.first)
                if first_dw and not tlp_dws:
                    assert prev_bus_master or offered_before, \
                        "an MWr started without Bus Master Enable"
                offered_before = True
            else:
                offered_before = False
                if in_payload:
                    result["gaps"] += 1
            if valid and ready:
                dw = ctx.get(dut.tlp.payload.data)
                assert bool(first_dw) == (not tlp_dws), "first flag misplaced"
                tlp_dws.append(dw)
                if len(tlp_dws) == 3:
                    header_dws = parse_request(tlp_dws + [0]).header_dws
                    in_payload = header_dws == 3
                elif len(tlp_dws) == 4:
                    in_payload = True
                if ctx.get(dut.tlp.payload.last):
                    req = parse_request(tlp_dws)
                    first, nbytes = check_mwr(req, size)
                    addr, data = writes[write_index]
                    assert first == addr + write_pos, \
                        f"MWr at {first:#x}, expected {addr + write_pos:#x}"
                    assert nbytes <= len(data) - write_pos, "MWr beyond the write"
                    for byte_addr, value in req.enabled_bytes():
                        memory.write(byte_addr, value)
                    write_pos += nbytes
                    if write_pos < len(data):
                        assert (first + nbytes) % size == 0, \
                            "an inner MWr stops short of the MPS boundary"
                    else:
                        write_index, write_pos = write_index + 1, 0
                        finished += 1
                        while write_index < len(writes) and not writes[write_index][1] \
                                and write_index < req_index:
                            write_index += 1
                    result["tlps"] += 1
                    result["header_dws"] += req.header_dws
                    result["payload_dws"] += req.length_dw
                    tlp_dws = []
                    in_payload = False
                    offered_before = False
            prev_bus_master = bus_master
            await ctx.tick()
            cycle += 1
        await ctx.tick()
        assert not ctx.get(dut.client.busy), "busy after the last write"
        result["cycles"] = cycle

    simulate(dut, tb)

    expected = {}
    for addr, data in writes:
        for n, value in enumerate(data):
            expected[addr + n] = value
    assert memory.written.keys() == expected.keys(), "bytes outside the writes changed"
    assert memory.written == expected, "written bytes differ"
    return result


def check_mwr(req, size):
    """Field checks of one MWr (sections 2.2.2, 2.2.4.1, 2.2.5, 2.2.7);
    returns (first byte address, byte count)."""
    above = req.dw_addr >= FOUR_GIB
    assert req.header_dws == (4 if above else 3), "32-bit header required below 4 GiB"
    assert req.fmt_type == (spec.TlpFmtType.MWR64 if above else spec.TlpFmtType.MWR32)
    assert (req.tc, req.td, req.ep, req.attr, req.at) == (0, 0, 0, 0, 0)
    assert req.requester_id == REQUESTER_ID
    assert req.addr_reserved == 0
    assert len(req.payload) == req.length_dw, "payload DWs differ from Length"
    problem = req.check_byte_enables()
    assert problem is None, problem
    assert req.length_dw * 4 <= size, f"MWr of {req.length_dw} DWs above MPS {size}"
    first, nbytes = req.byte_range()
    assert first // PAGE == (first + nbytes - 1) // PAGE, "MWr crosses a 4 KiB boundary"
    return first, nbytes


@pytest.mark.parametrize("seed,mps", [(1, 0), (2, 1), (3, 2)])
def test_random_writes_land_byte_exact(seed, mps):
    r = run_writes(seed, n_writes=25, mps=mps)
    assert r["tlps"] >= 25


def test_small_writes_every_alignment():
    """Every (address lane, length 1..9) pair, byte enables included: a 2-byte
    write at lane 2 is one DW with First BE 1100, Last BE 0."""
    rng = random.Random(4)
    writes = [(0x0800_0000 + 64 * n + lane, bytes(rng.getrandbits(8) for _ in range(length)))
              for n, (lane, length) in enumerate((lane, length) for lane in range(4)
                                                  for length in range(1, 10))]
    writes.insert(5, (0x0900_0001, b""))        # an empty write: taken, no TLP
    r = run_writes(4, mps=0, writes=writes, p_req=0.8, p_data=0.8, p_ready=0.8)
    assert r["tlps"] == len(writes) - 1


def test_one_dw_write_byte_enables():
    """The header of a 2-byte write at address 2 mod 4, decoded bit by bit."""
    seen = []
    dut = DmaWriter()

    async def tb(ctx):
        ctx.set(dut.requester_id, REQUESTER_ID)
        ctx.set(dut.bus_master, 1)
        ctx.set(dut.tlp.ready, 1)
        ctx.set(dut.client.req.valid, 1)
        ctx.set(dut.client.req.payload, {"addr": 0x1000_0006, "length": 2})
        ctx.set(dut.client.data.valid, 1)
        ctx.set(dut.client.data.payload, {"data": 0xEEEE_BBAA, "last": 1})
        for _ in range(12):
            if ctx.get(dut.tlp.valid):
                seen.append(ctx.get(dut.tlp.payload.data))
            took_req = ctx.get(dut.client.req.ready)
            took_data = ctx.get(dut.client.data.valid) and ctx.get(dut.client.data.ready)
            await ctx.tick()
            if took_req:
                ctx.set(dut.client.req.valid, 0)
            if took_data:
                ctx.set(dut.client.data.valid, 0)

    simulate(dut, tb)
    dw0, dw1, addr, payload = seen
    assert dw0 == spec.TlpFmtType.MWR32 << 24 | 1
    assert dw1 == REQUESTER_ID << 16 | 0b0000_1100
    assert addr == 0x1000_0004
    assert payload >> 16 == 0xBBAA


def test_no_tlp_without_bus_master():
    run_writes(5, n_writes=8, mps=0, max_length=900,
               bus_master_off=[(0, 200), (400, 900), (1200, 1500)])


def test_full_rate():
    """No stalls: payload DWs back to back inside each TLP; per TLP the header
    and one cycle; per write up to three more cycles."""
    rng = random.Random(6)
    writes = [random_write(rng, 1500) for _ in range(8)]
    r = run_writes(6, mps=1, writes=writes, p_req=1.0, p_data=1.0, p_ready=1.0)
    assert r["gaps"] == 0, "gaps inside TLP payloads"
    budget = r["header_dws"] + r["payload_dws"] + r["tlps"] + 3 * len(writes) + 4
    assert r["cycles"] <= budget, f"{r['cycles']} cycles, budget {budget}"
