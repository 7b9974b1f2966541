"""Probe of the Python virtio-net driver against the behavioural model (no simulator)."""
import asyncio
import random

import pytest

from driver import (DRIVER_FEATURES, Region, RegionAccessError, SplitVirtqueue, VirtioNet,
                    VirtioNetProbeError, VirtioPciError, VirtioPciModernDevice,
                    VirtqueueError, validate_features)
from driver.testing import (BAR0_ADDRESS, DEFAULT_MAC, FakeVirtioNetDevice)
from driver.virtio_ring import avail_ring_size, desc_table_size, used_ring_size
from hdl import spec
from hdl.spec import VirtioF, VirtioNetF, VirtioPciCap, VirtioPciCapType, VirtioStatus

F = VirtioNetF
RUNNING = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK \
    | VirtioStatus.DRIVER_OK


def run(coro):
    return asyncio.run(coro)


def probe(dev, **kwargs):
    net = VirtioNet(dev, **kwargs)
    run(net.probe())
    return net


def probe_error(dev, exc=VirtioNetProbeError, **kwargs):
    net = VirtioNet(dev, **kwargs)
    with pytest.raises(exc) as info:
        run(net.probe())
    return info.value


def assert_given_up(dev):
    """After a failed probe: reset (queues released) then FAILED."""
    assert dev.status_writes[-2:] == [0, VirtioStatus.FAILED]
    assert dev.status == VirtioStatus.FAILED
    assert not any(q.enable for q in dev.queues)


# --- successful probes ---------------------------------------------------------------

def test_probe_default_device():
    dev = FakeVirtioNetDevice()
    net = probe(dev)
    expected = int(VirtioF.VERSION_1 | F.MAC | F.MTU | F.STATUS | F.CTRL_VQ | F.CTRL_RX | F.MQ)
    assert net.negotiated_features == expected
    assert dev.driver_features == expected
    assert not net.negotiated_features & (F.CSUM | F.GUEST_CSUM)   # offered, not supported
    assert dev.status == RUNNING
    assert dev.reset_count == 1
    assert dev.command & spec.PciCommand.MEMORY_SPACE
    assert dev.command & spec.PciCommand.BUS_MASTER
    assert net.mac == DEFAULT_MAC and net.mac_from_device
    assert net.mtu == spec.ETH_DATA_LEN
    assert net.link_up
    assert net.max_queue_pairs == 1 and net.curr_queue_pairs == 1
    assert sorted(net.queues) == [0, 1, 2] and net.ctrl_queue_index == 2
    for index, vq in net.queues.items():
        q = dev.queues[index]
        assert q.enable == 1 and q.size == vq.num == 256
        assert (q.desc, q.driver, q.device) == (vq.desc_addr, vq.avail_addr, vq.used_addr)
        assert q.msix_vector == spec.VIRTIO_MSI_NO_VECTOR
        if index != net.ctrl_queue_index:      # probe sent VQ_PAIRS_SET on the control queue
            assert dev.dma_peek(vq.desc_addr, desc_table_size(vq.num)) == bytes(16 * vq.num)
            assert dev.dma_peek(vq.used_addr, used_ring_size(vq.num)) == \
                bytes(used_ring_size(vq.num))
        assert vq.notify_address == net.pci.notify_address(index)
    # with MQ, probe asks for every pair (one here), as Linux does
    assert [(r.cls, r.cmd, r.data) for r in dev.ctrl.acked] == [(4, 0, b"\x01\x00")]
    assert net.pci.notify_address(1) - net.pci.notify_address(0) == net.pci.notify_off_multiplier
    assert dev.config_msix_vector == spec.VIRTIO_MSI_NO_VECTOR
    summary = net.summary()
    assert summary["mac"] == "52:54:00:12:34:56" and "MQ" in summary["negotiated_features"]
    assert dev.protocol_errors == []


