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
from amaranth.lib.wiring import In, Out

from .. import spec
from ..pcie.register_bus import RegisterBusSignature, masked_write

__all__ = ["CommonConfig", "QueueSettings", "QueueSettingsSignature", "COMMON_CFG_ADDR_WIDTH"]

COMMON_CFG_ADDR_WIDTH = 4          # 16 DWs cover the 0x3C bytes
_FEATURE_WORDS = 2                 # 64 feature bits, 32 per select value
_DW_BITS = 32
_BYTE_BITS = 8


class QueueSettings(data.Struct):
    """What a ring engine reads of a virtqueue when it visits it (section
    4.1.4.3): the fields the driver sets before it enables the queue. Kept in
    LUT RAM, one table per ring engine (see `CommonConfig`)."""
    size: 16
    desc: 64
    driver: 64
    device: 64


class QueueSettingsSignature(wiring.Signature):
    """A ring engine's window on the settings of the queues it serves, from the
    engine's side: it puts a queue's position in its list (``slot``) and finds
    that queue's `QueueSettings` on ``settings`` in the same cycle (an
    asynchronous LUT RAM read).

    Members:
        slot:     Out(range(slots)).
        settings: In(QueueSettings).
    """

    def __init__(self, slots):
        self.slots = slots
        super().__init__({"slot": Out(range(max(slots, 2))), "settings": In(QueueSettings)})


def _dw(offset):
    return offset // 4


