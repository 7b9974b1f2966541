"""The portable core: a virtio-net PCIe endpoint behind a pair of TLP streams
and a pair of frame streams.

    tlp_rx -> DwordUnpacker -> RxDemux -+-req-> Completer <-> ConfigSpace
                                        |         |
                                        |         +--> VirtioPciTransport (BAR0)
                                        |               +-- NetDeviceConfig, QueueCounters
                                        |               +-- doorbells --> RingEngine
                                        +-cpl-> DmaReader <---------------+   |   ^
                                                                               |   |
    tlp_tx <- DwordPacker <- TxArbiter <- Completer completions                |   |
                                       <- MSI-X messages                       |   |
                                       <- DmaReader MRd  <- TlpGate            |   |
                                       <- DmaWriter MWr  <- TlpGate <----------+   |
    wire_tx <- FrameSender <- PacketFifo (TX) <- BytePacker <- RingEngine          |
    wire_rx -> PacketFifo (RX) -> segments -> BytePacker -> RingEngine ------------+

Build parameters are a `CoreParams`. The device offers only the features it
implements (`implemented_features`); `CoreParams.features` overrides that,
for tests that need a device advertising something else.
"""
import dataclasses

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from . import spec
from .lib.byte_packer import BytePacker
from .lib.pipeline import PipelineRegister, SkidBuffer
from .pcie.dma import DmaData, DmaRequest
from .net.frame import FrameStreamSignature
from .net.packet_fifo import DropReason, PacketFifo
from .net.wire_tx import FrameSender
from .pcie.dma_read import DmaReader
from .pcie.dma_write import DmaWriter
from .pcie.tlp_gate import TlpGate
from .virtio.virtqueues import ROLES, Virtqueues
from .net.ctrl import ControlCommands
from .net.rx_classifier import RxClassifier
from .net.counters import STATS_ADDR_WIDTH, DropCounter, QueueCounters
from .net.device_cfg import DEVICE_CFG_ADDR_WIDTH, NetDeviceConfig
from .pcie.completer import Completer
from .pcie.config_space import ConfigHeader, ConfigSpace
from .pcie.dword import DwordPacker, DwordUnpacker
from .pcie.pcie_cap import PciExpressCapability
from .pcie.register_bus import RegisterBusRegister
from .pcie.rx_demux import RxDemux
from .pcie.tlp import DwordBeat, TlpStreamSignature
from .pcie.tx_arbiter import TxArbiter
from .virtio.bar_layout import BarLayout
from .virtio.transport import VirtioPciTransport

__all__ = ["CoreParams", "VirtioNetCore", "implemented_features"]

DEFAULT_MAC = bytes.fromhex("02005e100001")      # locally administered
MAX_QUEUE_PAIRS = 127                             # 255 MSI-X vectors: 4080 bytes of table
MAX_MTU = 9216                                    # jumbo frames; the frame buffers grow with it
# TX arbiter inputs: completions to the host's requests, MSI-X messages, the
# two DMA readers' MRd (the TX engine's, the RX engine's), the DMA writer's MWr
_ARBITER_INPUTS = ("completions", "msix", "reads_tx", "reads", "writes")
# read requests go first at a TLP boundary (TxArbiter): their data is a round
# trip away, and one waiting behind the RX engine's writes slows the TX engine
_URGENT_INPUTS = ("reads_tx", "reads")
_READER_TAG_SPACE_BITS = 1  # the top tag bit tells the two readers' completions apart
TX_BUFFER_FRAMES = 2       # longest frames the TX frame buffer holds (one on the wire, one filling)
RX_BUFFER_FRAMES = 4       # the RX side holds more: the wire does not wait while the engine serves TX


