"""The whole core at its TLP ports, in the Amaranth simulator (no Verilator)."""
import pytest

from hdl import spec
from hdl.top import CoreParams, VirtioNetCore
from hdl.virtio.bar_layout import BarLayout
from sim.amaranth_tb import CoreHost, CplStatus, PcieId, Tlp, TlpType
from tests.amaranth_sim import simulate

BAR = 0xFE00_0000
L = BarLayout()
C = spec.VirtioCommonCfg
PCIE_CAP = 0x40


def run(testbench, params=CoreParams()):
    core = VirtioNetCore(params)

    async def tb(ctx):
        host = CoreHost(ctx, core)
        await testbench(host, core)

    simulate(core, tb)


async def enable_bar(host, base=BAR):
    await host.cfg_write(spec.PciCfg.BAR0, base & 0xFFFFFFFF)
    await host.cfg_write(spec.PciCfg.BAR0 + 4, base >> 32)
    await host.cfg_write(spec.PciCfg.COMMAND, spec.PciCommand.MEMORY_SPACE | spec.PciCommand.BUS_MASTER)


async def read_le(host, addr, size):
    data, _ = await host.mem_read(addr, size)
    return int.from_bytes(data, "little")


async def write_le(host, addr, size, value):
    await host.mem_write(addr, value.to_bytes(size, "little"))


def test_identity_and_bar_sizing():
    async def tb(host, core):
        assert await host.cfg_read(0x00) == spec.VIRTIO_NET_PCI_DEVICE_ID << 16 | spec.VIRTIO_PCI_VENDOR_ID
        assert await host.cfg_read(0x08) == spec.PCI_CLASS_NETWORK_ETHERNET << 8 | spec.VIRTIO_PCI_REVISION
        assert await host.cfg_read(0x2C) == spec.VIRTIO_PCI_SUBSYSTEM_ID << 16 | spec.VIRTIO_PCI_VENDOR_ID
        assert await host.cfg_read(spec.PciCfg.BAR0) == spec.PciBar.MEM_TYPE_64
        # sizing: all ones reads back the size mask with the type bits
        await host.cfg_write(spec.PciCfg.BAR0, 0xFFFFFFFF)
        await host.cfg_write(spec.PciCfg.BAR0 + 4, 0xFFFFFFFF)
        lo = await host.cfg_read(spec.PciCfg.BAR0)
        assert lo == (~(L.size - 1) & 0xFFFFFFF0) | spec.PciBar.MEM_TYPE_64
        assert await host.cfg_read(spec.PciCfg.BAR0 + 4) == 0xFFFFFFFF
        # BARs 2 to 5 are absent: writes do not stick
        await host.cfg_write(0x18, 0xFFFFFFFF)
        assert await host.cfg_read(0x18) == 0
        # read-only header fields do not change
        await host.cfg_write(0x00, 0x12345678)
        assert await host.cfg_read(0x00) & 0xFFFF == spec.VIRTIO_PCI_VENDOR_ID
        # extended config space is empty, not an alias of the header
        assert await host.cfg_read(0x100) == 0
    run(tb)


def test_capability_chain_is_complete_and_ends():
    async def tb(host, core):
        status = await host.cfg_read(0x04) >> 16
        assert status & spec.PciStatus.CAP_LIST
        ptr = await host.cfg_read(spec.PciCfg.CAPABILITIES_PTR) & 0xFF
        seen = []
        while ptr:
            assert ptr % 4 == 0 and ptr >= 0x40 and len(seen) < 16
            head = await host.cfg_read(ptr)
            cap_id = head & 0xFF
            if cap_id == spec.PciCapId.VENDOR_SPECIFIC:
                seen.append(("virtio", head >> 24))
            else:
                seen.append(cap_id)
            ptr = head >> 8 & 0xFF
        T = spec.VirtioPciCapType
        assert seen == [spec.PciCapId.PCI_EXPRESS, spec.PciCapId.MSIX,
                        ("virtio", T.COMMON_CFG), ("virtio", T.NOTIFY_CFG), ("virtio", T.ISR_CFG),
                        ("virtio", T.DEVICE_CFG), ("virtio", T.PCI_CFG)]
    run(tb)


