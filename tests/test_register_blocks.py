"""Register-bus blocks: decoder, ISR, notify region, MSI-X table/PBA, config space."""
import random

import pytest

from hdl import spec
from hdl.pcie.msix import MsixTable
from hdl.pcie.register_bus import RegisterDecoder
from hdl.top import VirtioNetCore
from hdl.virtio.isr import IsrStatus
from hdl.virtio.notify import NotifyRegion
from tests.amaranth_sim import simulate

# VirtioNetCore() builds blocks these tests do not elaborate
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")


def idle(ctx, bus):
    ctx.set(bus.r_stb, 0)
    ctx.set(bus.w_stb, 0)


async def bus_read(ctx, bus, addr, be=0b1111):
    """Strobe a read for one cycle; return r_data the cycle after."""
    ctx.set(bus.addr, addr)
    ctx.set(bus.be, be)
    ctx.set(bus.r_stb, 1)
    ctx.set(bus.w_stb, 0)
    await ctx.tick()
    ctx.set(bus.r_stb, 0)
    return ctx.get(bus.r_data)


async def bus_write(ctx, bus, addr, data, be=0b1111):
    ctx.set(bus.addr, addr)
    ctx.set(bus.be, be)
    ctx.set(bus.w_data, data)
    ctx.set(bus.w_stb, 1)
    ctx.set(bus.r_stb, 0)
    await ctx.tick()
    ctx.set(bus.w_stb, 0)


def be_mask(be):
    return sum(0xFF << (8 * n) for n in range(4) if be >> n & 1)


# --- RegisterDecoder ---------------------------------------------------------

WINDOWS = [("a", 0x00, 4), ("b", 0x20, 3), ("c", 0x40, 5)]   # 0x10-0x1F, 0x28-0x3F, 0x60-0xFF unmapped


def window_of(addr):
    for name, offset, width in WINDOWS:
        if offset <= addr < offset + (1 << width):
            return name, addr - offset
    return None, None


def sub_value(name, offset):
    """What subordinate `name` answers for a read at `offset`."""
    return (ord(name) << 24 | 0x5A << 16 | offset) & 0xFFFFFFFF


def test_decoder_routes_by_window_with_one_cycle_latency():
    rng = random.Random(1)
    dut = RegisterDecoder(8, WINDOWS)
    subs = {name: getattr(dut, name) for name, _, _ in WINDOWS}

    async def tb(ctx):
        answers = {}              # subordinate r_data for this cycle (reads of last cycle)
        expected = None           # bus r_data this cycle, for last cycle's read
        for cycle in range(600):
            # subordinates answer last cycle's reads; the others show garbage
            for name, sub in subs.items():
                ctx.set(sub.r_data, answers.get(name, rng.getrandbits(32)))
            if expected is not None:
                assert ctx.get(dut.bus.r_data) == expected, f"cycle {cycle}"

            kind = rng.choice(["read", "read", "write", "idle"])
            # bias towards window edges and unmapped holes
            addr = rng.choice([rng.getrandbits(8), 0x0F, 0x10, 0x1F, 0x20, 0x27, 0x28,
                               0x3F, 0x40, 0x5F, 0x60, 0xFF])
            be, w_data = rng.getrandbits(4), rng.getrandbits(32)
            ctx.set(dut.bus.addr, addr)
            ctx.set(dut.bus.be, be)
            ctx.set(dut.bus.w_data, w_data)
            ctx.set(dut.bus.r_stb, kind == "read")
            ctx.set(dut.bus.w_stb, kind == "write")

            target, offset = window_of(addr)
            answers = {}
            for name, sub in subs.items():
                hit = name == target
                assert ctx.get(sub.r_stb) == (hit and kind == "read")
                assert ctx.get(sub.w_stb) == (hit and kind == "write")
                if hit:
                    assert ctx.get(sub.addr) == offset
                    assert ctx.get(sub.be) == be
                    assert ctx.get(sub.w_data) == w_data
                if ctx.get(sub.r_stb):
                    answers[name] = sub_value(name, ctx.get(sub.addr))
            if kind == "read":
                expected = sub_value(target, offset) if target else 0
            else:
                expected = None           # r_data undefined without a read
            await ctx.tick()

    simulate(dut, tb)


