"""The portable core: a virtio-net PCIe endpoint behind a pair of TLP streams.

    tlp_rx -> DwordUnpacker -> RxDemux -+-> Completer <-> ConfigSpace
                                        |      |
                                        |      +--> VirtioPciTransport (BAR0)
                                        |               +-- NetDeviceConfig
                                        +-> cpl: (DMA requester: next issue)
    tlp_tx <- DwordPacker <- TxArbiter <- Completer completions
                                       <- MSI-X messages (config change)

Build parameters are a `CoreParams`. The device offers only the features it
implements (`implemented_features`); `CoreParams.features` overrides that,
for tests that need a device advertising something else.
"""
import dataclasses

from amaranth.hdl import Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from . import spec
from .net.frame import FrameStreamSignature
from .net.device_cfg import DEVICE_CFG_ADDR_WIDTH, NetDeviceConfig
from .pcie.completer import Completer
from .pcie.config_space import ConfigHeader, ConfigSpace
from .pcie.dword import DwordPacker, DwordUnpacker
from .pcie.pcie_cap import PciExpressCapability
from .pcie.rx_demux import RxDemux
from .pcie.tlp import TlpStreamSignature
from .pcie.tx_arbiter import TxArbiter
from .virtio.bar_layout import BarLayout
from .virtio.transport import VirtioPciTransport

__all__ = ["CoreParams", "VirtioNetCore", "implemented_features"]

DEFAULT_MAC = bytes.fromhex("02005e100001")      # locally administered
MAX_QUEUE_PAIRS = 127                             # 255 MSI-X vectors: 4080 bytes of table


def implemented_features():
    """What the gateware really does today; grows as the datapath lands."""
    return (spec.VirtioF.VERSION_1 | spec.VirtioNetF.MAC | spec.VirtioNetF.MTU
            | spec.VirtioNetF.STATUS)


@dataclasses.dataclass(frozen=True)
class CoreParams:
    queue_pairs: int = 4
    queue_size_max: int = 256
    mac: bytes = DEFAULT_MAC
    mtu: int = spec.ETH_DATA_LEN
    features: int | None = None        # None: implemented_features()

    def __post_init__(self):
        # the MSI-X table (16 bytes a vector) must fit its 4 KiB page in BAR0
        if not 1 <= self.queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue_pairs {self.queue_pairs} out of range 1..{MAX_QUEUE_PAIRS}")
        if self.queue_size_max & (self.queue_size_max - 1) or not 1 <= self.queue_size_max <= 32768:
            raise ValueError(f"queue_size_max {self.queue_size_max}: a power of two up to 32768")

    @property
    def device_features(self):
        return implemented_features() if self.features is None else self.features

    @property
    def num_queues(self):
        return spec.virtqueue_pairs_to_queues(self.queue_pairs)

    @property
    def msix_vectors(self):
        # one per queue, as Linux asks, plus the config vector
        return self.num_queues

    def tag(self):
        """A short name for build directories: one per parameter set."""
        return (f"qp{self.queue_pairs}_qs{self.queue_size_max}_mtu{self.mtu}"
                f"_mac{self.mac.hex()}_f{self.device_features:016x}")