def test_memory_decode_needs_memory_space_enable():
    async def tb(host, core):
        await host.cfg_write(spec.PciCfg.BAR0, BAR)
        await host.cfg_write(spec.PciCfg.BAR0 + 4, 0)
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_READ
        tlp.set_addr_be(BAR, 4)
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.UR
        await host.cfg_write(spec.PciCfg.COMMAND, spec.PciCommand.MEMORY_SPACE)
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.SC
    run(tb)


def test_unsupported_requests():
    async def tb(host, core):
        await enable_bar(host)
        devsta_dw = PCIE_CAP + spec.PcieCap.DEVCTL
        assert not await host.cfg_read(devsta_dw) >> 16 & spec.PcieDevSta.UR_DETECTED
        # a read outside every BAR
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_READ
        tlp.set_addr_be(BAR + L.size, 4)
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.UR and cpl.fmt_type == TlpType.CPL
        assert await host.cfg_read(devsta_dw) >> 16 & spec.PcieDevSta.UR_DETECTED
        # RW1C: writing 1 clears it
        await host.cfg_write(devsta_dw, spec.PcieDevSta.UR_DETECTED << 16, be=0b1100)
        assert not await host.cfg_read(devsta_dw) >> 16 & spec.PcieDevSta.UR_DETECTED
        # an I/O read: type not supported
        tlp = Tlp()
        tlp.fmt_type = TlpType.IO_READ
        tlp.set_addr_be(0x100, 4)
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.UR
        # a posted write outside every BAR: dropped, no reply, status set
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_WRITE
        tlp.set_addr_be_data(BAR - 0x1000, b"\xff" * 8)
        await host.send(tlp)
        await host.idle(30)
        assert await host.cfg_read(devsta_dw) >> 16 & spec.PcieDevSta.UR_DETECTED
        # and the device still answers normally
        assert await read_le(host, BAR + L.common + C.NUM_QUEUES, 2) == 9
    run(tb)


@pytest.mark.parametrize("mps_bytes", [128, 256])
def test_long_read_split_at_max_payload(mps_bytes):
    """A 512-byte read of the MSI-X table comes back in MPS-sized completions."""
    async def tb(host, core):
        await enable_bar(host)
        devctl = await host.cfg_read(PCIE_CAP + spec.PcieCap.DEVCTL) & 0xFFFF
        devctl = devctl & ~spec.PcieDevCtl.MPS_MASK | spec.pcie_size_code(mps_bytes) << spec.PCIE_DEVCTL_MPS_SHIFT
        await host.cfg_write(PCIE_CAP + spec.PcieCap.DEVCTL, devctl, be=0b0011)
        for n in range(9):
            await write_le(host, BAR + L.msix_table + 16 * n, 4, 0xFEE00000 + n)
        start = BAR + L.msix_table + 2
        data, cpls = await host.mem_read(start, 200)
        for n in range(9):
            entry = 16 * n - 2
            if 0 <= entry and entry + 4 <= len(data):
                assert int.from_bytes(data[entry:entry + 4], "little") == 0xFEE00000 + n
        assert all(c.length * 4 <= mps_bytes for c in cpls)
        assert cpls[0].byte_count == 200 and cpls[0].lower_address == (start & 0x7F)
        assert len(cpls) == (200 + 2 + mps_bytes - 1) // mps_bytes
        for prev, nxt in zip(cpls, cpls[1:]):
            assert nxt.lower_address % 64 == 0      # later completions start on the RCB
            assert nxt.byte_count == prev.byte_count - (prev.length * 4 - (prev.lower_address & 3))
    run(tb)