def test_decoder_rejects_bad_windows():
    with pytest.raises(ValueError):
        RegisterDecoder(8, [("x", 0x08, 4)])        # not aligned
    with pytest.raises(ValueError):
        RegisterDecoder(6, [("x", 0x40, 4)])        # past the end


# --- IsrStatus ----------------------------------------------------------------

Q, C = int(spec.VirtioIsr.QUEUE), int(spec.VirtioIsr.CONFIG)


async def pulse(ctx, *signals):
    for s in signals:
        ctx.set(s, 1)
    await ctx.tick()
    for s in signals:
        ctx.set(s, 0)


def test_isr_read_clears_only_byte_0():
    dut = IsrStatus()

    async def tb(ctx):
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == 0
        await pulse(ctx, dut.queue)
        # reads that do not take byte 0 show the value but keep it
        assert await bus_read(ctx, dut.bus, 0, 0b1110) == Q
        assert await bus_read(ctx, dut.bus, 1, 0b1111) == 0          # second DW: nothing
        assert await bus_read(ctx, dut.bus, 0, 0b0000) == Q
        await pulse(ctx, dut.config)
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == Q | C       # this one clears
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == 0
        # a write does not clear or set
        await pulse(ctx, dut.queue)
        await bus_write(ctx, dut.bus, 0, 0xFF, 0b1111)
        assert await bus_read(ctx, dut.bus, 0, 0b1111) == Q
        assert await bus_read(ctx, dut.bus, 0, 0b1111) == 0
        # device reset clears
        await pulse(ctx, dut.queue, dut.config)
        await pulse(ctx, dut.reset)
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == 0

    simulate(dut, tb)


@pytest.mark.parametrize("event", ["queue", "config"])
def test_isr_event_with_clearing_read_is_kept(event):
    dut = IsrStatus()
    bit = Q if event == "queue" else C
    other = C if event == "queue" else Q

    async def tb(ctx):
        await pulse(ctx, dut.queue if event == "config" else dut.config)   # the other bit set
        # the clearing read and the event in the same cycle
        ctx.set(getattr(dut, event), 1)
        value = await bus_read(ctx, dut.bus, 0, 0b0001)
        ctx.set(getattr(dut, event), 0)
        assert value == other               # the read saw the state before the event
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == bit     # the event survived
        assert await bus_read(ctx, dut.bus, 0, 0b0001) == 0

    simulate(dut, tb)


# --- NotifyRegion -------------------------------------------------------------

NQ = 5


async def take_doorbells(ctx, dut, limit=20):
    """Take doorbells until none is pending; return their queue indices."""
    taken = []
    ctx.set(dut.doorbell.ready, 1)
    for _ in range(limit):
        if not ctx.get(dut.doorbell.valid):
            break
        taken.append(ctx.get(dut.doorbell.payload))
        await ctx.tick()
    ctx.set(dut.doorbell.ready, 0)
    assert not ctx.get(dut.doorbell.valid)
    return taken


def test_notify_coalesces_and_hands_on_lowest_first():
    dut = NotifyRegion(NQ, 3)

    async def tb(ctx):
        assert not ctx.get(dut.doorbell.valid)
        for q in (3, 1, 3, 4, 1, 3):
            await bus_write(ctx, dut.bus, q, 0x1234, 0b0011)
            assert ctx.get(dut.doorbell.valid)
        # stalled: the lowest stays offered
        for _ in range(3):
            assert ctx.get(dut.doorbell.payload) == 1
            await ctx.tick()
        assert await take_doorbells(ctx, dut) == [1, 3, 4]
        # no byte enables, or past the last queue: not a doorbell
        await bus_write(ctx, dut.bus, 2, 0xFFFF, 0b0000)
        await bus_write(ctx, dut.bus, NQ, 0xFFFF, 0b1111)
        await bus_write(ctx, dut.bus, 7, 0xFFFF, 0b1111)
        assert not ctx.get(dut.doorbell.valid)
        # any byte enabled is a doorbell (a 16-bit write of the queue index)
        await bus_write(ctx, dut.bus, 0, 0, 0b0100)
        assert await take_doorbells(ctx, dut) == [0]
        # reads are zero, the cycle after
        assert await bus_read(ctx, dut.bus, 2) == 0

    simulate(dut, tb)


