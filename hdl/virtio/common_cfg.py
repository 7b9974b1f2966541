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
from functools import reduce
from operator import or_

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory

from ..lib.block_ram import BLOCK_RAM_ATTRS, BlockRamReadPort
from amaranth.lib.wiring import In, Out

from .. import spec
from ..pcie.register_bus import RegisterBusSignature, masked_write

__all__ = ["CommonConfig", "QueueSettings", "QueueSettingsSignature", "COMMON_CFG_ADDR_WIDTH"]

COMMON_CFG_ADDR_WIDTH = 4          # 16 DWs cover the 0x3C bytes
_FEATURE_WORDS = 2                 # 64 feature bits, 32 per select value
_DW_BITS = 32
_BYTE_BITS = 8
_ADDRESS_FIELDS = {"desc": spec.VirtioCommonCfg.QUEUE_DESC,
                   "driver": spec.VirtioCommonCfg.QUEUE_DRIVER,
                   "device": spec.VirtioCommonCfg.QUEUE_DEVICE}


class QueueSettings(data.Struct):
    """What a ring engine reads of a virtqueue when it visits it (section
    4.1.4.3): the fields the driver sets before it enables the queue. Kept in
    LUT RAM, one table per ring engine (see `CommonConfig`)."""
    size: 16
    desc: 64
    driver: 64
    device: 64


class QueueSettingsSignature(wiring.Signature):
    """A ring engine's read port on the queues' settings, from the engine's
    side: it puts a virtqueue index on ``queue`` and finds that queue's
    `QueueSettings` on ``settings`` in the next cycle (a block RAM read).

    Members:
        queue:    Out(range(num_queues)).
        settings: In(QueueSettings).
    """

    def __init__(self, num_queues):
        self.num_queues = num_queues
        super().__init__({"queue": Out(range(max(num_queues, 2))), "settings": In(QueueSettings)})


# A bus write puts its DW at every DW place of a row after ``size``: each half
# of an address must be one of them.
assert all((QueueSettings.as_shape()[field].offset - 16) % _DW_BITS == 0 for field in _ADDRESS_FIELDS)
assert QueueSettings.as_shape()["size"].offset == 0


def _dw(offset):
    return offset // 4


