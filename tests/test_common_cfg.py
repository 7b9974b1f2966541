"""CommonConfig (hdl/virtio/common_cfg.py) in the Amaranth simulator: the queue
registers of struct virtio_pci_common_cfg (virtio 1.2 section 4.1.4.3) against
a Python model, through the bus and through the ring engines' settings reads."""
import gc
import random

import pytest

from hdl import spec
from hdl.virtio.common_cfg import CommonConfig
from hdl.virtio.virtqueues import ROLES
from tests.amaranth_sim import simulate

C = spec.VirtioCommonCfg
NUM_QUEUES = 9                     # 4 pairs and the control queue
QUEUE_SIZE_MAX = 256
MSIX_VECTORS = 6                   # fewer than the queues: some writes map to NO_VECTOR
NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR
FEATURES = spec.VirtioF.VERSION_1
ADDRESS_FIELDS = {"desc": C.QUEUE_DESC, "driver": C.QUEUE_DRIVER, "device": C.QUEUE_DEVICE}
#: Idle cycles between two register accesses (a TLP each on the device,
#: several cycles apart; the selected queue follows queue_select a cycle late).
GAP = 2


def _dut():
    return CommonConfig(device_features=FEATURES, num_queues=NUM_QUEUES,
                        queue_size_max=QUEUE_SIZE_MAX, msix_vectors=MSIX_VECTORS,
                        readers=len(ROLES))