def test_notify_reset_drops_pending():
    dut = NotifyRegion(NQ, 3)

    async def tb(ctx):
        for q in (0, 2, 4):
            await bus_write(ctx, dut.bus, q, q)
        await pulse(ctx, dut.reset)
        assert not ctx.get(dut.doorbell.valid)
        await bus_write(ctx, dut.bus, 2, 2)
        assert await take_doorbells(ctx, dut) == [2]

    simulate(dut, tb)


@pytest.mark.parametrize("again", [2, 0, 4])
def test_notify_doorbell_rung_while_taken_is_kept(again):
    """Queue 2 is being taken; a write to `again` in that same cycle is not lost."""
    dut = NotifyRegion(NQ, 3)

    async def tb(ctx):
        await bus_write(ctx, dut.bus, 2, 2)
        assert ctx.get(dut.doorbell.payload) == 2
        ctx.set(dut.doorbell.ready, 1)
        await bus_write(ctx, dut.bus, again, again)      # the take and the write, one cycle
        ctx.set(dut.doorbell.ready, 0)
        assert ctx.get(dut.doorbell.valid)
        assert await take_doorbells(ctx, dut) == [again]

    simulate(dut, tb)


def test_notify_random_against_model():
    rng = random.Random(3)
    dut = NotifyRegion(NQ, 3)

    async def tb(ctx):
        pending = set()
        for _ in range(400):
            write = rng.random() < 0.4
            q = rng.randrange(8)
            be = rng.getrandbits(4)
            ready = rng.random() < 0.5
            ctx.set(dut.bus.addr, q)
            ctx.set(dut.bus.be, be)
            ctx.set(dut.bus.w_stb, write)
            ctx.set(dut.doorbell.ready, ready)
            assert ctx.get(dut.doorbell.valid) == bool(pending)
            if pending:
                assert ctx.get(dut.doorbell.payload) == min(pending)
                if ready:
                    pending.discard(min(pending))
            if write and be and q < NQ:
                pending.add(q)
            await ctx.tick()

    simulate(dut, tb)


# --- MsixTable ----------------------------------------------------------------

VECTORS = 5
TABLE_DWS = VECTORS * spec.MSIX_ENTRY_SIZE // 4


def test_msix_vectors_masked_after_reset():
    dut = MsixTable(VECTORS, 5, 1)

    async def tb(ctx):
        for addr in range(TABLE_DWS):
            want = spec.MSIX_VECTOR_MASKED if addr % 4 == 3 else 0
            assert await bus_read(ctx, dut.table, addr) == want, f"DW {addr}"
        for addr in range(TABLE_DWS, 32):                     # past the table
            assert await bus_read(ctx, dut.table, addr) == 0

    simulate(dut, tb)


def test_msix_table_byte_enables_against_model():
    rng = random.Random(5)
    dut = MsixTable(VECTORS, 5, 1)

    async def tb(ctx):
        model = [spec.MSIX_VECTOR_MASKED if n % 4 == 3 else 0 for n in range(TABLE_DWS)]
        # directed: byte lanes one at a time
        await bus_write(ctx, dut.table, 4, 0xAABBCCDD, 0b0101)
        assert await bus_read(ctx, dut.table, 4) == 0x00BB00DD
        await bus_write(ctx, dut.table, 4, 0x11223344, 0b1010)
        assert await bus_read(ctx, dut.table, 4) == 0x11BB33DD
        await bus_write(ctx, dut.table, 7, 0, 0b0001)          # unmask vector 1
        assert await bus_read(ctx, dut.table, 7) == 0
        model[4], model[7] = 0x11BB33DD, 0
        # random, back to back, reads the cycle after the strobe
        for _ in range(400):
            kind = rng.choice(["read", "write", "idle"])
            addr = rng.randrange(32)
            be, data = rng.getrandbits(4), rng.getrandbits(32)
            ctx.set(dut.table.addr, addr)
            ctx.set(dut.table.be, be)
            ctx.set(dut.table.w_data, data)
            ctx.set(dut.table.r_stb, kind == "read")
            ctx.set(dut.table.w_stb, kind == "write")
            await ctx.tick()
            if kind == "read":
                assert ctx.get(dut.table.r_data) == (model[addr] if addr < TABLE_DWS else 0)
            if kind == "write" and addr < TABLE_DWS:
                mask = be_mask(be)
                model[addr] = model[addr] & ~mask | data & mask
        idle(ctx, dut.table)
        for addr in range(TABLE_DWS):
            assert await bus_read(ctx, dut.table, addr) == model[addr]

    simulate(dut, tb)