class CommonConfig(wiring.Component):
    """Ports:
        bus:         In(RegisterBusSignature(4)), the common cfg window.
        status:      Out(8), device_status.
        driver_features: Out(64), what the driver accepted (valid with FEATURES_OK).
        queue_enable: Out(num_queues), queue_enable of each queue.
        queue_vector: Out(16).array(num_queues), queue_msix_vector of each queue.
        settings:    In(QueueSettingsSignature(num_queues)).array(readers), one
                     read port per ring engine.
        config_msix_vector: Out(16).
        reset:       Out(1), pulse: the driver reset the device.
        config_changed: In(1), pulse: bump config_generation.
        needs_reset: In(1), pulse: set DEVICE_NEEDS_RESET.

    The queues' `QueueSettings` live in a LUT RAM table, one row per queue,
    with a read port per ring engine and one for the bus: an engine reads its
    queue's settings without a multiplexer over every queue's registers, and
    the registers cost no flip-flops (each read port is a copy of the table,
    16 rows of LUT RAM for up to 16 queues). After a device reset the table is
    rewritten with its reset values, a row a cycle (``num_queues`` cycles, fewer
    than any register access takes to arrive); a bus write in those cycles
    would be lost. ``queue_enable`` clears at once, so no engine visits a
    queue meanwhile.
    """

    def __init__(self, *, device_features, num_queues, queue_size_max, msix_vectors,
                 readers=1):
        if queue_size_max & (queue_size_max - 1) or not 1 <= queue_size_max <= 32768:
            raise ValueError(f"queue size {queue_size_max} must be a power of two up to 32768")
        if not device_features & spec.VirtioF.VERSION_1:
            raise ValueError("a non-transitional device must offer VERSION_1")
        if readers < 1:
            raise ValueError(f"{readers} settings readers: the ring engines need at least one")
        self.device_features = device_features
        self.num_queues = num_queues
        self.queue_size_max = queue_size_max
        self.msix_vectors = msix_vectors
        self.readers = readers
        super().__init__({
            "bus": In(RegisterBusSignature(COMMON_CFG_ADDR_WIDTH)),
            "status": Out(8),
            "driver_features": Out(64),
            "queue_enable": Out(num_queues),
            "queue_vector": Out(16).array(num_queues),
            "settings": In(QueueSettingsSignature(num_queues)).array(readers),
            "config_msix_vector": Out(16),
            "reset": Out(1),
            "config_changed": In(1),
            "needs_reset": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        C = spec.VirtioCommonCfg
        nq = self.num_queues

        device_feature_select = Signal(32)
        driver_feature_select = Signal(32)
        driver_features = Signal(64)
        status = Signal(8)
        config_generation = Signal(8)
        config_msix_vector = Signal(16, init=spec.VIRTIO_MSI_NO_VECTOR)
        queue_select = Signal(16)
        enables = Signal(nq)
        vectors = [Signal(16, init=spec.VIRTIO_MSI_NO_VECTOR, name=f"queue_msix_vector{q}")
                   for q in range(nq)]
        settings_init = QueueSettings.const({"size": self.queue_size_max}).as_value().value

        # Which queue queue_select names, one bit per queue, and its row in
        # the settings table, registered: one cycle behind queue_select, far
        # less than any two register accesses apart. Writes go to the selected
        # queue's registers straight from the bus; reads take its vector by
        # AND-OR over these bits, about a third of the LUTs of a multiplexer
        # indexed by queue_select.
        selected = Signal(nq)
        row = Signal(range(max(nq, 2)))
        m.d.sync += [selected.eq(Cat(queue_select == q for q in range(nq))),
                     row.eq(queue_select)]
        queue_valid = selected.any()
        selected_enabled = (enables & selected).any()

        m.d.comb += [
            self.status.eq(status),
            self.driver_features.eq(driver_features),
            self.config_msix_vector.eq(config_msix_vector),
            self.queue_enable.eq(enables),
        ]
        for q in range(nq):
            m.d.comb += self.queue_vector[q].eq(vectors[q])

        # --- the settings table -------------------------------------------
        # A bus write puts its DW at every DW-sized place of the row (the
        # fields are laid out so that each half of an address is one) and
        # enables the bytes of the field it writes; after a reset every row
        # gets its reset value.
        row_bits = QueueSettings.as_shape().size
        w_bytes = Signal(row_bits // _BYTE_BITS)          # byte enables of a bus write
        # Block RAM (each read port a copy of six DP16KD on ECP5, rows of
        # 208 bits): read synchronously. The bus reads the row of `row`, which
        # moves a cycle after queue_select, so `shown` is the selected queue's
        # two cycles after a select, and a field written by the bus reads back
        # from the second cycle after the write (register accesses come far
        # further apart: a TLP each). A read in the cycle its row is written
        # is undefined (`BLOCK_RAM_ATTRS`) and never used: a row is written
        # only while its queue is disabled (no engine serves it) or all are
        # (the clearing after reset), and the bus reads it back later.
        table = Memory(shape=row_bits, depth=nq, init=[settings_init] * nq,
                       attrs=BLOCK_RAM_ATTRS)
        m.submodules.settings = table
        write = table.write_port(granularity=_BYTE_BITS)
        for n, port in enumerate(self.settings):
            engine_read = BlockRamReadPort(m, table, name=f"engine_read{n}")
            m.d.comb += [engine_read.addr.eq(port.queue), port.settings.eq(engine_read.data)]
        bus_read = BlockRamReadPort(m, table, name="bus_read")
        shown = QueueSettings(bus_read.data)              # the selected queue's settings
        m.d.comb += bus_read.addr.eq(row)
        clearing = Signal(init=1)           # also from power-up: init is for simulation only
        clear_row = Signal(range(max(nq, 2)))
        with m.If(clearing):
            m.d.comb += [write.addr.eq(clear_row), write.data.eq(settings_init), write.en.eq(-1)]
            m.d.sync += clear_row.eq(clear_row + 1)
            with m.If(clear_row == nq - 1):
                m.d.sync += [clearing.eq(0), clear_row.eq(0)]
        with m.Else():
            size_bits = QueueSettings.as_shape()["size"].width
            m.d.comb += [
                write.addr.eq(row),
                write.data.eq(Cat(self.bus.w_data[:size_bits],
                                  self.bus.w_data.replicate((row_bits - size_bits) // _DW_BITS))),
                write.en.eq(w_bytes & queue_valid.replicate(len(w_bytes))),
            ]

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
        shown_vector = _one_hot_select(selected, vectors)
        read_map = {
            _dw(C.DEVICE_FEATURE_SELECT): device_feature_select,
            _dw(C.DEVICE_FEATURE): device_feature_word,
            _dw(C.DRIVER_FEATURE_SELECT): driver_feature_select,
            _dw(C.DRIVER_FEATURE): driver_feature_word,
            _dw(C.CONFIG_MSIX_VECTOR): Cat(config_msix_vector, Const(nq, 16)),
            _dw(C.DEVICE_STATUS): Cat(status, config_generation, queue_select),
            _dw(C.QUEUE_SIZE): Cat(shown.size, shown_vector),
            _dw(C.QUEUE_ENABLE): Cat(selected_enabled, Const(0, 15),
                                     Mux(queue_valid, queue_select, 0)),   # notify_off = index
            _dw(C.QUEUE_DESC): shown.desc[:32], _dw(C.QUEUE_DESC) + 1: shown.desc[32:],
            _dw(C.QUEUE_DRIVER): shown.driver[:32], _dw(C.QUEUE_DRIVER) + 1: shown.driver[32:],
            _dw(C.QUEUE_DEVICE): shown.device[:32], _dw(C.QUEUE_DEVICE) + 1: shown.device[32:],
        }
        queue_fields = {_dw(C.QUEUE_SIZE)} | {_dw(offset) + half for half in range(2)
                                              for offset in _ADDRESS_FIELDS.values()}
        r_value = Signal(_DW_BITS)
        r_queue = Signal()                  # a queue register: zero if queue_select has none
        with m.Switch(bus.addr):
            for index, value in read_map.items():
                with m.Case(index):
                    m.d.comb += [r_value.eq(value), r_queue.eq(index in queue_fields)]
        with m.If(bus.r_stb):
            m.d.sync += bus.r_data.eq(r_value & ~(r_queue & ~queue_valid).replicate(_DW_BITS))

        # --- writes --------------------------------------------------------
        reset = Signal()
        m.d.comb += self.reset.eq(reset)
        wdata = bus.w_data

        def write_settings(field, first_byte, enable):
            """Write the selected queue's ``field`` from its byte ``first_byte``
            on, the bytes under ``enable`` (one bit each)."""
            first = QueueSettings.as_shape()[field].offset // _BYTE_BITS + first_byte
            m.d.comb += w_bytes[first:first + len(enable)].eq(enable)

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
                    # queue_size: a power of two up to the maximum, both bytes
                    # at once, while the queue is disabled (section 4.1.4.3.2)
                    size = wdata[:16]
                    power_of_two = (size != 0) & ((size & (size - 1)) == 0)
                    size_ok = (bus.be[0:2] == 0b11) & power_of_two & (size <= self.queue_size_max)
                    write_settings("size", 0, (~selected_enabled & size_ok).replicate(2))
                    vector = vector_or_none(wdata[16:32])
                    for q in range(nq):
                        with m.If(selected[q] & (bus.be[2:4] == 0b11)):
                            m.d.sync += vectors[q].eq(vector)
                with m.Case(_dw(C.QUEUE_ENABLE)):
                    # the driver may only write 1 (section 4.1.4.3.2)
                    for q in range(nq):
                        with m.If(selected[q] & bus.be[0] & wdata[0]):
                            m.d.sync += enables[q].eq(1)
                for field, offset in _ADDRESS_FIELDS.items():
                    for half in range(2):
                        with m.Case(_dw(offset) + half):
                            # byte-masked, each half of a 64-bit address apart
                            write_settings(field, 4 * half, bus.be & (~selected_enabled).replicate(4))

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
                enables.eq(0),
                clearing.eq(1),
                clear_row.eq(0),
            ]
            m.d.sync += [vector.eq(spec.VIRTIO_MSI_NO_VECTOR) for vector in vectors]
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


def _one_hot_select(one_hot, values):
    """The value whose bit of ``one_hot`` is set (zero if none), as AND-OR."""
    return reduce(or_, (Value.cast(value) & one_hot[n].replicate(len(Value.cast(value)))
                        for n, value in enumerate(values)))