class QueueModel:
    """What the driver should read back of every queue."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.size = [QUEUE_SIZE_MAX] * NUM_QUEUES
        self.vector = [NO_VECTOR] * NUM_QUEUES
        self.enable = [0] * NUM_QUEUES
        self.addr = {field: [0] * NUM_QUEUES for field in ADDRESS_FIELDS}

    def write(self, select, dw, data, be):
        if select >= NUM_QUEUES:
            return
        q = select
        mask = sum(0xFF << (8 * n) for n in range(4) if be >> n & 1)
        if dw == C.QUEUE_SIZE // 4:
            size = data & 0xFFFF
            if (be & 0b11 == 0b11 and not self.enable[q] and size and not size & (size - 1)
                    and size <= QUEUE_SIZE_MAX):
                self.size[q] = size
            if be & 0b1100 == 0b1100:
                vector = data >> 16
                self.vector[q] = vector if vector < MSIX_VECTORS else NO_VECTOR
        elif dw == C.QUEUE_ENABLE // 4:
            if be & 1 and data & 1:
                self.enable[q] = 1
        else:
            for field, offset in ADDRESS_FIELDS.items():
                for half in range(2):
                    if dw == offset // 4 + half and not self.enable[q]:
                        shift = 32 * half
                        old = self.addr[field][q]
                        word = (old >> shift) & 0xFFFFFFFF
                        word = (word & ~mask | data & mask) & 0xFFFFFFFF
                        self.addr[field][q] = old & ~(0xFFFFFFFF << shift) | word << shift

    def read(self, select, dw):
        if select >= NUM_QUEUES:
            return select << 16 if dw == C.DEVICE_STATUS // 4 else 0
        q = select
        if dw == C.QUEUE_SIZE // 4:
            return self.size[q] | self.vector[q] << 16
        if dw == C.QUEUE_ENABLE // 4:
            return self.enable[q] | q << 16           # queue_notify_off = the index
        for field, offset in ADDRESS_FIELDS.items():
            for half in range(2):
                if dw == offset // 4 + half:
                    return self.addr[field][q] >> (32 * half) & 0xFFFFFFFF
        raise AssertionError(dw)

    def settings(self, q):
        return {"size": self.size[q], **{field: self.addr[field][q] for field in ADDRESS_FIELDS}}


async def _gap(ctx):
    await ctx.tick().repeat(GAP)


async def _write(ctx, bus, dw, data, be=0b1111):
    ctx.set(bus.addr, dw)
    ctx.set(bus.be, be)
    ctx.set(bus.w_data, data)
    ctx.set(bus.w_stb, 1)
    await ctx.tick()
    ctx.set(bus.w_stb, 0)
    await _gap(ctx)


async def _read(ctx, bus, dw):
    ctx.set(bus.addr, dw)
    ctx.set(bus.be, 0b1111)
    ctx.set(bus.r_stb, 1)
    await ctx.tick()
    ctx.set(bus.r_stb, 0)
    value = ctx.get(bus.r_data)
    await _gap(ctx)
    return value


async def _select(ctx, dut, q):
    await _write(ctx, dut.bus, C.QUEUE_SELECT // 4, q << 16, be=0b1100)


async def _check_engine_reads(ctx, dut, model):
    """Every engine's port sees every queue as the model has it, the cycle
    after it asks."""
    for reader, port in enumerate(dut.settings):
        for q in range(NUM_QUEUES):
            ctx.set(port.queue, q)
            await ctx.tick()
            got = ctx.get(port.settings)
            want = model.settings(q)
            assert {field: getattr(got, field) for field in want} == want, (q, reader)
    assert ctx.get(dut.queue_enable) == sum(bit << q for q, bit in enumerate(model.enable))
    for q in range(NUM_QUEUES):
        assert ctx.get(dut.queue_vector[q]) == model.vector[q], q


async def _check_bus_reads(ctx, dut, model):
    # and absent queues: one past the last, and one whose low bits name a queue
    for q in [*range(NUM_QUEUES + 1), 16 + NUM_QUEUES // 2]:
        await _select(ctx, dut, q)
        for dw in [C.QUEUE_SIZE // 4, C.QUEUE_ENABLE // 4] + \
                  [offset // 4 + half for offset in ADDRESS_FIELDS.values() for half in range(2)]:
            assert await _read(ctx, dut.bus, dw) == model.read(q, dw), (q, hex(dw * 4))


@pytest.mark.parametrize("seed", [1, 2])
def test_queue_registers_against_model(seed):
    """Random writes to random queues (byte enables, bad sizes, vectors the
    table lacks, writes after enable that must be ignored); every queue read
    back through the bus and through each engine's settings port."""
    rng = random.Random(seed)
    dut = _dut()
    model = QueueModel()
    dws = [C.QUEUE_SIZE // 4, C.QUEUE_ENABLE // 4] + \
          [offset // 4 + half for offset in ADDRESS_FIELDS.values() for half in range(2)]

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES + 1)        # the tables' first sweep
        await _check_engine_reads(ctx, dut, model)
        for _ in range(300):
            q = rng.choice([*range(NUM_QUEUES + 1), 16 + NUM_QUEUES // 2])   # and absent ones
            await _select(ctx, dut, q)
            dw = rng.choice(dws)
            if dw == C.QUEUE_SIZE // 4:
                size = rng.choice([1 << rng.randrange(10), rng.randrange(1 << 16)])
                data = size | rng.randrange(MSIX_VECTORS + 2) << 16
            elif dw == C.QUEUE_ENABLE // 4:
                data = int(rng.random() < 0.15)       # enable now and then: later writes ignored
            else:
                data = rng.getrandbits(32)
            be = rng.choice([0b1111, 0b1111, rng.randrange(16)])
            await _write(ctx, dut.bus, dw, data, be)
            model.write(q, dw, data, be)
        await _check_engine_reads(ctx, dut, model)
        await _check_bus_reads(ctx, dut, model)

    simulate(dut, testbench)


def test_device_reset_restores_every_queue():
    """Writing 0 to device_status resets every queue's registers (section
    4.1.4.3: queue_size reads the maximum again, vectors NO_VECTOR, queues
    disabled), in the engines' tables too."""
    dut = _dut()
    model = QueueModel()

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES + 1)
        for q in range(NUM_QUEUES):
            await _select(ctx, dut, q)
            for dw, data in ((C.QUEUE_SIZE // 4, 16 | 1 << 16), (C.QUEUE_DESC // 4, 0x1000 + q),
                             (C.QUEUE_DRIVER // 4 + 1, 0xAB00 + q), (C.QUEUE_DEVICE // 4, 0x2000),
                             (C.QUEUE_ENABLE // 4, 1)):
                await _write(ctx, dut.bus, dw, data)
                model.write(q, dw, data, 0b1111)
        await _check_engine_reads(ctx, dut, model)
        assert model.enable == [1] * NUM_QUEUES and model.size[0] == 16
        await _write(ctx, dut.bus, C.DEVICE_STATUS // 4, 0, be=0b0001)
        model.reset()
        assert ctx.get(dut.queue_enable) == 0           # at once: no engine visits
        await ctx.tick().repeat(NUM_QUEUES - GAP)        # the documented sweep, a row a cycle
        await _check_engine_reads(ctx, dut, model)
        await _check_bus_reads(ctx, dut, model)

    simulate(dut, testbench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_needs_a_settings_reader():
    with pytest.raises(ValueError, match="readers"):
        CommonConfig(device_features=FEATURES, num_queues=3, queue_size_max=QUEUE_SIZE_MAX,
                     msix_vectors=MSIX_VECTORS, readers=0)
    gc.collect()           # the refused object's "never used" warning, here (filtered)