def test_byte_enables_and_64bit_addressing():
    async def tb(host, core):
        await enable_bar(host, 0x1_2340_0000)
        base = 0x1_2340_0000
        await host.mem_write(base + L.msix_table, bytes(range(1, 9)), use_64=True)
        await host.mem_write(base + L.msix_table + 1, b"\xAA\xBB", use_64=True)
        data, _ = await host.mem_read(base + L.msix_table, 8, use_64=True)
        assert data == bytes([1, 0xAA, 0xBB, 4, 5, 6, 7, 8])
        # a 32-bit request cannot reach a BAR above 4 GiB
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_READ
        tlp.set_addr_be(base & 0xFFFFFFFF, 4)
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.UR
    run(tb)


def test_features_ok_and_reset():
    async def tb(host, core):
        await enable_bar(host)
        common = BAR + L.common
        offered = core.params.device_features
        got = 0
        for sel in range(2):
            await write_le(host, common + C.DEVICE_FEATURE_SELECT, 4, sel)
            got |= await read_le(host, common + C.DEVICE_FEATURE, 4) << (32 * sel)
        assert got == offered

        async def set_driver_features(value):
            for sel in range(2):
                await write_le(host, common + C.DRIVER_FEATURE_SELECT, 4, sel)
                await write_le(host, common + C.DRIVER_FEATURE, 4, value >> (32 * sel) & 0xFFFFFFFF)

        S = spec.VirtioStatus
        await write_le(host, common + C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER)
        # accepting a feature that was not offered: FEATURES_OK refused
        await set_driver_features(offered | spec.VirtioNetF.GUEST_ANNOUNCE)
        await write_le(host, common + C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        assert await read_le(host, common + C.DEVICE_STATUS, 1) == S.ACKNOWLEDGE | S.DRIVER
        # without VERSION_1: refused too
        await set_driver_features(spec.VirtioNetF.MAC)
        await write_le(host, common + C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        assert not await read_le(host, common + C.DEVICE_STATUS, 1) & S.FEATURES_OK
        # a subset of the offer: accepted, then features are frozen
        await set_driver_features(spec.VirtioF.VERSION_1 | spec.VirtioNetF.MAC)
        await write_le(host, common + C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        assert await read_le(host, common + C.DEVICE_STATUS, 1) & S.FEATURES_OK
        await write_le(host, common + C.DRIVER_FEATURE_SELECT, 4, 0)
        await write_le(host, common + C.DRIVER_FEATURE, 4, 0xFFFFFFFF)
        assert await read_le(host, common + C.DRIVER_FEATURE, 4) == spec.VirtioNetF.MAC
        # queue state, then reset mid-way clears it all
        await write_le(host, common + C.QUEUE_SELECT, 2, 1)
        assert await read_le(host, common + C.QUEUE_SIZE, 2) == core.params.queue_size_max
        await write_le(host, common + C.QUEUE_SIZE, 2, 100)          # not a power of two
        assert await read_le(host, common + C.QUEUE_SIZE, 2) == core.params.queue_size_max
        await write_le(host, common + C.QUEUE_SIZE, 2, 64)
        await write_le(host, common + C.QUEUE_DESC, 8, 0x1_0000_1000)
        await write_le(host, common + C.QUEUE_MSIX_VECTOR, 2, 2)
        await write_le(host, common + C.CONFIG_MSIX_VECTOR, 2, 500)  # no such vector
        assert await read_le(host, common + C.CONFIG_MSIX_VECTOR, 2) == spec.VIRTIO_MSI_NO_VECTOR
        await write_le(host, common + C.QUEUE_ENABLE, 2, 1)
        assert await read_le(host, common + C.QUEUE_SIZE, 4) == 64 | 2 << 16
        assert await read_le(host, common + C.QUEUE_DESC, 8) == 0x1_0000_1000
        assert await read_le(host, common + C.QUEUE_ENABLE, 4) == 1 | 1 << 16   # notify_off 1
        await write_le(host, common + C.DEVICE_STATUS, 1, 0)
        assert await read_le(host, common + C.DEVICE_STATUS, 1) == 0
        await write_le(host, common + C.QUEUE_SELECT, 2, 1)
        assert await read_le(host, common + C.QUEUE_SIZE, 4) == core.params.queue_size_max | 0xFFFF << 16
        assert await read_le(host, common + C.QUEUE_DESC, 8) == 0
        assert await read_le(host, common + C.QUEUE_ENABLE, 2) == 0
        # a queue past num_queues reads as absent
        await write_le(host, common + C.QUEUE_SELECT, 2, core.params.num_queues)
        assert await read_le(host, common + C.QUEUE_SIZE, 2) == 0
    run(tb)


def test_device_config_isr_and_cfg_window():
    params = CoreParams(mac=bytes.fromhex("52540012abcd"), mtu=9000, queue_pairs=2)

    async def tb(host, core):
        await enable_bar(host)
        dev = BAR + L.device
        ctx = host.ctx
        data, _ = await host.mem_read(dev, 12)
        assert data[:6] == params.mac
        assert int.from_bytes(data[6:8], "little") == 0                 # link down
        assert int.from_bytes(data[8:10], "little") == 2
        assert int.from_bytes(data[10:12], "little") == 9000
        gen = await read_le(host, BAR + L.common + C.CONFIG_GENERATION, 1)
        ctx.set(core.link_up, 1)
        await ctx.tick().repeat(3)
        assert await read_le(host, dev + spec.VirtioNetCfg.STATUS, 2) == spec.VirtioNetS.LINK_UP
        assert await read_le(host, BAR + L.common + C.CONFIG_GENERATION, 1) == (gen + 1) % 256
        # ISR: config change, cleared by the read
        assert await read_le(host, BAR + L.isr, 1) == spec.VirtioIsr.CONFIG
        assert await read_le(host, BAR + L.isr, 1) == 0
        # (doorbells: NotifyRegion's own tests, and the system tests' traffic)
        # the PCI cfg access window reads the MTU through config space
        window = 0xCC
        await host.cfg_write(window + spec.VirtioPciCap.BAR, 0, be=0b0001)
        await host.cfg_write(window + spec.VirtioPciCap.OFFSET, L.device + spec.VirtioNetCfg.MTU)
        await host.cfg_write(window + spec.VirtioPciCap.LENGTH, 2)
        assert await host.cfg_read(window + spec.VirtioPciCap.PCI_CFG_DATA) & 0xFFFF == 9000
        # and writes device status through it
        await host.cfg_write(window + spec.VirtioPciCap.OFFSET, L.common + C.DEVICE_STATUS)
        await host.cfg_write(window + spec.VirtioPciCap.LENGTH, 1)
        await host.cfg_write(window + spec.VirtioPciCap.PCI_CFG_DATA, spec.VirtioStatus.ACKNOWLEDGE)
        assert await read_le(host, BAR + L.common + C.DEVICE_STATUS, 1) == spec.VirtioStatus.ACKNOWLEDGE
    run(tb, params)


def test_reading_another_byte_of_the_isr_dword_does_not_clear_it():
    """Byte enables reach the registers on reads: ISR clears only when byte 0 is read."""
    async def tb(host, core):
        await enable_bar(host)
        host.ctx.set(core.link_up, 1)                       # a config change sets ISR bit 1
        await host.ctx.tick().repeat(3)
        assert await read_le(host, BAR + L.isr + 1, 1) == 0
        assert await read_le(host, BAR + L.isr, 1) == spec.VirtioIsr.CONFIG
        assert await read_le(host, BAR + L.isr, 1) == 0
    run(tb)


def test_completions_never_exceed_the_supported_max_payload():
    """Device Control's MPS field set above Device Capabilities' 256 bytes is capped."""
    async def tb(host, core):
        await enable_bar(host)
        devctl = await host.cfg_read(PCIE_CAP + spec.PcieCap.DEVCTL) & 0xFFFF
        devctl |= spec.PcieDevCtl.MPS_MASK                   # 4096 bytes, more than offered
        await host.cfg_write(PCIE_CAP + spec.PcieCap.DEVCTL, devctl, be=0b0011)
        _, cpls = await host.mem_read(BAR + L.msix_table, 512)
        assert max(c.length * 4 for c in cpls) == 256 and len(cpls) == 2
    run(tb)


@pytest.mark.parametrize("bad", [dict(queue_pairs=0), dict(queue_pairs=128), dict(queue_size_max=96)])
def test_bad_build_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        CoreParams(**bad)


def test_poisoned_requests_change_nothing():
    """EP set: a memory write is dropped and reported; a config write gets UR (PCIe 2.7.2.2)."""
    async def tb(host, core):
        await enable_bar(host)
        entry = BAR + L.msix_table
        await write_le(host, entry, 4, 0x1111_1111)
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_WRITE
        tlp.set_addr_be_data(entry, (0x2222_2222).to_bytes(4, "little"))
        tlp.ep = True
        await host.send(tlp)
        await host.idle(20)
        assert await read_le(host, entry, 4) == 0x1111_1111
        status = await host.cfg_read(spec.PciCfg.COMMAND) >> 16
        assert status & spec.PciStatus.DETECTED_PARITY_ERROR
        devsta = await host.cfg_read(PCIE_CAP + spec.PcieCap.DEVCTL) >> 16
        assert devsta & spec.PcieDevSta.NONFATAL_ERR_DETECTED
        assert not devsta & spec.PcieDevSta.UR_DETECTED
        # a poisoned config write: UR, and the register keeps its value
        tlp = Tlp()
        tlp.fmt_type = TlpType.CFG_WRITE_0
        tlp.completer_id = PcieId(1, 0, 0)
        tlp.address = spec.PciCfg.INTERRUPT_LINE & ~3
        tlp.length, tlp.first_be, tlp.ep = 1, 0b0001, True
        tlp.data = (0x5A).to_bytes(4, "little")
        cpl, = await host.request(tlp)
        assert cpl.status == CplStatus.UR
        assert await host.cfg_read(spec.PciCfg.INTERRUPT_LINE) & 0xFF == 0
        # the same write, unpoisoned, lands
        await host.cfg_write(spec.PciCfg.INTERRUPT_LINE, 0x5A, be=0b0001)
        assert await host.cfg_read(spec.PciCfg.INTERRUPT_LINE) & 0xFF == 0x5A
    run(tb)


def test_cfg_window_write_at_an_odd_byte_offset():
    """pci_cfg_data's bytes land at the window's offset inside its DW (virtio 1.2 4.1.4.9)."""
    async def tb(host, core):
        await enable_bar(host)
        window = 0xCC
        await host.cfg_write(window + spec.VirtioPciCap.BAR, 0, be=0b0001)
        await host.cfg_write(window + spec.VirtioPciCap.OFFSET, L.common + C.QUEUE_SELECT)
        await host.cfg_write(window + spec.VirtioPciCap.LENGTH, 2)
        assert (L.common + C.QUEUE_SELECT) % 4 == 2
        await host.cfg_write(window + spec.VirtioPciCap.PCI_CFG_DATA, 1, be=0b0011)
        assert await read_le(host, BAR + L.common + C.QUEUE_SELECT, 2) == 1
        assert await host.cfg_read(window + spec.VirtioPciCap.PCI_CFG_DATA) == 1
        # one byte at offset 1 of an MSI-X table DW: only that byte changes
        await write_le(host, BAR + L.msix_table, 4, 0x4433_2211)
        await host.cfg_write(window + spec.VirtioPciCap.OFFSET, L.msix_table + 1)
        await host.cfg_write(window + spec.VirtioPciCap.LENGTH, 1)
        await host.cfg_write(window + spec.VirtioPciCap.PCI_CFG_DATA, 0xAA, be=0b0001)
        assert await read_le(host, BAR + L.msix_table, 4) == 0x4433_AA11
        assert await host.cfg_read(window + spec.VirtioPciCap.PCI_CFG_DATA) & 0xFF == 0xAA
    run(tb)