class CommonConfig(wiring.Component):
    """Ports:
        bus:         In(RegisterBusSignature(4)), the common cfg window.
        status:      Out(8), device_status.
        driver_features: Out(64), what the driver accepted (valid with FEATURES_OK).
        queue_enable: Out(num_queues), queue_enable of each queue.
        queue_vector: Out(16).array(num_queues), queue_msix_vector of each queue.
        settings:    In(QueueSettingsSignature(slots)).array(len(groups)): group
                     g's engine reads the settings of queue ``groups[g][slot]``.
        config_msix_vector: Out(16).
        reset:       Out(1), pulse: the driver reset the device.
        config_changed: In(1), pulse: bump config_generation.
        needs_reset: In(1), pulse: set DEVICE_NEEDS_RESET.

    ``groups`` divides the queues between the ring engines (each queue in one
    group); ``slots`` is the largest group. Each group's `QueueSettings` live in
    a LUT RAM of their own, with a read port for its engine and one for the
    bus: an engine reads its queue's settings without a multiplexer over every
    queue, and the registers cost no flip-flops. After a device reset the
    tables are rewritten to their reset values, one row a cycle (``slots``
    cycles, far fewer than any register access takes to arrive); a bus write
    in those cycles would be lost.
    """

    def __init__(self, *, device_features, num_queues, queue_size_max, msix_vectors,
                 groups=None):
        if queue_size_max & (queue_size_max - 1) or not 1 <= queue_size_max <= 32768:
            raise ValueError(f"queue size {queue_size_max} must be a power of two up to 32768")
        if not device_features & spec.VirtioF.VERSION_1:
            raise ValueError("a non-transitional device must offer VERSION_1")
        groups = [list(range(num_queues))] if groups is None else [list(g) for g in groups]
        if sorted(q for group in groups for q in group) != list(range(num_queues)) \
                or not all(groups):
            raise ValueError(f"groups {groups} must divide queues 0..{num_queues - 1}, "
                             "each queue in one non-empty group")
        self.device_features = device_features
        self.num_queues = num_queues
        self.queue_size_max = queue_size_max
        self.msix_vectors = msix_vectors
        self.groups = groups
        self.slots = max(len(group) for group in groups)
        super().__init__({
            "bus": In(RegisterBusSignature(COMMON_CFG_ADDR_WIDTH)),
            "status": Out(8),
            "driver_features": Out(64),
            "queue_enable": Out(num_queues),
            "queue_vector": Out(16).array(num_queues),
            "settings": In(QueueSettingsSignature(self.slots)).array(len(groups)),
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

        # Which queue queue_select names, one bit per queue, and where its
        # settings are (group, row), registered: one cycle behind
        # queue_select, far less than any two register accesses apart.
        # Writes go to the selected queue's registers straight from the bus;
        # reads take its fields by AND-OR over these bits, about a third of the
        # LUTs of a multiplexer indexed by queue_select.
        selected = Signal(nq)
        m.d.sync += selected.eq(Cat(queue_select == q for q in range(nq)))
        queue_valid = selected.any()
        selected_enabled = (enables & selected).any()
        row_of = {q: (g, row) for g, group in enumerate(self.groups) for row, q in enumerate(group)}
        group_selected = Signal(len(self.groups))
        row_selected = Signal(range(max(self.slots, 2)))
        m.d.sync += [group_selected.eq(0), row_selected.eq(0)]
        with m.Switch(queue_select):
            for q, (g, row) in row_of.items():
                with m.Case(q):
                    m.d.sync += [group_selected.eq(1 << g), row_selected.eq(row)]

        m.d.comb += [
            self.status.eq(status),
            self.driver_features.eq(driver_features),
            self.config_msix_vector.eq(config_msix_vector),
            self.queue_enable.eq(enables),
        ]
        for q in range(nq):
            m.d.comb += self.queue_vector[q].eq(vectors[q])

        # --- the settings tables -----------------------------------------
        # A write: the field's DW at its place in the row, the bus's byte
        # enables at its bytes. After a reset every row gets its reset value.
        clearing = Signal(init=1)           # also from power-up: init is for simulation only
        clear_row = Signal(range(max(self.slots, 2)))
        w_row = Signal(QueueSettings.as_shape().size)
        w_bytes = Signal(len(w_row) // _BYTE_BITS)
        shown = Signal(QueueSettings)       # the selected queue's settings (zero if none)
        shown_parts = []
        for g, group in enumerate(self.groups):
            table = Memory(shape=len(w_row), depth=len(group), init=[settings_init] * len(group))
            m.submodules[f"settings{g}"] = table
            write = table.write_port(granularity=_BYTE_BITS)
            engine_read = table.read_port(domain="comb")
            bus_read = table.read_port(domain="comb")
            port = self.settings[g]
            m.d.comb += [engine_read.addr.eq(port.slot), port.settings.eq(engine_read.data),
                         bus_read.addr.eq(row_selected)]
            shown_parts.append(bus_read.data & group_selected[g].replicate(len(w_row)))
            with m.If(clearing):
                m.d.comb += [write.addr.eq(clear_row), write.data.eq(settings_init),
                             write.en.eq(-1)]
            with m.Else():
                m.d.comb += [write.addr.eq(row_selected), write.data.eq(w_row),
                             write.en.eq(w_bytes & group_selected[g].replicate(len(w_bytes)))]
        m.d.comb += shown.eq(reduce(or_, shown_parts))
        with m.If(clearing):
            m.d.sync += clear_row.eq(clear_row + 1)
            with m.If(clear_row == self.slots - 1):
                m.d.sync += [clearing.eq(0), clear_row.eq(0)]

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
        w_view = QueueSettings(w_row)

        def write_settings(field, bits, enable):
            """Write ``bits`` (a whole number of bytes) at ``field``'s place in
            the selected queue's row, the bytes under ``enable`` (one bit each)."""
            first = QueueSettings.as_shape()[field].offset
            m.d.comb += w_view.as_value()[first:first + len(bits)].eq(bits)
            m.d.comb += w_bytes[first // _BYTE_BITS:(first + len(bits)) // _BYTE_BITS].eq(enable)

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
                    write_settings("size", size, (~selected_enabled & size_ok).replicate(2))
                    vector = vector_or_none(wdata[16:32])
                    for q in range(nq):
                        with m.If(selected[q] & (bus.be[2:4] == 0b11)):
                            m.d.sync += vectors[q].eq(vector)
                with m.Case(_dw(C.QUEUE_ENABLE)):
                    # the driver may only write 1 (section 4.1.4.3.2)
                    for q in range(nq):
                        with m.If(selected[q] & bus.be[0] & wdata[0]):
                            m.d.sync += enables[q].eq(1)
                for field, offset in (("desc", C.QUEUE_DESC), ("driver", C.QUEUE_DRIVER),
                                      ("device", C.QUEUE_DEVICE)):
                    for half in range(2):
                        with m.Case(_dw(offset) + half):
                            # the halves of a 64-bit field are written apart;
                            # the other half keeps its bytes (not enabled)
                            bits = Signal(64, name=f"w_{field}{half}")
                            enable = Signal(8, name=f"w_{field}{half}_bytes")
                            m.d.comb += [bits[_DW_BITS * half:_DW_BITS * (half + 1)].eq(wdata),
                                         enable[4 * half:4 * (half + 1)].eq(
                                             bus.be & (~selected_enabled).replicate(4))]
                            write_settings(field, bits, enable)

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