class VirtioNetCore(wiring.Component):
    """Ports:
        tlp_rx:  In(TlpStreamSignature()), TLPs from the host.
        tlp_tx:  Out(TlpStreamSignature()), TLPs to the host.
        notify:  Out(stream.Signature(16)), doorbells (queue index).
        link_up: In(1), the Ethernet link state.
        wire_tx: Out(FrameStreamSignature), frames to the wire.
        wire_rx: In(FrameStreamSignature), frames from the wire.
    """
    tlp_rx: In(TlpStreamSignature())
    tlp_tx: Out(TlpStreamSignature())
    notify: Out(stream.Signature(16))
    link_up: In(1)
    wire_tx: Out(FrameStreamSignature)
    wire_rx: In(FrameStreamSignature)

    def __init__(self, params=CoreParams()):
        self.params = params
        layout = BarLayout()
        self.transport = VirtioPciTransport(
            device_features=params.device_features, num_queues=params.num_queues,
            queue_size_max=params.queue_size_max, msix_vectors=params.msix_vectors,
            device_cfg_size=spec.VIRTIO_NET_CFG_SIZE, device_cfg_addr_width=DEVICE_CFG_ADDR_WIDTH,
            layout=layout)
        self.config_space_pcie_cap = pcie_cap = PciExpressCapability()
        header = ConfigHeader(
            vendor_id=spec.VIRTIO_PCI_VENDOR_ID, device_id=spec.VIRTIO_NET_PCI_DEVICE_ID,
            revision=spec.VIRTIO_PCI_REVISION, class_code=spec.PCI_CLASS_NETWORK_ETHERNET,
            subsystem_vendor_id=spec.VIRTIO_PCI_VENDOR_ID, subsystem_id=spec.VIRTIO_PCI_SUBSYSTEM_ID,
            bar0_size=layout.size)
        self.config_space = ConfigSpace(
            header, [pcie_cap] + self.transport.capabilities, pcie_cap=pcie_cap,
            msix_cap=self.transport.msix_cap, cfg_access_cap=self.transport.cfg_access_cap)
        self.completer = Completer(bar_size=layout.size,
                                   window_data_dw=self.config_space.window_data_dw)
        self.device_cfg = NetDeviceConfig(params.mac, params.queue_pairs, params.mtu)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unpacker = unpacker = DwordUnpacker()
        m.submodules.demux = demux = RxDemux()
        m.submodules.completer = completer = self.completer
        m.submodules.config_space = config_space = self.config_space
        m.submodules.transport = transport = self.transport
        m.submodules.device_cfg = device_cfg = self.device_cfg
        m.submodules.arbiter = arbiter = TxArbiter(2)
        m.submodules.packer = packer = DwordPacker()

        connect(m, wiring.flipped(self.tlp_rx), unpacker.i)
        connect(m, unpacker.o, demux.i)
        connect(m, demux.req, completer.req)
        connect(m, completer.cpl, arbiter.i[0])
        connect(m, transport.msix_msg, arbiter.i[1])
        connect(m, arbiter.o, packer.i)
        connect(m, packer.o, wiring.flipped(self.tlp_tx))
        connect(m, completer.cfg, config_space.bus)
        connect(m, completer.bar, transport.bar)
        connect(m, transport.device_cfg, device_cfg.bus)
        connect(m, transport.doorbell, wiring.flipped(self.notify))

        # Max_Payload_Size as programmed, but never above what DevCap offers.
        mps_field = config_space.devctl[spec.PCIE_DEVCTL_MPS_SHIFT:][:3]
        mps_supported = self.config_space_pcie_cap.mps_code
        mps = Mux(mps_field > mps_supported, mps_supported, mps_field)

        # No DMA requester yet (ring engine issue): completions have no
        # reader, so they are taken and dropped rather than stall the link.
        m.d.comb += demux.cpl.ready.eq(1)

        # TEMPORARY until the datapath lands: the wire side loops back.
        from amaranth.lib.fifo import SyncFIFOBuffered
        from .net.frame import FrameBeat
        m.submodules.wire_loop = loop = SyncFIFOBuffered(width=FrameBeat.size, depth=16)
        m.d.comb += [
            loop.w_data.eq(self.wire_rx.payload), loop.w_en.eq(self.wire_rx.valid),
            self.wire_rx.ready.eq(loop.w_rdy),
            self.wire_tx.payload.eq(loop.r_data), self.wire_tx.valid.eq(loop.r_rdy),
            loop.r_en.eq(self.wire_tx.ready),
        ]

        m.d.comb += [
            completer.memory_enable.eq((config_space.command & spec.PciCommand.MEMORY_SPACE) != 0),
            completer.bar0.eq(config_space.bar0),
            completer.mps.eq(mps),
            completer.window_bar.eq(config_space.window_bar),
            completer.window_offset.eq(config_space.window_offset),
            completer.window_length.eq(config_space.window_length),
            config_space.ur_detected.eq(completer.ur_detected),
            config_space.poisoned.eq(completer.poisoned),
            device_cfg.link_up.eq(self.link_up),
            transport.msix_enable.eq((config_space.msix_control & spec.MsixControl.ENABLE) != 0),
            transport.msix_function_mask.eq(
                (config_space.msix_control & spec.MsixControl.FUNCTION_MASK) != 0),
            transport.bus_master.eq((config_space.command & spec.PciCommand.BUS_MASTER) != 0),
            transport.requester_id.eq(completer.completer_id),
            # no ring engine yet: no used buffer notifications
            transport.used_notify.eq(0),
            transport.config_changed.eq(device_cfg.changed),
        ]
        return m