def implemented_features():
    """What the gateware really does today; grows as the datapath lands."""
    return (spec.VirtioF.VERSION_1 | spec.VirtioF.EVENT_IDX | spec.VirtioF.INDIRECT_DESC
            | spec.VirtioNetF.MRG_RXBUF | spec.VirtioNetF.CTRL_VQ | spec.VirtioNetF.CTRL_RX
            | spec.VirtioNetF.CTRL_RX_EXTRA | spec.VirtioNetF.CTRL_VLAN | spec.VirtioNetF.CTRL_MAC_ADDR
            | spec.VirtioNetF.MQ | spec.VirtioNetF.MAC | spec.VirtioNetF.MTU | spec.VirtioNetF.STATUS)


@dataclasses.dataclass(frozen=True)
class CoreParams:
    queue_pairs: int = 4
    queue_size_max: int = 256
    mac: bytes = DEFAULT_MAC
    mtu: int = spec.ETH_DATA_LEN
    features: int | None = None        # None: implemented_features()
    # Test only: ring indexes start here instead of 0 (section 2.7 says 0), so
    # that tests reach the 16-bit wrap-around in a few packets.
    ring_start_index: int = 0

    def __post_init__(self):
        # the MSI-X table (16 bytes a vector) must fit its 4 KiB page in BAR0
        if not 1 <= self.queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue_pairs {self.queue_pairs} out of range 1..{MAX_QUEUE_PAIRS}")
        if not spec.ETH_MIN_MTU <= self.mtu <= MAX_MTU:
            raise ValueError(f"mtu {self.mtu} out of range {spec.ETH_MIN_MTU}..{MAX_MTU} "
                             f"(the frame buffers hold whole frames of MTU + 18 bytes)")
        if not 0 <= self.ring_start_index <= 0xFFFF:
            raise ValueError(f"ring_start_index {self.ring_start_index:#x} is not a 16-bit index")
        if self.queue_size_max & (self.queue_size_max - 1) or not 1 <= self.queue_size_max <= 32768:
            raise ValueError(f"queue_size_max {self.queue_size_max}: a power of two up to 32768")

    @property
    def device_features(self):
        return implemented_features() if self.features is None else self.features

    @property
    def num_queues(self):
        return spec.virtqueue_pairs_to_queues(self.queue_pairs)

    @property
    def max_frame(self):
        """Longest frame on the wire: MTU + Ethernet header + one VLAN tag."""
        return self.mtu + spec.ETH_HLEN + spec.VLAN_HLEN

    def frame_buffer_dwords(self, frames):
        """DWs of a frame buffer holding `frames` longest frames (a power of two)."""
        dwords = -(-frames * self.max_frame // 4)
        return 1 << (dwords - 1).bit_length()

    @property
    def msix_vectors(self):
        # one per queue, as Linux asks, plus the config vector
        return self.num_queues

    def tag(self):
        """A short name for build directories: one per parameter set."""
        return (f"qp{self.queue_pairs}_qs{self.queue_size_max}_mtu{self.mtu}"
                f"_mac{self.mac.hex()}_f{self.device_features:016x}"
                + (f"_idx{self.ring_start_index:04x}" if self.ring_start_index else ""))


class VirtioNetCore(wiring.Component):
    """Ports:
        tlp_rx:  In(TlpStreamSignature()), TLPs from the host.
        tlp_tx:  Out(TlpStreamSignature()), TLPs to the host.
        link_up: In(1), the Ethernet link state.
        wire_tx: Out(FrameStreamSignature), frames to the wire.
        wire_rx: In(FrameStreamSignature), frames from the wire.
        wire_rx_abort: In(1), with wire_rx's last beat: the MAC found the frame
                 bad (FCS, PHY error); it is dropped (and counted as filtered).
        link_correctable_error: In(1), pulse: the PCIe link (physical or data
                 link layer) found a correctable error (PCIe Base 4.0 section
                 6.2); sets Device Status.Correctable Error Detected. 0 where
                 there is no link (simulation).
    """
    tlp_rx: In(TlpStreamSignature())
    tlp_tx: Out(TlpStreamSignature())
    link_up: In(1)
    wire_tx: Out(FrameStreamSignature)
    wire_rx: In(FrameStreamSignature)
    wire_rx_abort: In(1)
    link_correctable_error: In(1)

    def __init__(self, params=CoreParams()):
        self.params = params
        layout = BarLayout()
        self.transport = VirtioPciTransport(
            device_features=params.device_features, num_queues=params.num_queues,
            queue_size_max=params.queue_size_max, msix_vectors=params.msix_vectors,
            device_cfg_size=spec.VIRTIO_NET_CFG_SIZE, device_cfg_addr_width=DEVICE_CFG_ADDR_WIDTH,
            stats_addr_width=STATS_ADDR_WIDTH, layout=layout,
            settings_readers=len(ROLES))
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
        self.engine = Virtqueues(num_queues=params.num_queues, max_tx_frame=params.max_frame,
                                 initial_idx=params.ring_start_index)
        self.tx_fifo = PacketFifo(depth=params.frame_buffer_dwords(TX_BUFFER_FRAMES),
                                  min_length=spec.ETH_HLEN,
                                  max_length=params.max_frame, backpressure=True)
        self.ctrl = ControlCommands(max_pairs=params.queue_pairs, default_mac=params.mac)
        self.rx_classifier = RxClassifier(max_pairs=params.queue_pairs)
        self.rx_fifo = PacketFifo(depth=params.frame_buffer_dwords(RX_BUFFER_FRAMES),
                                  min_length=spec.ETH_HLEN,
                                  max_length=params.max_frame, backpressure=False)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unpacker = unpacker = DwordUnpacker()
        m.submodules.demux = demux = RxDemux()
        m.submodules.completer = completer = self.completer
        m.submodules.config_space = config_space = self.config_space
        m.submodules.transport = transport = self.transport
        m.submodules.device_cfg = device_cfg = self.device_cfg
        m.submodules.arbiter = arbiter = TxArbiter(
            len(_ARBITER_INPUTS), urgent=[_ARBITER_INPUTS.index(name) for name in _URGENT_INPUTS])
        m.submodules.packer = packer = DwordPacker()

        connect(m, wiring.flipped(self.tlp_rx), unpacker.i)
        # register stages: the link side, the demux and the completer's
        # header decode would otherwise be one combinational path
        m.submodules.rx_reg = rx_reg = PipelineRegister(DwordBeat)
        m.submodules.req_reg = req_reg = PipelineRegister(DwordBeat)
        connect(m, unpacker.o, rx_reg.i)
        connect(m, rx_reg.o, demux.i)
        connect(m, demux.req, req_reg.i)
        connect(m, req_reg.o, completer.req)
        connect(m, completer.cpl, arbiter.i[_ARBITER_INPUTS.index("completions")])
        connect(m, transport.msix_msg, arbiter.i[_ARBITER_INPUTS.index("msix")])
        connect(m, arbiter.o, packer.i)
        connect(m, packer.o, wiring.flipped(self.tlp_tx))
        connect(m, completer.cfg, config_space.bus)
        # BAR0 accesses through a register stage: the completer's decode and
        # the BAR's register blocks would otherwise be one path
        m.submodules.bar_reg = bar_reg = RegisterBusRegister(self.transport.layout.addr_width)
        connect(m, completer.bar, bar_reg.i)
        connect(m, bar_reg.o, transport.bar)
        connect(m, transport.device_cfg, device_cfg.bus)

        # Max_Payload_Size as programmed, but never above what DevCap offers.
        mps_field = config_space.devctl[spec.PCIE_DEVCTL_MPS_SHIFT:][:3]
        mps_supported = self.config_space_pcie_cap.mps_code
        mps = Mux(mps_field > mps_supported, mps_supported, mps_field)

        # --- DMA requester and ring engine --------------------------------
        # The driver's reset of the device (status 0) resets the datapath
        # once both DMA sources stand at a TLP boundary (a TLP cut short would
        # hold the TX arbiter for ever), registered before it fans out.
        gates = {name: TlpGate() for name in ("reads_tx", "reads", "writes")}
        for name, gate in gates.items():
            m.submodules[f"{name}_gate"] = gate
        reset_pending = Signal()
        dev_reset = Signal()
        with m.If(transport.device_reset):
            m.d.sync += reset_pending.eq(1)
        with m.Elif(dev_reset):
            m.d.sync += reset_pending.eq(0)
        all_quiet = Signal()
        m.d.comb += all_quiet.eq(Cat(gate.quiet for gate in gates.values()).all())
        m.d.sync += dev_reset.eq(reset_pending & all_quiet & ~dev_reset)
        m.d.comb += [gate.stop.eq(reset_pending) for gate in gates.values()]
        # two readers: the TX engine's alone (its long buffer reads would hold
        # up every other read queued behind them), and the others'; each in
        # its half of the tag space, both fed every completion
        m.submodules.dma_read_tx = dma_read_tx = ResetInserter(dev_reset)(
            DmaReader(tag_space=(0, _READER_TAG_SPACE_BITS)))
        m.submodules.dma_read = dma_read = ResetInserter(dev_reset)(
            DmaReader(tag_space=(1, _READER_TAG_SPACE_BITS)))
        m.submodules.dma_write = dma_write = ResetInserter(dev_reset)(DmaWriter())
        m.submodules.engine = engine = ResetInserter(dev_reset)(self.engine)
        m.submodules.tx_packer = tx_packer = ResetInserter(dev_reset)(BytePacker())
        m.submodules.tx_fifo = tx_fifo = ResetInserter(dev_reset)(self.tx_fifo)
        m.submodules.tx_sender = tx_sender = ResetInserter(dev_reset)(FrameSender())
        m.submodules.rx_fifo = rx_fifo = ResetInserter(dev_reset)(self.rx_fifo)
        m.submodules.rx_packer = rx_packer = ResetInserter(dev_reset)(BytePacker())
        m.submodules.ctrl_packer = ctrl_packer = ResetInserter(dev_reset)(BytePacker())
        m.submodules.ctrl = ctrl = ResetInserter(dev_reset)(self.ctrl)
        m.submodules.rx_classifier = classifier = ResetInserter(dev_reset)(self.rx_classifier)

        m.d.comb += demux.cpl.ready.eq(1)                 # readers always take completions
        for reader in (dma_read_tx, dma_read):
            m.d.comb += [reader.cpl.valid.eq(demux.cpl.valid),
                         reader.cpl.payload.eq(demux.cpl.payload)]
        for name, source in (("reads_tx", dma_read_tx), ("reads", dma_read), ("writes", dma_write)):
            connect(m, source.tlp, gates[name].i)
            connect(m, gates[name].o, arbiter.i[_ARBITER_INPUTS.index(name)])
        # requests go through a register stage: the engine computes ring
        # addresses, the requester splits them; neither waits for the other
        for name, port, reader in (("rd_tx", engine.dma_rd_tx, dma_read_tx),
                                   ("rd", engine.dma_rd, dma_read)):
            req_reg = ResetInserter(dev_reset)(PipelineRegister(DmaRequest))
            data_skid = ResetInserter(dev_reset)(SkidBuffer(DmaData))
            m.submodules[f"{name}_req_reg"] = req_reg
            m.submodules[f"{name}_data_skid"] = data_skid
            connect(m, port.req, req_reg.i)
            connect(m, req_reg.o, reader.client.req)
            connect(m, reader.client.data, data_skid.i)
            connect(m, data_skid.o, port.data)
        m.submodules.wr_req_reg = wr_req_reg = ResetInserter(dev_reset)(PipelineRegister(DmaRequest))
        connect(m, engine.dma_wr.req, wr_req_reg.i)
        connect(m, wr_req_reg.o, dma_write.client.req)
        # data both ways through skid buffers: ready paths stop here too
        m.submodules.wr_data_skid = wr_skid = ResetInserter(dev_reset)(SkidBuffer(DmaData))
        connect(m, engine.dma_wr.data, wr_skid.i)
        connect(m, wr_skid.o, dma_write.client.data)
        m.d.comb += engine.dma_wr.busy.eq(dma_write.client.busy | wr_req_reg.o.valid)
        connect(m, transport.doorbell, engine.doorbell)
        m.d.comb += engine.queue_enable.eq(transport.queue_enable)
        for reads, table in zip(engine.settings, transport.settings):
            connect(m, reads, table)

        # TX: engine -> packer -> frame buffer -> wire
        connect(m, engine.tx, tx_packer.i)
        connect(m, tx_packer.o, tx_fifo.w)
        connect(m, tx_sender.seg_req, tx_fifo.seg_req)
        connect(m, tx_fifo.seg, tx_sender.seg)
        connect(m, tx_sender.o, wiring.flipped(self.wire_tx))
        # RX: wire -> classifier -> frame buffer -> (segments) -> packer -> engine
        connect(m, wiring.flipped(self.wire_rx), classifier.i)
        m.d.comb += classifier.i_abort.eq(self.wire_rx_abort)
        connect(m, classifier.o, rx_fifo.w)
        m.d.comb += [rx_fifo.w_abort.eq(classifier.abort), rx_fifo.w_tag.eq(classifier.tag),
                     engine.rx_pair.eq(rx_fifo.head_tag)]
        # the control queue: engine -> packer -> commands -> classifier settings
        connect(m, engine.cmd, ctrl_packer.i)
        connect(m, ctrl_packer.o, ctrl.cmd)
        connect(m, ctrl.ack, engine.ack)
        vlan_clear = Signal()                # the VLAN table empties after a reset
        m.d.sync += vlan_clear.eq(dev_reset)
        negotiated = transport.driver_features
        m.d.comb += [
            ctrl.cmd_bad.eq(engine.cmd_bad),
            ctrl.features.eq(negotiated),
            classifier.pairs.eq(ctrl.pairs),
            classifier.steer.eq((negotiated & spec.VirtioNetF.MQ) != 0),
            classifier.mode.eq(ctrl.mode),
            classifier.mac.eq(ctrl.mac),
            classifier.uc_count.eq(ctrl.uc_count),
            classifier.mc_count.eq(ctrl.mc_count),
            classifier.vlan_filter_enable.eq((negotiated & spec.VirtioNetF.CTRL_VLAN) != 0),
            classifier.vlan_clear.eq(vlan_clear),
            ctrl.vlan_busy.eq(classifier.vlan_clearing | vlan_clear),
        ]
        connect(m, ctrl.uc_w, classifier.uc_w)
        connect(m, ctrl.mc_w, classifier.mc_w)
        connect(m, ctrl.vlan_w, classifier.vlan_w)
        connect(m, ctrl.steer_w, classifier.steer_w)
        connect(m, engine.rx_seg_req, rx_fifo.seg_req)
        connect(m, rx_fifo.seg, rx_packer.i)
        connect(m, rx_packer.o, engine.rx_seg)

        # --- statistics -------------------------------------------------------
        m.submodules.counters = counters = ResetInserter(dev_reset)(QueueCounters(self.params.num_queues))
        connect(m, transport.stats, counters.bus)
        tx_dropped = tx_fifo.dropped != 0
        rx_dropped = rx_fifo.dropped != 0
        m.d.comb += [
            counters.tx.queue.eq(engine.tx_queue),
            counters.tx.packet.eq(tx_fifo.committed),
            counters.tx.length.eq(tx_fifo.length),
            counters.tx.drop.eq(tx_dropped | engine.tx_empty),
            counters.rx.queue.eq(engine.rx_queue),
            counters.rx.packet.eq(engine.rx_delivered),
            counters.rx.length.eq(engine.rx_length),
            counters.rx.drop.eq(engine.rx_too_big),
            counters.rx_drop.eq(rx_dropped),
            counters.reasons[DropCounter.RX_NO_SPACE].eq(rx_fifo.dropped[DropReason.NO_SPACE]),
            counters.reasons[DropCounter.RX_TOO_SHORT].eq(rx_fifo.dropped[DropReason.TOO_SHORT]),
            counters.reasons[DropCounter.RX_TOO_LONG].eq(rx_fifo.dropped[DropReason.TOO_LONG]),
            counters.reasons[DropCounter.RX_BUFFER_TOO_SMALL].eq(engine.rx_too_big),
            counters.reasons[DropCounter.RX_FILTERED].eq(rx_fifo.dropped[DropReason.ABORTED]),
            counters.reasons[DropCounter.TX_TOO_SHORT].eq(
                tx_fifo.dropped[DropReason.TOO_SHORT] | (engine.tx_empty & ~engine.tx_long)),
            counters.reasons[DropCounter.TX_TOO_LONG].eq(
                tx_fifo.dropped[DropReason.TOO_LONG] | tx_fifo.dropped[DropReason.ABORTED]
                | (engine.tx_empty & engine.tx_long)),
        ]

        status = transport.status
        m.d.comb += [
            engine.event_idx.eq((transport.driver_features & spec.VirtioF.EVENT_IDX) != 0),
            engine.indirect.eq((transport.driver_features & spec.VirtioF.INDIRECT_DESC) != 0),
            engine.mrg_rxbuf.eq((transport.driver_features & spec.VirtioNetF.MRG_RXBUF) != 0),
            engine.run.eq(((status & spec.VirtioStatus.DRIVER_OK) != 0)
                          & ((status & spec.VirtioStatus.DEVICE_NEEDS_RESET) == 0)),
            tx_fifo.w_abort.eq(engine.tx_abort),
            engine.tx_done.eq(tx_fifo.committed | (tx_fifo.dropped != 0)),
            engine.tx_space.eq(tx_fifo.space),
            tx_sender.head_valid.eq(tx_fifo.head_valid),
            tx_sender.head_length.eq(tx_fifo.head_length),
            tx_fifo.pop.eq(tx_sender.pop),
            engine.rx_valid.eq(rx_fifo.head_valid),
            engine.rx_length.eq(rx_fifo.head_length),
            rx_fifo.pop.eq(engine.rx_pop),
            transport.used_notify.eq(engine.used_notify),
            transport.needs_reset.eq(engine.needs_reset),
        ]
        bus_master = (config_space.command & spec.PciCommand.BUS_MASTER) != 0
        mrrs = config_space.devctl[spec.PCIE_DEVCTL_MRRS_SHIFT:][:3]
        for dma in (dma_read_tx, dma_read, dma_write):
            m.d.comb += [dma.requester_id.eq(completer.completer_id), dma.bus_master.eq(bus_master)]
        m.d.comb += [dma_read_tx.mrrs.eq(mrrs), dma_read.mrrs.eq(mrrs), dma_write.mps.eq(mps)]


        m.d.comb += [
            completer.memory_enable.eq((config_space.command & spec.PciCommand.MEMORY_SPACE) != 0),
            completer.bar0.eq(config_space.bar0),
            completer.mps.eq(mps),
            completer.window_bar.eq(config_space.window_bar),
            completer.window_offset.eq(config_space.window_offset),
            completer.window_length.eq(config_space.window_length),
            config_space.ur_detected.eq(completer.ur_detected),
            config_space.correctable_error.eq(self.link_correctable_error),
            config_space.poisoned.eq(completer.poisoned),
            config_space.received_ur.eq(dma_read_tx.received_ur | dma_read.received_ur),
            config_space.received_ca.eq(dma_read_tx.received_ca | dma_read.received_ca),
            device_cfg.link_up.eq(self.link_up),
            transport.msix_enable.eq((config_space.msix_control & spec.MsixControl.ENABLE) != 0),
            transport.msix_function_mask.eq(
                (config_space.msix_control & spec.MsixControl.FUNCTION_MASK) != 0),
            transport.bus_master.eq((config_space.command & spec.PciCommand.BUS_MASTER) != 0),
            transport.requester_id.eq(completer.completer_id),
            transport.config_changed.eq(device_cfg.changed),
        ]
        return m
