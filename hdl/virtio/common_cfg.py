"""virtio common configuration, struct virtio_pci_common_cfg (virtio 1.2 section 4.1.4.3).

    +0x00 | device_feature_select                              |
    +0x04 | device_feature (read only, 32 bits of 64 by select) |
    +0x08 | driver_feature_select                              |
    +0x0C | driver_feature                                     |
    +0x10 | num_queues (RO)        | config_msix_vector        |
    +0x14 | queue_select | config_generation | device_status   |
    +0x18 | queue_msix_vector      | queue_size                |
    +0x1C | queue_notify_off (RO)  | queue_enable              |
    +0x20 | queue_desc   (64)                                  |
    +0x28 | queue_driver (64)                                  |
    +0x30 | queue_device (64)                                  |
    +0x38 | queue_reset            | queue_notify_data  (zero: |
    |       features NOTIF_CONFIG_DATA/RING_RESET not offered) |

The device status state machine (section 2.1, 3.1.1): writing 0 resets the
device; FEATURES_OK sticks only when the driver accepted no feature the
device did not offer and accepted VERSION_1 (a non-transitional device has no
legacy interface to fall back on); after FEATURES_OK the driver features are
frozen. DEVICE_NEEDS_RESET is the device's to set, through ``needs_reset``.

MSI-X vectors the table does not have read back as VIRTIO_MSI_NO_VECTOR, which
is how the driver learns a mapping failed (section 4.1.5.1.2).
"""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..pcie.register_bus import RegisterBusSignature, masked_write

__all__ = ["CommonConfig", "QueueConfig", "COMMON_CFG_ADDR_WIDTH"]

COMMON_CFG_ADDR_WIDTH = 4          # 16 DWs cover the 0x3C bytes
_FEATURE_WORDS = 2                 # 64 feature bits, 32 per select value


class QueueConfig(data.Struct):
    """What the ring engine needs to know of one virtqueue."""
    size: 16
    msix_vector: 16
    enable: 1
    desc: 64
    driver: 64
    device: 64


def _dw(offset):
    return offset // 4