def test_probe_multiqueue_msix_mtu_link_down():
    dev = FakeVirtioNetDevice(max_pairs=3, msix_vectors=8, mtu=9000, link_up=False,
                              queue_max_size=64)
    net = probe(dev)
    assert net.max_queue_pairs == 3 and net.curr_queue_pairs == 3     # all, by default
    assert dev.ctrl.pairs == 3
    assert sorted(net.queues) == list(range(7)) and net.ctrl_queue_index == 6
    assert net.mtu == 9000 and not net.link_up and not net.carrier
    assert net.msix and dev.config_msix_vector == 0
    # a vector per data queue; the control queue is polled
    assert [dev.queues[i].msix_vector for i in range(7)] == \
        list(range(1, 7)) + [spec.VIRTIO_MSI_NO_VECTOR]
    assert all(vq.num == 64 for vq in net.queues.values())
    assert dev.status == RUNNING and dev.protocol_errors == []


def test_too_few_msix_vectors_means_no_vectors():
    dev = FakeVirtioNetDevice(max_pairs=1, msix_vectors=1)    # shared needs 2
    net = probe(dev)
    assert not net.msix and net.vector_policy.value == "none"
    assert all(q.msix_vector == spec.VIRTIO_MSI_NO_VECTOR for q in dev.queues)
    assert dev.config_msix_vector == spec.VIRTIO_MSI_NO_VECTOR


def test_max_pairs_out_of_range_falls_back_to_one():
    dev = FakeVirtioNetDevice(max_pairs=0, num_queues=3)
    net = probe(dev)
    assert net.max_queue_pairs == 1 and sorted(net.queues) == [0, 1, 2]
    # VQ_PAIRS_SET 1 is above the device's max_virtqueue_pairs 0: refused, still 1
    assert net.curr_queue_pairs == 1 and net.stats().ctrl.errors == 1


def test_without_ctrl_vq_no_control_queue():
    dev = FakeVirtioNetDevice(features=int(VirtioF.VERSION_1 | F.MAC), num_queues=2)
    net = probe(dev)
    assert net.ctrl_queue_index is None and sorted(net.queues) == [0, 1]
    assert net.link_up                                   # no STATUS: assumed up


def test_remove_resets():
    dev = FakeVirtioNetDevice()
    net = probe(dev)
    run(net.remove())
    assert dev.status == 0 and not any(q.enable for q in dev.queues)


# --- feature validation ------------------------------------------------------------------

def test_validate_features_clean():
    assert validate_features(DRIVER_FEATURES) == []
    assert validate_features(int(F.GUEST_CSUM | F.GUEST_TSO4 | F.GUEST_ECN
                                 | F.CSUM | F.HOST_TSO6 | F.HOST_ECN)) == []


def test_mq_and_ctrl_rx_without_ctrl_vq_reports_both():
    dev = FakeVirtioNetDevice(features=int(VirtioF.VERSION_1 | F.MAC | F.MQ | F.CTRL_RX))
    err = probe_error(dev)
    assert sorted(err.problems) == [
        "device offers CTRL_RX but not its dependency CTRL_VQ",
        "device offers MQ but not its dependency CTRL_VQ",
    ]
    assert "CTRL_RX" in str(err) and "MQ" in str(err)
    assert_given_up(dev)


def test_guest_ecn_without_tso_and_csum():
    problems = validate_features(int(VirtioF.VERSION_1 | F.GUEST_ECN))
    assert sorted(problems) == [
        "device offers GUEST_ECN but not its dependency GUEST_CSUM",
        "device offers GUEST_ECN but not its dependency GUEST_TSO4 or GUEST_TSO6",
    ]
    dev = FakeVirtioNetDevice(features=int(VirtioF.VERSION_1 | F.GUEST_ECN | F.HOST_ECN))
    err = probe_error(dev)
    assert len(err.problems) == 4
    assert "device offers HOST_ECN but not its dependency HOST_TSO4 or HOST_TSO6" in err.problems
    assert "device offers HOST_ECN but not its dependency CSUM" in err.problems


def test_every_problem_listed_including_version_1():
    problems = validate_features(int(F.HOST_TSO4 | F.GUEST_UFO | F.RSS | F.HASH_REPORT))
    assert len(problems) == 4
    err = probe_error(FakeVirtioNetDevice(features=int(F.MAC | F.MQ)))
    assert len(err.problems) == 2 and any("VERSION_1" in p for p in err.problems)


def test_small_mtu_clears_f_mtu():
    dev = FakeVirtioNetDevice(mtu=60)
    net = probe(dev)
    assert not net.negotiated_features & F.MTU
    assert not dev.driver_features & F.MTU
    assert net.mtu == spec.ETH_DATA_LEN
    assert dev.status == RUNNING