async def collect_message(ctx, dut, timeout=40):
    """The next MSI-X message as a cocotbext-pcie Tlp (the sink is always ready)."""
    from cocotbext.pcie.core.tlp import Tlp
    from sim.tlp_codec import dwords_to_tlp
    ctx.set(dut.msg.ready, 1)
    dws = []
    for _ in range(timeout):
        if ctx.get(dut.msg.valid):
            dws.append(ctx.get(dut.msg.payload.data))
            if ctx.get(dut.msg.payload.last):
                await ctx.tick()
                return Tlp.unpack(dwords_to_tlp(dws))
        await ctx.tick()
    return None


async def raise_vectors(ctx, dut, mask):
    ctx.set(dut.raise_, mask)
    await ctx.tick()
    ctx.set(dut.raise_, 0)


def test_msix_pending_masked_vectors_and_messages():
    from cocotbext.pcie.core.tlp import TlpType
    dut = MsixTable(VECTORS, 5, 1)
    requester = 0x0100

    async def tb(ctx):
        ctx.set(dut.requester_id, requester)
        # vector 1: 32-bit address; vector 3: 64-bit address
        for vector, addr, data in ((1, 0xFEE0_1000, 0x41), (3, 0x1_2345_6780, 0x43)):
            base = vector * 4
            await bus_write(ctx, dut.table, base + 0, addr & 0xFFFFFFFF)
            await bus_write(ctx, dut.table, base + 1, addr >> 32)
            await bus_write(ctx, dut.table, base + 2, data)
        # raised while MSI-X is off: pending, nothing sent; the PBA ignores writes
        await raise_vectors(ctx, dut, 0b01010)
        assert await bus_read(ctx, dut.pba, 0) == 0b01010
        await bus_write(ctx, dut.pba, 0, 0)
        assert await bus_read(ctx, dut.pba, 0) == 0b01010
        assert await collect_message(ctx, dut, timeout=10) is None
        # enabled, but every vector is still masked; then bus master off
        ctx.set(dut.enable, 1)
        assert await collect_message(ctx, dut, timeout=10) is None
        await bus_write(ctx, dut.table, 1 * 4 + 3, 0)          # unmask vector 1
        assert await collect_message(ctx, dut, timeout=10) is None   # no bus master yet
        ctx.set(dut.bus_master, 1)
        msg = await collect_message(ctx, dut)
        assert msg.fmt_type == TlpType.MEM_WRITE and msg.address == 0xFEE0_1000
        assert msg.length == 1 and msg.first_be == 0xF and bytes(msg.data) == (0x41).to_bytes(4, "little")
        assert int(msg.requester_id) == requester
        assert await bus_read(ctx, dut.pba, 0) == 0b01000      # vector 3 still waits, masked
        assert await collect_message(ctx, dut, timeout=10) is None
        # the function mask holds everything back, unmasking vector 3 alone does not send
        ctx.set(dut.function_mask, 1)
        await bus_write(ctx, dut.table, 3 * 4 + 3, 0)
        assert await collect_message(ctx, dut, timeout=10) is None
        ctx.set(dut.function_mask, 0)
        msg = await collect_message(ctx, dut)
        assert msg.fmt_type == TlpType.MEM_WRITE_64 and msg.address == 0x1_2345_6780
        assert bytes(msg.data) == (0x43).to_bytes(4, "little")
        assert await bus_read(ctx, dut.pba, 0) == 0
        # a vector raised twice before it is sent goes out once
        await raise_vectors(ctx, dut, 0b00010)
        await raise_vectors(ctx, dut, 0b00010)
        assert (await collect_message(ctx, dut)).address == 0xFEE0_1000
        assert await collect_message(ctx, dut, timeout=10) is None

    simulate(dut, tb)