class CommonConfig(wiring.Component):
    """Ports:
        bus:         In(RegisterBusSignature(4)), the common cfg window.
        status:      Out(8), device_status.
        driver_features: Out(64), what the driver accepted (valid with FEATURES_OK).
        queues:      Out(QueueConfig).array(num_queues), each queue's settings.
        config_msix_vector: Out(16).
        reset:       Out(1), pulse: the driver reset the device.
        config_changed: In(1), pulse: bump config_generation.
        needs_reset: In(1), pulse: set DEVICE_NEEDS_RESET.
    """

    def __init__(self, *, device_features, num_queues, queue_size_max, msix_vectors):
        if queue_size_max & (queue_size_max - 1) or not 1 <= queue_size_max <= 32768:
            raise ValueError(f"queue size {queue_size_max} must be a power of two up to 32768")
        if not device_features & spec.VirtioF.VERSION_1:
            raise ValueError("a non-transitional device must offer VERSION_1")
        self.device_features = device_features
        self.num_queues = num_queues
        self.queue_size_max = queue_size_max
        self.msix_vectors = msix_vectors
        super().__init__({
            "bus": In(RegisterBusSignature(COMMON_CFG_ADDR_WIDTH)),
            "status": Out(8),
            "driver_features": Out(64),
            "queues": Out(QueueConfig).array(num_queues),
            "config_msix_vector": Out(16),
            "reset": Out(1),
            "config_changed": In(1),
            "needs_reset": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        C = spec.VirtioCommonCfg

        device_feature_select = Signal(32)
        driver_feature_select = Signal(32)
        driver_features = Signal(64)
        status = Signal(8)
        config_generation = Signal(8)
        config_msix_vector = Signal(16, init=spec.VIRTIO_MSI_NO_VECTOR)
        queue_select = Signal(16)
        queue_init = {"size": self.queue_size_max, "msix_vector": spec.VIRTIO_MSI_NO_VECTOR}
        queues = Array(Signal(QueueConfig, init=queue_init, name=f"queue{q}")
                       for q in range(self.num_queues))
        queue = queues[queue_select]
        # The selected queue's validity and enable, registered: the write
        # path then starts from flip-flops (one cycle behind queue_select,
        # far less than any two register accesses apart).
        queue_valid = Signal()
        selected_enabled = Signal()
        m.d.sync += [queue_valid.eq(queue_select < self.num_queues),
                     selected_enabled.eq(queue.enable)]

        m.d.comb += [
            self.status.eq(status),
            self.driver_features.eq(driver_features),
            self.config_msix_vector.eq(config_msix_vector),
        ]
        for q in range(self.num_queues):
            m.d.comb += self.queues[q].eq(queues[q])

        def vector_or_none(value):
            # a vector the table lacks maps to nothing (section 4.1.5.1.2)
            return Mux(value < self.msix_vectors, value, spec.VIRTIO_MSI_NO_VECTOR)

        # --- reads ---------------------------------------------------------
        device_feature_word = Signal(32)
        driver_feature_word = Signal(32)
        with m.Switch(device_feature_select):
            for word in range(_FEATURE_WORDS):
                with m.Case(word):
                    m.d.comb += device_feature_word.eq(self.device_features >> (32 * word) & 0xFFFFFFFF)
        with m.Switch(driver_feature_select):
            for word in range(_FEATURE_WORDS):
                with m.Case(word):
                    m.d.comb += driver_feature_word.eq(driver_features[32 * word:32 * (word + 1)])
        q_size = Signal(16)
        with m.If(queue_valid):
            m.d.comb += q_size.eq(queue.size)
        read_map = {
            _dw(C.DEVICE_FEATURE_SELECT): device_feature_select,
            _dw(C.DEVICE_FEATURE): device_feature_word,
            _dw(C.DRIVER_FEATURE_SELECT): driver_feature_select,
            _dw(C.DRIVER_FEATURE): driver_feature_word,
            _dw(C.CONFIG_MSIX_VECTOR): Cat(config_msix_vector, Const(self.num_queues, 16)),
            _dw(C.DEVICE_STATUS): Cat(status, config_generation, queue_select),
            _dw(C.QUEUE_SIZE): Cat(q_size, queue.msix_vector & queue_valid.replicate(16)),
            _dw(C.QUEUE_ENABLE): Cat((queue.enable & queue_valid).as_unsigned(), Const(0, 15),
                                     Mux(queue_valid, queue_select, 0)),   # notify_off = index
            _dw(C.QUEUE_DESC): queue.desc[:32], _dw(C.QUEUE_DESC) + 1: queue.desc[32:],
            _dw(C.QUEUE_DRIVER): queue.driver[:32], _dw(C.QUEUE_DRIVER) + 1: queue.driver[32:],
            _dw(C.QUEUE_DEVICE): queue.device[:32], _dw(C.QUEUE_DEVICE) + 1: queue.device[32:],
        }
        with m.If(bus.r_stb):
            m.d.sync += bus.r_data.eq(0)
            with m.Switch(bus.addr):
                for index, value in read_map.items():
                    with m.Case(index):
                        m.d.sync += bus.r_data.eq(value)

        # --- writes --------------------------------------------------------
        reset = Signal()
        m.d.comb += self.reset.eq(reset)
        wdata = bus.w_data
        with m.If(bus.w_stb):
            with m.Switch(bus.addr):
                with m.Case(_dw(C.DEVICE_FEATURE_SELECT)):
                    m.d.sync += device_feature_select.eq(masked_write(device_feature_select, wdata, bus.be))
                with m.Case(_dw(C.DRIVER_FEATURE_SELECT)):
                    m.d.sync += driver_feature_select.eq(masked_write(driver_feature_select, wdata, bus.be))
                with m.Case(_dw(C.DRIVER_FEATURE)):
                    # frozen once FEATURES_OK is set (section 3.1.1)
                    with m.If(~(status & spec.VirtioStatus.FEATURES_OK).any()):
                        for word in range(_FEATURE_WORDS):
                            with m.If(driver_feature_select == word):
                                half = driver_features[32 * word:32 * (word + 1)]
                                m.d.sync += half.eq(masked_write(half, wdata, bus.be))
                with m.Case(_dw(C.CONFIG_MSIX_VECTOR)):
                    with m.If(bus.be[0:2] == 0b11):
                        m.d.sync += config_msix_vector.eq(vector_or_none(wdata[:16]))
                with m.Case(_dw(C.DEVICE_STATUS)):
                    with m.If(bus.be[0]):
                        self._write_status(m, wdata[:8], status, driver_features, reset)
                    with m.If(bus.be[2:4] == 0b11):
                        m.d.sync += queue_select.eq(wdata[16:32])
                with m.Case(_dw(C.QUEUE_SIZE)):
                    with m.If(queue_valid & ~selected_enabled):
                        size = wdata[:16]
                        power_of_two = (size != 0) & ((size & (size - 1)) == 0)
                        with m.If((bus.be[0:2] == 0b11) & power_of_two & (size <= self.queue_size_max)):
                            m.d.sync += queue.size.eq(size)
                    with m.If(queue_valid & (bus.be[2:4] == 0b11)):
                        m.d.sync += queue.msix_vector.eq(vector_or_none(wdata[16:32]))
                with m.Case(_dw(C.QUEUE_ENABLE)):
                    # the driver may only write 1 (section 4.1.4.3.2)
                    with m.If(queue_valid & bus.be[0] & wdata[0]):
                        m.d.sync += queue.enable.eq(1)
                for field, offset in (("desc", C.QUEUE_DESC), ("driver", C.QUEUE_DRIVER),
                                      ("device", C.QUEUE_DEVICE)):
                    for half in range(2):
                        with m.Case(_dw(offset) + half):
                            with m.If(queue_valid & ~selected_enabled):
                                value = getattr(queue, field)[32 * half:32 * (half + 1)]
                                m.d.sync += value.eq(masked_write(value, wdata, bus.be))

        with m.If(self.config_changed):
            m.d.sync += config_generation.eq(config_generation + 1)
        with m.If(self.needs_reset & (status != 0)):
            m.d.sync += status.eq(status | spec.VirtioStatus.DEVICE_NEEDS_RESET)

        with m.If(reset):
            m.d.sync += [
                status.eq(0),
                device_feature_select.eq(0),
                driver_feature_select.eq(0),
                driver_features.eq(0),
                config_msix_vector.eq(spec.VIRTIO_MSI_NO_VECTOR),
                queue_select.eq(0),
            ]
            for q in range(self.num_queues):
                m.d.sync += queues[q].eq(QueueConfig.const(queue_init))
        return m

    def _write_status(self, m, value, status, driver_features, reset):
        S = spec.VirtioStatus
        with m.If(value == 0):
            m.d.comb += reset.eq(1)
        with m.Else():
            offered = self.device_features
            acceptable = ((driver_features & ~offered) == 0) & driver_features[32]
            features_ok = Signal()
            with m.If(status & S.FEATURES_OK):
                m.d.comb += features_ok.eq(1)                       # already accepted
            with m.Elif(value & S.FEATURES_OK):
                m.d.comb += features_ok.eq(acceptable)              # refused: bit stays clear
            needs_reset = status & S.DEVICE_NEEDS_RESET             # the device's bit
            driver_bits = value & ~(S.FEATURES_OK | S.DEVICE_NEEDS_RESET)
            m.d.sync += status.eq(driver_bits | needs_reset | features_ok * S.FEATURES_OK)