def test_no_f_mac_gives_random_local_unicast_mac():
    features = DRIVER_FEATURES & ~int(F.MAC)
    macs = set()
    for seed in range(8):
        net = probe(FakeVirtioNetDevice(features=features), rng=random.Random(seed))
        assert not net.mac_from_device and len(net.mac) == spec.ETH_ALEN
        assert net.mac[0] & 0x02 and not net.mac[0] & 0x01
        macs.add(net.mac)
    assert len(macs) == 8 and DEFAULT_MAC not in macs
    net = probe(FakeVirtioNetDevice(features=features))      # os.urandom
    assert net.mac[0] & 0x03 == 0x02


def test_features_ok_refused():
    dev = FakeVirtioNetDevice(refuse_features_ok=True)
    err = probe_error(dev)
    assert "FEATURES_OK" in str(err)
    assert "VERSION_1" in str(err) and "CTRL_VQ" in str(err)   # the features asked for
    assert_given_up(dev)
    assert dev.reset_count == 2


def test_model_refuses_unoffered_feature():
    dev = FakeVirtioNetDevice()
    pci = VirtioPciModernDevice(dev)

    async def go():
        await pci.probe()
        await pci.reset()
        await pci.add_status(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER)
        await pci.set_features(int(VirtioF.VERSION_1 | F.GUEST_TSO4))
        return await pci.add_status(VirtioStatus.FEATURES_OK), await pci.get_status()
    asked, got = run(go())
    assert asked & VirtioStatus.FEATURES_OK and not got & VirtioStatus.FEATURES_OK


# --- capabilities ------------------------------------------------------------------------

def test_cap_exceeding_bar_refused():
    dev = FakeVirtioNetDevice()
    dev.poke_config(dev.cap_pos(VirtioPciCapType.DEVICE_CFG) + VirtioPciCap.LENGTH, 4, 0x10000)
    err = probe_error(dev, VirtioPciError)
    assert "DEVICE_CFG" in str(err) and "exceeds BAR0 size 0x4000" in str(err)
    assert dev.reset_count == 0


def test_cap_with_absent_bar_is_skipped_then_missing():
    dev = FakeVirtioNetDevice()
    dev.poke_config(dev.cap_pos(VirtioPciCapType.NOTIFY_CFG) + VirtioPciCap.BAR, 1, 2)
    err = probe_error(dev, VirtioPciError)
    assert "missing" in str(err) and "NOTIFY_CFG" in str(err)


def test_common_cfg_too_short_refused():
    dev = FakeVirtioNetDevice()
    dev.poke_config(dev.cap_pos(VirtioPciCapType.COMMON_CFG) + VirtioPciCap.LENGTH, 4, 0x20)
    err = probe_error(dev, VirtioPciError)
    assert "COMMON_CFG" in str(err) and "minimum" in str(err)


def test_looping_cap_chain_refused():
    dev = FakeVirtioNetDevice()
    last = dev.cap_pos(VirtioPciCapType.PCI_CFG)
    dev.poke_config(last + VirtioPciCap.CAP_NEXT, 1, dev.cap_pos(VirtioPciCapType.COMMON_CFG))
    err = probe_error(dev, VirtioPciError)
    assert "more than 48" in str(err)


@pytest.mark.parametrize("pointer", [0x20, 0x42])
def test_bad_cap_pointer_refused(pointer):
    dev = FakeVirtioNetDevice()
    dev.poke_config(dev.cap_pos(VirtioPciCapType.ISR_CFG) + VirtioPciCap.CAP_NEXT, 1, pointer)
    err = probe_error(dev, VirtioPciError)
    assert f"{pointer:#04x} is invalid" in str(err)


def test_not_a_modern_virtio_net_device():
    dev = FakeVirtioNetDevice(device_id=0x1000)               # transitional
    assert "not a modern virtio device" in str(probe_error(dev, VirtioPciError))
    dev = FakeVirtioNetDevice(device_id=spec.VIRTIO_PCI_DEVICE_ID_BASE + 2)   # block
    assert "not a network device" in str(probe_error(dev))
    dev = FakeVirtioNetDevice()
    dev.poke_config(spec.PciCfg.VENDOR_ID, 2, 0x8086)
    assert "vendor ID 0x8086" in str(probe_error(dev, VirtioPciError))


