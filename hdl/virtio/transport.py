"""The virtio PCI transport: BAR0's structures and the capabilities that find them.

Composes, behind one BAR register bus:

    common cfg (CommonConfig) | ISR (IsrStatus) | device cfg (given)
    notify (NotifyRegion)     | MSI-X table + PBA (MsixTable)

and lists the config-space capabilities describing them (virtio 1.2 section
4.1.4), with MSI-X's (PCI 3.0 section 6.8.2).
"""
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from .. import spec
from ..pcie.msix import MsixCapability, MsixTable
from ..pcie.register_bus import RegisterBusSignature, RegisterDecoder
from ..pcie.tlp import DwordStreamSignature
from .bar_layout import BarLayout
from .common_cfg import COMMON_CFG_ADDR_WIDTH, CommonConfig, QueueSettingsSignature
from .isr import IsrStatus
from .notify import NOTIFY_OFF_MULTIPLIER, NotifyRegion
from .pci_caps import VirtioNotifyCapability, VirtioPciCapability, VirtioPciCfgCapability

__all__ = ["VirtioPciTransport"]


def _width(dwords):
    return max(1, (dwords - 1).bit_length())


class VirtioPciTransport(wiring.Component):
    """Ports:
        bar:         In(RegisterBusSignature), BAR0 from the completer.
        device_cfg:  Out(RegisterBusSignature), the device-specific config window.
        stats:       Out(RegisterBusSignature), the device's statistics window.
        doorbell:    Out(stream.Signature(16)), notified queue indexes.
        queue_enable: Out(num_queues), each queue's queue_enable.
        settings:    In(QueueSettingsSignature(num_queues)).array(settings_readers),
                     the ring engines' reads of the queues' settings (`CommonConfig`).
        status:      Out(8), device_status.
        driver_features: Out(64).
        device_reset: Out(1), pulse: the driver reset the device.
        config_changed: In(1), pulse from the device cfg.
        needs_reset: In(1), pulse: set DEVICE_NEEDS_RESET.
        used_notify: In(num_queues), pulse per queue: a used buffer
                     notification (raises the queue's vector; ISR bit 0 without MSI-X).
        msix_msg:    Out(DwordStreamSignature), MSI-X messages for the TX arbiter.
        msix_enable, msix_function_mask, bus_master, requester_id: In, from config space.

    A configuration change raises config_msix_vector, a used buffer
    notification the queue's vector (virtio 1.2 section 4.1.5.3, 4.1.5.4);
    VIRTIO_MSI_NO_VECTOR raises none.
    """

    def __init__(self, *, device_features, num_queues, queue_size_max, msix_vectors,
                 device_cfg_size, device_cfg_addr_width, stats_addr_width, layout=BarLayout(),
                 settings_readers=1):
        self.layout = layout
        self.num_queues = num_queues
        self.msix_vectors = msix_vectors
        self._common = CommonConfig(device_features=device_features, num_queues=num_queues,
                                    queue_size_max=queue_size_max, msix_vectors=msix_vectors,
                                    readers=settings_readers)
        self._notify_width = _width(num_queues)
        self._table_width = _width(msix_vectors * spec.MSIX_ENTRY_SIZE // 4)
        self._pba_width = _width((msix_vectors + 31) // 32)
        self._device_cfg_width = device_cfg_addr_width
        self._stats_width = stats_addr_width
        self.capabilities = self._capabilities(device_cfg_size)
        super().__init__({
            "bar": In(RegisterBusSignature(layout.addr_width)),
            "device_cfg": Out(RegisterBusSignature(device_cfg_addr_width)),
            "stats": Out(RegisterBusSignature(stats_addr_width)),
            "doorbell": Out(stream.Signature(16)),
            "queue_enable": Out(num_queues),
            "settings": In(QueueSettingsSignature(num_queues)).array(settings_readers),
            "status": Out(8),
            "driver_features": Out(64),
            "device_reset": Out(1),
            "config_changed": In(1),
            "needs_reset": In(1),
            "used_notify": In(num_queues),
            "msix_msg": Out(DwordStreamSignature),
            "msix_enable": In(1),
            "msix_function_mask": In(1),
            "bus_master": In(1),
            "requester_id": In(16),
        })

    def _capabilities(self, device_cfg_size):
        L, T = self.layout, spec.VirtioPciCapType
        self.msix_cap = MsixCapability(self.msix_vectors, L.bar, L.msix_table, L.msix_pba)
        self.cfg_access_cap = VirtioPciCfgCapability()
        return [
            self.msix_cap,
            VirtioPciCapability(T.COMMON_CFG, L.bar, L.common, spec.VIRTIO_COMMON_CFG_SIZE),
            VirtioNotifyCapability(L.bar, L.notify, self.num_queues * NOTIFY_OFF_MULTIPLIER,
                                   NOTIFY_OFF_MULTIPLIER),
            VirtioPciCapability(T.ISR_CFG, L.bar, L.isr, 4),
            VirtioPciCapability(T.DEVICE_CFG, L.bar, L.device, device_cfg_size),
            self.cfg_access_cap,
        ]

    def elaborate(self, platform):
        m = Module()
        L = self.layout
        m.submodules.decoder = decoder = RegisterDecoder(L.addr_width, [
            ("common", L.common // 4, COMMON_CFG_ADDR_WIDTH),
            ("isr", L.isr // 4, 1),
            ("device", L.device // 4, self._device_cfg_width),
            ("notify", L.notify // 4, self._notify_width),
            ("msix_table", L.msix_table // 4, self._table_width),
            ("msix_pba", L.msix_pba // 4, self._pba_width),
            ("stats", L.stats // 4, self._stats_width),
        ])
        m.submodules.common = common = self._common
        m.submodules.isr = isr = IsrStatus()
        m.submodules.notify = notify = NotifyRegion(self.num_queues, self._notify_width)
        m.submodules.msix = msix = MsixTable(self.msix_vectors, self._table_width, self._pba_width)

        connect(m, wiring.flipped(self.bar), decoder.bus)
        connect(m, decoder.common, common.bus)
        connect(m, decoder.isr, isr.bus)
        connect(m, decoder.device, wiring.flipped(self.device_cfg))
        connect(m, decoder.stats, wiring.flipped(self.stats))
        connect(m, decoder.notify, notify.bus)
        connect(m, decoder.msix_table, msix.table)
        connect(m, decoder.msix_pba, msix.pba)
        connect(m, notify.doorbell, wiring.flipped(self.doorbell))

        # Setting DEVICE_NEEDS_RESET is announced like a configuration change
        # (virtio 1.2 section 2.1.2).
        config_event = self.config_changed | self.needs_reset
        m.d.comb += [
            self.status.eq(common.status),
            self.driver_features.eq(common.driver_features),
            self.device_reset.eq(common.reset),
            common.config_changed.eq(self.config_changed),
            common.needs_reset.eq(self.needs_reset),
            # ISR is the INTx path: with MSI-X enabled the vector is the
            # notification and ISR is left alone (virtio 1.2 section 4.1.5.3, 4.1.5.4)
            isr.queue.eq((self.used_notify != 0) & ~self.msix_enable),
            isr.config.eq(config_event & ~self.msix_enable),
            isr.reset.eq(common.reset),
            notify.reset.eq(common.reset),
        ]
        m.d.comb += self.queue_enable.eq(common.queue_enable)
        for ours, theirs in zip(self.settings, common.settings):
            connect(m, wiring.flipped(ours), theirs)

        # Events to MSI-X vectors.
        connect(m, msix.msg, wiring.flipped(self.msix_msg))
        m.d.comb += [
            msix.enable.eq(self.msix_enable),
            msix.function_mask.eq(self.msix_function_mask),
            msix.bus_master.eq(self.bus_master),
            msix.requester_id.eq(self.requester_id),
        ]
        for v in range(self.msix_vectors):
            events = config_event & (common.config_msix_vector == v)
            for q in range(self.num_queues):
                events = events | (self.used_notify[q] & (common.queue_vector[q] == v))
            m.d.comb += msix.raise_[v].eq(events)
        return m
