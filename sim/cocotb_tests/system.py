"""System tests: the Verilated core, cocotbext-pcie's root complex and the Python driver.

Run through tests/test_system.py (pytest), one simulator process per build
parameter set.
"""
import cocotb
from cocotb.triggers import RisingEdge
from cocotbext.pcie.core.tlp import CplStatus, Tlp, TlpType

from driver.virtio_net import DEFAULT_QUEUE_SIZE, VirtioNet, VirtioNetProbeError
from driver.virtio_pci_modern import VirtioPciModernDevice
from hdl import spec
from hdl.top import implemented_features
from sim.device import INJECT_TAG_BASE
from sim.tb import TB


async def probed(dut):
    """A testbench with the device enumerated and the driver's probe done."""
    tb = TB(dut)
    await tb.init()
    net = VirtioNet(tb.transport)
    await net.probe()
    return tb, net


async def driver_bound(dut):
    """A testbench and the modern PCI device reset and at ACKNOWLEDGE | DRIVER,
    for tests that play the driver's steps by hand."""
    tb = TB(dut)
    await tb.init()
    pci = VirtioPciModernDevice(tb.transport)
    await pci.probe()
    await pci.reset()
    await pci.add_status(spec.VirtioStatus.ACKNOWLEDGE)
    await pci.add_status(spec.VirtioStatus.DRIVER)
    return tb, pci


@cocotb.test()
async def enumeration(dut):
    """The root complex finds a virtio-net function with a 32 KiB 64-bit BAR and MSI-X."""
    tb = TB(dut)
    f = await tb.init()
    assert (f.vendor_id, f.device_id) == (spec.VIRTIO_PCI_VENDOR_ID, spec.VIRTIO_NET_PCI_DEVICE_ID)
    assert f.class_code == spec.PCI_CLASS_NETWORK_ETHERNET
    assert f.bar_size[0] == 0x8000 and f.bar_addr[0] is not None
    assert f.bar[0] & spec.PciBar.MEM_TYPE_64
    assert len(f.msi_vectors) == tb.params.msix_vectors
    # MSI-X is on, as the root complex set it up
    control = await tb.transport.config_read(0x7C + spec.MsixCap.MESSAGE_CONTROL, 2)
    assert control & spec.MsixControl.ENABLE
    assert control & spec.MsixControl.TABLE_SIZE_MASK == tb.params.msix_vectors - 1


@cocotb.test()
async def probe(dut):
    """The driver probes the device to DRIVER_OK with what it offers."""
    tb, net = await probed(dut)
    offered = tb.params.device_features
    assert net.negotiated_features == offered & net.negotiated_features
    assert net.negotiated_features & spec.VirtioF.VERSION_1
    assert net.mac == tb.params.mac
    assert net.mtu == tb.params.mtu
    assert await net.pci.get_num_queues() == tb.params.num_queues
    assert all(vq.num == min(tb.params.queue_size_max, DEFAULT_QUEUE_SIZE) for vq in net.queues.values())
    assert net.link_up
    status = await net.pci.get_status()
    assert status & spec.VirtioStatus.DRIVER_OK and status & spec.VirtioStatus.FEATURES_OK
    # the rings the driver set up are what the device holds
    for index, vq in net.queues.items():
        pci = net.pci
        await pci.common.write16(spec.VirtioCommonCfg.QUEUE_SELECT, index)
        assert await pci.common.read16(spec.VirtioCommonCfg.QUEUE_ENABLE) == 1
        assert await pci.common.read64(spec.VirtioCommonCfg.QUEUE_DESC) == vq.desc_addr
        assert await pci.common.read64(spec.VirtioCommonCfg.QUEUE_DRIVER) == vq.avail_addr
        assert await pci.common.read64(spec.VirtioCommonCfg.QUEUE_DEVICE) == vq.used_addr
        assert await pci.common.read16(spec.VirtioCommonCfg.QUEUE_SIZE) == vq.num
    # link down is a config change the driver sees
    gen = await net.pci.config_generation()
    dut.link_up.value = 0
    await net.pci.common.read8(spec.VirtioCommonCfg.DEVICE_STATUS)
    assert await net.pci.config_generation() != gen
    assert not await net.pci.config_read16(spec.VirtioNetCfg.STATUS) & spec.VirtioNetS.LINK_UP
    await net.remove()
    assert await net.pci.get_status() == 0


@cocotb.test()
async def config_change_interrupt(dut):
    """A link change is an MSI-X message on the config vector; masked, it waits in the PBA."""
    tb, net = await probed(dut)
    assert net.msix
    vector = await net.pci.common.read16(spec.VirtioCommonCfg.CONFIG_MSIX_VECTOR)
    assert vector != spec.VIRTIO_MSI_NO_VECTOR
    counts = tb.transport.interrupts
    before = list(counts)

    waiter = cocotb.start_soon(tb.transport.wait_interrupt(vector, 2000))
    dut.link_up.value = 0
    await waiter
    assert counts[vector] == before[vector] + 1
    assert sum(counts) == sum(before) + 1, "another vector fired too"
    assert not await net.pci.config_read16(spec.VirtioNetCfg.STATUS) & spec.VirtioNetS.LINK_UP
    assert await net.pci.read_isr() == 0, "ISR is for INTx; MSI-X is on"

    # function mask: the event waits in the PBA, and goes out on unmask
    msix_cap = 0x7C
    control = await tb.transport.config_read(msix_cap + spec.MsixCap.MESSAGE_CONTROL, 2)
    await tb.transport.config_write(msix_cap + spec.MsixCap.MESSAGE_CONTROL, 2,
                                    control | spec.MsixControl.FUNCTION_MASK)
    dut.link_up.value = 1
    pba = tb.function.bar_addr[0] + 0x5000
    for _ in range(50):
        await RisingEdge(dut.clk)
    assert counts[vector] == before[vector] + 1, "sent while the function was masked"
    assert int.from_bytes(await tb.rc.mem_read(pba, 4), "little") == 1 << vector
    waiter = cocotb.start_soon(tb.transport.wait_interrupt(vector, 2000))
    await tb.transport.config_write(msix_cap + spec.MsixCap.MESSAGE_CONTROL, 2, control)
    await waiter
    assert counts[vector] == before[vector] + 2
    assert int.from_bytes(await tb.rc.mem_read(pba, 4), "little") == 0
    assert await net.pci.config_read16(spec.VirtioNetCfg.STATUS) & spec.VirtioNetS.LINK_UP