# --- queues --------------------------------------------------------------------------------

def test_queue_size_not_power_of_two():
    dev = FakeVirtioNetDevice(queue_max_size=100)
    err = probe_error(dev)
    assert "queue size 100 is not a power of 2" in str(err)
    assert_given_up(dev)
    for bad in (0, 100, 65536):
        with pytest.raises(VirtqueueError):
            run(SplitVirtqueue.allocate(dev, 0, bad))


def test_split_ring_layout():
    dev = FakeVirtioNetDevice()
    dev.dma_alloc(3, 1)                                        # misalign the allocator
    vq = run(SplitVirtqueue.allocate(dev, 5, 8))
    assert vq.desc_addr % 16 == 0 and vq.avail_addr % 2 == 0 and vq.used_addr % 4 == 0
    assert dev.dma_peek(vq.desc_addr, desc_table_size(8)) == bytes(128)
    assert dev.dma_peek(vq.avail_addr, avail_ring_size(8)) == bytes(6 + 2 * 8)
    assert dev.dma_peek(vq.used_addr, used_ring_size(8)) == bytes(6 + 8 * 8)
    assert (vq.num, vq.free_head, vq.num_free) == (8, 0, 8)
    assert vq.desc_next == [1, 2, 3, 4, 5, 6, 7, 8]


def test_device_with_too_few_queues():
    dev = FakeVirtioNetDevice(max_pairs=2, num_queues=3)
    err = probe_error(dev)
    assert "3 virtqueues, the driver needs 5" in str(err)
    assert_given_up(dev)


def test_msix_vector_not_mapped_falls_back_to_shared():
    """Like vp_find_vqs: a vector the device reads back as NO_VECTOR makes the
    driver try the next policy (one vector shared by the queues)."""
    dev = FakeVirtioNetDevice(msix_vectors=2)
    dev.msix_vectors_available = lambda: 8                     # transport promises more
    net = probe(dev)
    assert net.vector_policy.value == "shared" and dev.config_msix_vector == 0
    assert [q.msix_vector for q in dev.queues] == [1, 1, spec.VIRTIO_MSI_NO_VECTOR]


def test_config_vector_not_mapped_means_no_vectors():
    dev = FakeVirtioNetDevice(msix_vectors=0)
    dev.msix_vectors_available = lambda: 8                     # the device maps none
    net = probe(dev)
    assert net.vector_policy.value == "none" and not net.msix
    assert dev.status == RUNNING


# --- transport and configuration helpers ----------------------------------------------------

def test_region_bounds():
    dev = FakeVirtioNetDevice()
    region = Region(dev, BAR0_ADDRESS, 0x2000, 8, name="device")
    with pytest.raises(RegionAccessError, match="outside the region"):
        run(region.read32(8))
    with pytest.raises(RegionAccessError, match="outside the region"):
        run(region.read64(4))
    with pytest.raises(RegionAccessError, match="aligned"):
        run(region.read16(1))


def test_config_generation_retry_and_give_up():
    dev = FakeVirtioNetDevice()
    pci = VirtioPciModernDevice(dev)
    run(pci.probe())
    dev.unstable_generation_reads = 3
    assert run(pci.read_config_bytes(spec.VirtioNetCfg.MAC, 6)) == DEFAULT_MAC
    assert dev.unstable_generation_reads == 0
    dev.unstable_generation_reads = 10 ** 6
    with pytest.raises(VirtioPciError, match="kept changing"):
        run(pci.read_config_bytes(spec.VirtioNetCfg.MAC, 6))


def test_reset_bounded():
    dev = FakeVirtioNetDevice()
    dev.reset_delay_reads = 5
    probe(dev)                                                  # a slow reset is fine
    dev = FakeVirtioNetDevice()
    dev.reset_delay_reads = 10 ** 6
    err = probe_error(dev, VirtioPciError)
    assert "still not 0 after reset" in str(err)


def test_device_cfg_too_short_for_mtu_fails_cleanly():
    dev = FakeVirtioNetDevice()
    dev.poke_config(dev.cap_pos(VirtioPciCapType.DEVICE_CFG) + VirtioPciCap.LENGTH, 4, 8)
    err = probe_error(dev)
    assert "outside the region" in str(err) and "device_cfg" in str(err)
    assert_given_up(dev)