# --- ConfigSpace (as built by VirtioNetCore) ----------------------------------

COMMAND_RW = (spec.PciCommand.MEMORY_SPACE | spec.PciCommand.BUS_MASTER
              | spec.PciCommand.PARITY_ERROR_RESPONSE | spec.PciCommand.SERR_ENABLE
              | spec.PciCommand.INTX_DISABLE)
STATUS_RW1C = (spec.PciStatus.SIGNALED_TARGET_ABORT | spec.PciStatus.RECEIVED_TARGET_ABORT
               | spec.PciStatus.RECEIVED_MASTER_ABORT | spec.PciStatus.SIGNALED_SYSTEM_ERROR
               | spec.PciStatus.DETECTED_PARITY_ERROR)
UR = int(spec.PcieDevSta.UR_DETECTED) << 16


def config_space():
    cfg = VirtioNetCore().config_space
    devctl_dw = (cfg._pcie_dw * 4 + spec.PcieCap.DEVCTL) // 4
    return cfg, devctl_dw


def test_config_command_writes_only_its_writable_bits():
    cfg, _ = config_space()
    cmd_dw = spec.PciCfg.COMMAND // 4

    async def tb(ctx):
        before = await bus_read(ctx, cfg.bus, cmd_dw)
        assert before == spec.PciStatus.CAP_LIST << 16
        await bus_write(ctx, cfg.bus, cmd_dw, 0xFFFF_FFFF)
        after = await bus_read(ctx, cfg.bus, cmd_dw)
        assert after & 0xFFFF == COMMAND_RW
        assert ctx.get(cfg.command) == COMMAND_RW
        # status: read-only bits stay, RW1C bits that were clear are not set by writing 1
        assert after >> 16 == spec.PciStatus.CAP_LIST
        # byte enables: only the low byte of the command
        await bus_write(ctx, cfg.bus, cmd_dw, 0, 0b0001)
        assert await bus_read(ctx, cfg.bus, cmd_dw) & 0xFFFF == COMMAND_RW & 0xFF00
        await bus_write(ctx, cfg.bus, cmd_dw, 0, 0b0010)
        assert await bus_read(ctx, cfg.bus, cmd_dw) & 0xFFFF == 0
        assert ctx.get(cfg.command) == 0
        # a read-only DW: the IDs do not change
        ids = await bus_read(ctx, cfg.bus, 0)
        await bus_write(ctx, cfg.bus, 0, 0x1234_5678)
        assert await bus_read(ctx, cfg.bus, 0) == ids
        assert ids == spec.VIRTIO_NET_PCI_DEVICE_ID << 16 | spec.VIRTIO_PCI_VENDOR_ID

    simulate(cfg, tb)