@cocotb.test()
async def broken_feature_set(dut):
    """Run with a build offering MQ and CTRL_RX without CTRL_VQ: refused, both named."""
    tb = TB(dut)
    await tb.init()
    net = VirtioNet(tb.transport)
    try:
        await net.probe()
    except VirtioNetProbeError as err:
        text = str(err)
        assert "MQ" in text and "CTRL_RX" in text and "CTRL_VQ" in text, text
        assert len(err.problems) >= 2, err.problems
    else:
        raise AssertionError("probe accepted a device with broken feature dependencies")
    assert await net.pci.get_status() & spec.VirtioStatus.FAILED


@cocotb.test()
async def features_ok_refused_for_unoffered_feature(dut):
    """The device, not just the driver, refuses a feature it did not offer."""
    tb, pci = await driver_bound(dut)
    S = spec.VirtioStatus
    offered = await pci.get_features()
    assert offered == implemented_features()
    await pci.set_features(offered | spec.VirtioNetF.GUEST_ANNOUNCE)
    await pci.add_status(S.FEATURES_OK)
    assert not await pci.get_status() & S.FEATURES_OK
    # the same driver with an honest feature set gets through
    await pci.set_features(offered)
    await pci.add_status(S.FEATURES_OK)
    assert await pci.get_status() & S.FEATURES_OK


@cocotb.test()
async def reset_mid_way(dut):
    """A reset half-way through set-up leaves nothing behind; the driver probes again."""
    tb, pci = await driver_bound(dut)
    S, C = spec.VirtioStatus, spec.VirtioCommonCfg
    await pci.set_features(await pci.get_features())
    await pci.add_status(S.FEATURES_OK)
    await pci.common.write16(C.QUEUE_SELECT, 0)
    await pci.common.write16(C.QUEUE_SIZE, 16)
    await pci.common.write64(C.QUEUE_DESC, 0x1234_5000)
    await pci.common.write16(C.QUEUE_ENABLE, 1)
    await pci.reset()
    assert await pci.get_status() == 0
    await pci.common.write16(C.QUEUE_SELECT, 0)
    assert await pci.common.read16(C.QUEUE_ENABLE) == 0
    assert await pci.common.read64(C.QUEUE_DESC) == 0
    assert await pci.common.read16(C.QUEUE_SIZE) == tb.params.queue_size_max
    net = VirtioNet(tb.transport)
    await net.probe()
    assert net.ready


@cocotb.test()
async def unsupported_requests(dut):
    """Requests the device cannot serve get Unsupported Request; it carries on after."""
    tb = TB(dut)
    f = await tb.init()
    bar = f.bar_addr[0]
    # through the root complex: a read past BAR0 but inside the bridge window
    before = len(tb.dev.sent)
    try:
        await tb.rc.mem_read(bar + f.bar_size[0], 4, timeout=10, timeout_unit="us")
    except Exception as err:                       # cocotbext-pcie raises on UR
        tb.log.info("root complex reports: %s", err)
    else:
        raise AssertionError("read outside every BAR succeeded")
    assert len(tb.dev.sent) == before + 1, "the device itself did not answer"
    assert Tlp.unpack(tb.dev.sent[-1]).status == CplStatus.UR

    # straight into the core: types no root port would route to an endpoint
    tag = INJECT_TAG_BASE
    for fmt_type, addr in ((TlpType.IO_READ, 0x1000), (TlpType.MEM_READ_64, bar - 0x1000),
                           (TlpType.CFG_READ_1, 0)):
        tlp = Tlp()
        tlp.fmt_type = fmt_type
        tlp.set_addr_be(addr, 4)
        tlp.tag = tag
        tag += 1
        reply = await tb.dev.inject(tlp)
        assert reply.fmt_type == TlpType.CPL and reply.status == CplStatus.UR, reply
    # a posted write outside every BAR: dropped, unanswered, UR detected
    await tb.transport.config_write(0x40 + spec.PcieCap.DEVSTA, 2, spec.PcieDevSta.UR_DETECTED)
    assert not await tb.transport.config_read(0x40 + spec.PcieCap.DEVSTA, 2) & spec.PcieDevSta.UR_DETECTED
    tlp = Tlp()
    tlp.fmt_type = TlpType.MEM_WRITE
    tlp.set_addr_be_data(bar + 0x10000, b"\xff" * 4)
    tlp.tag = tag
    await tb.dev.inject(tlp, expect_reply=False, timeout_cycles=100)
    assert await tb.transport.config_read(0x40 + spec.PcieCap.DEVSTA, 2) & spec.PcieDevSta.UR_DETECTED
    # still alive
    assert await tb.transport.config_read(spec.PciCfg.VENDOR_ID, 2) == spec.VIRTIO_PCI_VENDOR_ID
    num_queues = await tb.rc.mem_read(bar + spec.VirtioCommonCfg.NUM_QUEUES, 2)
    assert int.from_bytes(num_queues, "little") == tb.params.num_queues