def test_config_ur_detected_sets_rw1c_cleared_only_by_writing_1():
    cfg, devctl_dw = config_space()

    async def tb(ctx):
        initial = await bus_read(ctx, cfg.bus, devctl_dw)
        assert initial & 0xFFFF_0000 == 0
        await pulse(ctx, cfg.ur_detected)
        value = await bus_read(ctx, cfg.bus, devctl_dw)
        assert value == initial | UR
        # writing 0 to the status, or 1 without the status byte enabled, leaves it set
        await bus_write(ctx, cfg.bus, devctl_dw, initial, 0b1111)
        assert await bus_read(ctx, cfg.bus, devctl_dw) == initial | UR
        await bus_write(ctx, cfg.bus, devctl_dw, initial | UR, 0b1011)
        assert await bus_read(ctx, cfg.bus, devctl_dw) == initial | UR
        # writing 1 to another RW1C bit does not clear UR
        await bus_write(ctx, cfg.bus, devctl_dw, int(spec.PcieDevSta.CORR_ERR_DETECTED) << 16, 0b0100)
        assert await bus_read(ctx, cfg.bus, devctl_dw) == initial | UR
        # writing 1 to it clears it, and leaves Device Control alone
        await bus_write(ctx, cfg.bus, devctl_dw, UR, 0b0100)
        assert await bus_read(ctx, cfg.bus, devctl_dw) == initial
        # header Status RW1C bits: writing 1 to them when clear does not set them
        await bus_write(ctx, cfg.bus, spec.PciCfg.COMMAND // 4, STATUS_RW1C << 16, 0b1100)
        assert await bus_read(ctx, cfg.bus, spec.PciCfg.COMMAND // 4) >> 16 == spec.PciStatus.CAP_LIST

    simulate(cfg, tb)


CORR = int(spec.PcieDevSta.CORR_ERR_DETECTED) << 16


def test_config_correctable_error_sets_rw1c_whether_or_not_reporting_is_enabled():
    """A correctable error from the link (PCIe Base 4.0 section 6.2) sets
    Device Status.Correctable Error Detected, with Device Control's
    Correctable Error Reporting Enable clear (the reset value) or set
    (section 7.5.3.5: the status logs errors either way); only writing 1 to
    it clears it."""
    cfg, devctl_dw = config_space()
    reporting = int(spec.PcieDevCtl.CORR_ERR_REPORTING)

    async def tb(ctx):
        initial = await bus_read(ctx, cfg.bus, devctl_dw)
        assert initial & (0xFFFF_0000 | reporting) == 0
        for devctl in (initial, initial | reporting):
            await bus_write(ctx, cfg.bus, devctl_dw, devctl, 0b0011)
            assert await bus_read(ctx, cfg.bus, devctl_dw) == devctl
            await pulse(ctx, cfg.correctable_error)
            assert await bus_read(ctx, cfg.bus, devctl_dw) == devctl | CORR
            # a second error while set: still set, nothing else
            await pulse(ctx, cfg.correctable_error)
            assert await bus_read(ctx, cfg.bus, devctl_dw) == devctl | CORR
            # writing 0, or 1 to UR Detected, leaves it set
            await bus_write(ctx, cfg.bus, devctl_dw, devctl | UR, 0b1111)
            assert await bus_read(ctx, cfg.bus, devctl_dw) == devctl | CORR
            # writing 1 to it clears it and leaves Device Control alone
            await bus_write(ctx, cfg.bus, devctl_dw, CORR, 0b0100)
            assert await bus_read(ctx, cfg.bus, devctl_dw) == devctl
        # the error in the cycle of the clearing write: the error wins (set after clear)
        ctx.set(cfg.correctable_error, 1)
        await bus_write(ctx, cfg.bus, devctl_dw, CORR, 0b0100)
        ctx.set(cfg.correctable_error, 0)
        assert await bus_read(ctx, cfg.bus, devctl_dw) & CORR

    simulate(cfg, tb)


def test_config_devctl_reset_value_and_rw_mask():
    """Device Control: reset value with MRRS = 512 bytes; MPS and MRRS fields writable.

    Values written out bit by bit here as plain ints (section 7.5.3.4).
    """
    cfg, devctl_dw = config_space()
    relaxed_ordering, no_snoop = 1 << 4, 1 << 11
    mrrs_512 = 2 << 12
    writable = 0b1111 | 1 << 4 | 0b111 << 5 | 1 << 11 | 0b111 << 12      # 0x78FF

    async def tb(ctx):
        initial = await bus_read(ctx, cfg.bus, devctl_dw)
        await bus_write(ctx, cfg.bus, devctl_dw, 0x0000_FFFF, 0b0011)
        ones = await bus_read(ctx, cfg.bus, devctl_dw)
        ones_port = ctx.get(cfg.devctl)
        await bus_write(ctx, cfg.bus, devctl_dw, 0, 0b0011)
        zeros = await bus_read(ctx, cfg.bus, devctl_dw)
        assert zeros == 0 and ctx.get(cfg.devctl) == 0
        assert (hex(initial), hex(ones), hex(ones_port)) == (
            hex(relaxed_ordering | no_snoop | mrrs_512), hex(writable), hex(writable))

    simulate(cfg, tb)


def test_config_ur_detected_does_not_drop_a_host_write_in_the_same_cycle():
    """ur_detected in the cycle of a Device Control write: both must take effect.

    ConfigSpace's hardware set assigns the whole DW from its old value, so the
    host's write in that cycle is lost.
    """
    cfg, devctl_dw = config_space()
    mps_512 = spec.pcie_size_code(512) << spec.PCIE_DEVCTL_MPS_SHIFT

    async def tb(ctx):
        initial = await bus_read(ctx, cfg.bus, devctl_dw)
        new_devctl = initial & 0xFFFF & ~(0b111 << spec.PCIE_DEVCTL_MPS_SHIFT) | mps_512
        ctx.set(cfg.ur_detected, 1)
        await bus_write(ctx, cfg.bus, devctl_dw, new_devctl, 0b0011)
        ctx.set(cfg.ur_detected, 0)
        assert await bus_read(ctx, cfg.bus, devctl_dw) == new_devctl | UR

    simulate(cfg, tb)


def test_msix_sender_waits_for_bar_reads_of_the_table():
    """The sender shares the table's read port: BAR reads win, the message comes out whole after."""
    dut = MsixTable(VECTORS, 5, 1)

    async def tb(ctx):
        await bus_write(ctx, dut.table, 2 * 4 + 0, 0xFEE0_2000)
        await bus_write(ctx, dut.table, 2 * 4 + 2, 0x42)
        await bus_write(ctx, dut.table, 2 * 4 + 3, 0)          # unmask vector 2
        for name in ("enable", "bus_master"):
            ctx.set(getattr(dut, name), 1)
        ctx.set(dut.msg.ready, 1)
        await raise_vectors(ctx, dut, 0b00100)
        # the BAR reads the table every cycle for a while: nothing may be sent
        for cycle in range(20):
            addr = cycle % TABLE_DWS
            ctx.set(dut.table.addr, addr)
            ctx.set(dut.table.be, 0b1111)
            ctx.set(dut.table.r_stb, 1)
            await ctx.tick()
            want = {8: 0xFEE0_2000, 10: 0x42}.get(addr, spec.MSIX_VECTOR_MASKED if addr % 4 == 3 and addr != 11 else 0)
            assert ctx.get(dut.table.r_data) == want, f"BAR read of DW {addr}"
            assert not ctx.get(dut.msg.valid)
        ctx.set(dut.table.r_stb, 0)
        msg = await collect_message(ctx, dut)
        assert msg.address == 0xFEE0_2000 and bytes(msg.data) == (0x42).to_bytes(4, "little")

    simulate(dut, tb)


def test_received_aborts_set_status_bits_cleared_by_writing_1():
    """A UR (CA) completion to our DMA read sets Status.Received Master
    (Target) Abort (PCIe Base 4.0 section 7.5.1.1.4); RW1C."""
    cfg, _ = config_space()
    status_dw = spec.PciCfg.COMMAND // 4
    master, target = (int(spec.PciStatus.RECEIVED_MASTER_ABORT) << 16,
                      int(spec.PciStatus.RECEIVED_TARGET_ABORT) << 16)

    async def tb(ctx):
        assert await bus_read(ctx, cfg.bus, status_dw) & (master | target) == 0
        await pulse(ctx, cfg.received_ur)
        assert await bus_read(ctx, cfg.bus, status_dw) & (master | target) == master
        await pulse(ctx, cfg.received_ca)
        assert await bus_read(ctx, cfg.bus, status_dw) & (master | target) == master | target
        await bus_write(ctx, cfg.bus, status_dw, master, 0b1100)
        assert await bus_read(ctx, cfg.bus, status_dw) & (master | target) == target

    simulate(cfg, tb)
