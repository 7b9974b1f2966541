"""RingEngine in the Amaranth simulator, against behavioural DMA, host memory
with split virtqueues, and frame buffers."""
import random
import struct

import pytest
from amaranth.hdl import Array, Cat, Module, ResetInserter, Signal
from amaranth.sim import Simulator

from hdl import spec
from hdl.virtio.ring_engine import BATCH, DESC_BLOCK, VISIT_CHAINS, RingError
from hdl.virtio.common_cfg import QueueSettings
from hdl.virtio.virtqueues import Virtqueues
from tests.amaranth_sim import CLOCK_PERIOD
from tests.ring_model import HostMemory, SplitRing, serve_dma_read, serve_dma_write

F = spec.VirtqDescF
HDR = spec.VIRTIO_NET_HDR_SIZE
MAX_FRAME = 1518
RXQ, TXQ = 0, 1


def kept_bytes(payload):
    """The bytes of a byte-stream beat whose ``keep`` bit is set, in lane order."""
    return bytes(payload.data >> (8 * lane) & 0xFF for lane in range(4) if payload.keep >> lane & 1)


class Stamped(list):
    """A list whose appends also note the bench's cycle (in ``cycles``)."""

    def __init__(self, bench):
        super().__init__()
        self.bench, self.cycles = bench, []

    def append(self, item):
        super().append(item)
        self.cycles.append(self.bench.cycle)


class Bench:
    """The engine plus its surroundings; `run(scenario)` drives it."""

    def __init__(self, *, size=8, start_idx=0, seed=1, p_stall=0.3, tx_ready=0.8,
                 event_idx=False, indirect=False, mrg_rxbuf=False, pairs=1):
        self.event_idx, self.indirect, self.mrg_rxbuf = event_idx, indirect, mrg_rxbuf
        self.tx_space = 0xFFFF     # what the TX frame buffer says it can take
        self.rng = random.Random(seed)
        self.mem = HostMemory()
        self.num_queues = 2 * pairs + 1
        self.rings = {q: SplitRing(self.mem, size, start_idx) for q in range(self.num_queues)}
        self.ctrlq = self.num_queues - 1
        self.commands = []         # (bytes, cmd_bad) of each command on ``cmd``
        self.answer = lambda command: spec.VIRTIO_NET_OK   # the executor's answer
        self.dut = Virtqueues(num_queues=self.num_queues, max_tx_frame=MAX_FRAME,
                              initial_idx=start_idx)
        self.top = self._with_settings(self.dut)
        self.rx_pairs = {}         # id(frame) -> the pair it is steered to (default 0)
        self.p_stall = p_stall
        self.tx_ready = tx_ready
        self.tx_frames = []        # (bytes, aborted)
        self.tx_sent = self.tx_empty = 0     # tx_sent, tx_empty pulses
        self.rx_frames = []        # frames waiting on the wire side
        self.rx_delivered = self.rx_too_big = 0
        self.notifies = {q: 0 for q in range(self.num_queues)}
        self.needs_reset = 0
        self.doorbells = []
        self.cycle = 0
        self.reads = Stamped(self)       # (addr, length) of each read request, with its cycle
        self.writes = Stamped(self)      # (addr, data) of each write, with its cycle

    def _with_settings(self, dut):
        """The engines plus a stand-in for the common config's settings tables:
        one register per queue (``self.settings``), read by each engine's queue
        index a cycle later (as the block RAM is), and the queues' enables
        (``self.enables``). ``self.reset`` resets the engines, as a device
        reset does in the core."""
        top = Module()
        self.reset = Signal()
        top.submodules.dut = ResetInserter(self.reset)(dut)
        self.settings = [Signal(QueueSettings, name=f"settings{q}") for q in range(self.num_queues)]
        self.enables = [Signal(name=f"enable{q}") for q in range(self.num_queues)]
        top.d.comb += dut.queue_enable.eq(Cat(self.enables))
        table = Array(self.settings)
        for port in dut.settings:
            top.d.sync += port.settings.eq(table[port.queue])
        return top

    # --- driver-side helpers -------------------------------------------------
    def post_tx(self, frame, *, pieces=1, start_desc=None, queue=TXQ):
        """Post hdr + frame as a chain of `pieces` descriptors."""
        ring = self.rings[queue]
        data = bytes(HDR) + frame
        cuts = sorted(self.rng.sample(range(1, len(data)), pieces - 1)) if pieces > 1 else []
        bounds = [0] + cuts + [len(data)]
        first = ring.next_desc if start_desc is None else start_desc
        for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
            addr = self.mem.alloc(b - a, 1)
            self.mem.write(addr, data[a:b])
            index = (first + n) % ring.size
            last = n == len(bounds) - 2
            ring.set_desc(index, addr, b - a, 0 if last else F.NEXT, (index + 1) % ring.size)
        ring.next_desc = (first + len(bounds) - 1) % ring.size
        ring.post(first)
        return first

    def post_rx(self, length, *, pieces=1, queue=RXQ):
        ring = self.rings[queue]
        first = ring.next_desc
        buffers = []
        sizes = [length // pieces] * pieces
        sizes[-1] += length - sum(sizes)
        for n, size in enumerate(sizes):
            addr = self.mem.alloc(size, 1)
            self.mem.writable.append((addr, addr + size))
            buffers.append((addr, size))
            index = (first + n) % ring.size
            last = n == pieces - 1
            ring.set_desc(index, addr, size, F.WRITE | (0 if last else F.NEXT), (index + 1) % ring.size)
        ring.next_desc = (first + pieces) % ring.size
        ring.post(first)
        return first, buffers

    def post_ctrl(self, command, *, pieces=1, acks=1, out_after=False):
        """Post a controlq chain: `command` in `pieces` read-only buffers, then
        `acks` one-byte writable buffers (and, with `out_after`, one more
        read-only buffer after them: malformed). Returns (head, ack buffers)."""
        ring = self.rings[self.ctrlq]
        cuts = sorted(self.rng.sample(range(1, len(command)), pieces - 1)) if pieces > 1 else []
        bounds = [0] + cuts + [len(command)]
        parts = [(command[a:b], 0) for a, b in zip(bounds, bounds[1:])]
        parts += [(bytes(1), F.WRITE)] * acks + ([(b"\xee", 0)] if out_after else [])
        first = ring.next_desc
        acks_at = []
        for n, (data, flags) in enumerate(parts):
            addr = self.mem.alloc(len(data), 1)
            self.mem.write(addr, data)
            if flags & F.WRITE:
                self.mem.writable.append((addr, addr + len(data)))
                acks_at.append(addr)
            index = (first + n) % ring.size
            last = n == len(parts) - 1
            ring.set_desc(index, addr, len(data), flags | (0 if last else F.NEXT), (index + 1) % ring.size)
        ring.next_desc = (first + len(parts)) % ring.size
        ring.post(first)
        return first, acks_at

    def kick(self, queue):
        self.doorbells.append(queue)

    # --- processes --------------------------------------------------------------
    async def _doorbell(self, ctx):
        while True:
            if self.doorbells:
                ctx.set(self.dut.doorbell.payload, self.doorbells[0])
                ctx.set(self.dut.doorbell.valid, 1)
            else:
                ctx.set(self.dut.doorbell.valid, 0)
            _, _, valid, ready = await ctx.tick().sample(self.dut.doorbell.valid, self.dut.doorbell.ready)
            if valid and ready:
                self.doorbells.pop(0)

    async def _tx_sink(self, ctx):
        dut = self.dut
        current = bytearray()
        done_in = 0
        while True:
            ctx.set(dut.tx.ready, self.rng.random() < self.tx_ready)
            ctx.set(dut.tx_done, done_in == 1)
            ctx.set(dut.tx_space, self.tx_space)
            done_in = max(0, done_in - 1)
            _, _, valid, ready, payload, abort = await ctx.tick().sample(
                dut.tx.valid, dut.tx.ready, dut.tx.payload, dut.tx_abort)
            if valid and ready:
                current += kept_bytes(payload)
                if payload.last:
                    self.tx_frames.append((bytes(current), bool(abort)))
                    current = bytearray()
                    done_in = 2

    async def _executor(self, ctx):
        """The command executor: takes a command's bytes, answers after a while."""
        dut = self.dut
        current = bytearray()
        while True:
            ctx.set(dut.cmd.ready, self.rng.random() < 0.8)
            _, _, valid, ready, payload, bad = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.ready, dut.cmd.payload, dut.cmd_bad)
            if valid and ready:
                current += kept_bytes(payload)
                if payload.last:
                    command = bytes(current)
                    current = bytearray()
                    self.commands.append((command, bool(bad)))
                    ctx.set(dut.cmd.ready, 0)
                    for _ in range(self.rng.randint(1, 40)):
                        await ctx.tick()
                    answer = spec.VIRTIO_NET_ERR if bad else self.answer(command)
                    ctx.set(dut.ack.payload, answer)
                    ctx.set(dut.ack.valid, 1)
                    await ctx.tick().until(dut.ack.ready)
                    ctx.set(dut.ack.valid, 0)

    async def _rx_source(self, ctx):
        dut = self.dut
        seg = None
        while True:
            ctx.set(dut.rx_valid, bool(self.rx_frames))
            ctx.set(dut.rx_length, len(self.rx_frames[0]) if self.rx_frames else 0)
            ctx.set(dut.rx_pair, self.rx_pairs.get(id(self.rx_frames[0]), 0) if self.rx_frames else 0)
            ctx.set(dut.rx_seg_req.ready, seg is None and bool(self.rx_frames))
            if seg:
                chunk = seg[:4]
                ctx.set(dut.rx_seg.payload, {"data": int.from_bytes(chunk.ljust(4, b"\0"), "little"),
                                             "keep": (1 << len(chunk)) - 1, "last": len(seg) <= 4})
            ctx.set(dut.rx_seg.valid, bool(seg))
            _, _, r_valid, r_ready, req, s_valid, s_ready, pop = await ctx.tick().sample(
                dut.rx_seg_req.valid, dut.rx_seg_req.ready, dut.rx_seg_req.payload,
                dut.rx_seg.valid, dut.rx_seg.ready, dut.rx_pop)
            if r_valid and r_ready:
                seg = self.rx_frames[0][req.offset:req.offset + req.length]
            elif s_valid and s_ready:
                seg = seg[4:] or None
            if pop:
                self.rx_frames.pop(0)

    async def _monitor(self, ctx):
        async for _, _, notify, needs_reset in ctx.tick().sample(self.dut.used_notify, self.dut.needs_reset):
            for q in range(self.num_queues):
                self.notifies[q] += notify >> q & 1
            self.needs_reset += needs_reset

    async def _counters(self, ctx):
        async for _, _, sent, empty, delivered, too_big in ctx.tick().sample(
                self.dut.tx_sent, self.dut.tx_empty, self.dut.rx_delivered, self.dut.rx_too_big):
            self.tx_sent += sent
            self.tx_empty += empty
            self.rx_delivered += delivered
            self.rx_too_big += too_big

    def run(self, scenario, *, cycles=200_000):
        dut = self.dut
        sim = Simulator(self.top)
        sim.add_clock(CLOCK_PERIOD)

        async def main(ctx):
            self.set_up_rings(ctx)
            ctx.set(dut.run, 1)
            ctx.set(dut.event_idx, self.event_idx)
            ctx.set(dut.indirect, self.indirect)
            ctx.set(dut.mrg_rxbuf, self.mrg_rxbuf)
            await scenario(ctx, self)

        sim.add_testbench(main)
        async def dma_read(ctx):
            await serve_dma_read(ctx, dut.dma_rd, self.mem, self.rng, p_stall=self.p_stall,
                                 fail=lambda addr: self.read_fails(addr), log=self.reads)

        async def dma_read_tx(ctx):       # the TX engine's own reader
            await serve_dma_read(ctx, dut.dma_rd_tx, self.mem, self.rng, p_stall=self.p_stall,
                                 fail=lambda addr: self.read_fails(addr), log=self.reads)

        async def dma_write(ctx):
            await serve_dma_write(ctx, dut.dma_wr, self.mem, self.rng, p_stall=self.p_stall,
                                  log=self.writes)

        async def clock(ctx):
            async for _ in ctx.tick():
                self.cycle += 1
        sim.add_testbench(clock, background=True)

        sim.add_testbench(dma_read, background=True)
        sim.add_testbench(dma_read_tx, background=True)
        sim.add_testbench(dma_write, background=True)
        sim.add_testbench(self._doorbell, background=True)
        sim.add_testbench(self._tx_sink, background=True)
        sim.add_testbench(self._executor, background=True)
        sim.add_testbench(self._rx_source, background=True)
        sim.add_testbench(self._monitor, background=True)
        sim.add_testbench(self._counters, background=True)
        sim.run()
        assert self.mem.violations == [], f"device wrote outside posted buffers: {self.mem.violations}"

    def read_fails(self, addr):
        return False

    def set_up_rings(self, ctx):
        """The driver's queue set-up: each ring's addresses, size and enable."""
        for q, ring in self.rings.items():
            config = ring.config()
            ctx.set(self.settings[q], {field: config[field]
                                       for field in ("size", "desc", "driver", "device")})
            ctx.set(self.enables[q], config["enable"])


async def wait_for(ctx, condition, limit=20_000):
    for _ in range(limit):
        if condition():
            return
        await ctx.tick()
    raise AssertionError("timed out")


def random_frame(rng, length):
    return rng.randbytes(length)


@pytest.mark.parametrize("pieces", [1, 3])
def test_tx_frames_reach_the_wire_and_come_back_used(pieces):
    bench = Bench(size=8, seed=pieces)
    frames = [random_frame(bench.rng, n) for n in (60, 61, 62, 63, 64, 1514, 200, 99)]

    async def scenario(ctx, b):
        heads = [b.post_tx(f, pieces=pieces if len(f) > 8 else 1) for f in frames[:8 // pieces]]
        b.kick(TXQ)
        await wait_for(ctx, lambda: len(b.tx_frames) == len(heads) and b.rings[TXQ].used_idx() == len(heads))
        used = b.rings[TXQ].take_used()
        assert [u[0] for u in used] == heads
        assert all(u[1] == 0 for u in used)
        await wait_for(ctx, lambda: b.notifies[TXQ] >= 1)

    bench.run(scenario)
    sent = frames[:len(bench.tx_frames)]
    assert [f for f, _ in bench.tx_frames] == sent
    assert not any(a for _, a in bench.tx_frames)
    assert bench.needs_reset == 0


def test_control_commands_take_turns_with_transmitqs_on_the_tx_engine():
    """The TX engine serves the controlq too: commands interleaved with TX
    frames reach ``cmd`` whole and in order, each answer lands in its chain's
    writable buffer (used length 1), and no command byte reaches the wire; a
    malformed chain (read-only after writable) is flagged ``cmd_bad`` and
    answered ERR; a chain with no writable buffer comes back with length 0."""
    bench = Bench(size=32, seed=7)      # room for every chain's descriptors
    frames = [random_frame(bench.rng, n) for n in (60, 1514, 64, 300, 61, 99)]
    commands = [bytes([n, n + 1]) + bench.rng.randbytes(n * 7) for n in range(6)]
    bench.answer = lambda command: spec.VIRTIO_NET_OK if command[0] % 2 == 0 else spec.VIRTIO_NET_ERR

    async def scenario(ctx, b):
        posted = []
        for n, (frame, command) in enumerate(zip(frames[:4], commands[:4])):
            b.post_tx(frame, pieces=1 + n % 2)
            posted.append(b.post_ctrl(command, pieces=1 + n % 3))
        bad_head, bad_acks = b.post_ctrl(commands[4], out_after=True)
        no_ack_head, _ = b.post_ctrl(commands[5], acks=0)
        b.kick(TXQ)
        b.kick(b.ctrlq)
        ctrl = b.rings[b.ctrlq]
        await wait_for(ctx, lambda: len(b.tx_frames) == 4 and ctrl.used_idx() == 6, limit=100_000)
        used = ctrl.take_used()
        assert [u[0] for u in used] == [head for head, _ in posted] + [bad_head, no_ack_head]
        assert [u[1] for u in used] == [1] * 5 + [0]
        for (head, acks), command in zip(posted, commands):
            assert b.mem.read(acks[0], 1)[0] == b.answer(command)
        assert b.mem.read(bad_acks[0], 1)[0] == spec.VIRTIO_NET_ERR

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == frames[:4]
    assert bench.commands[:4] == [(c, False) for c in commands[:4]]
    assert bench.commands[4] == (commands[4], True)
    assert bench.tx_sent == 4              # transmitq chains only
    assert bench.needs_reset == 0


def test_indexes_wrap_around_past_0xffff():
    """On every queue of the engine: the transmitq's and the controlq's
    indexes both start near the wrap."""
    size = 4
    bench = Bench(size=size, start_idx=0xFFFE, seed=5)
    frames = [random_frame(bench.rng, bench.rng.randint(60, 300)) for _ in range(3 * size + 3)]
    commands = [bytes([n, 0]) for n in range(len(frames))]

    async def scenario(ctx, b):
        ring, ctrl = b.rings[TXQ], b.rings[b.ctrlq]
        done = 0
        while done < len(frames):
            wave = frames[done:done + size // 2]
            for k, f in enumerate(wave):
                b.post_tx(f)
                b.post_ctrl(commands[done + k])      # two descriptors each
            b.kick(TXQ)
            b.kick(b.ctrlq)
            done += len(wave)
            await wait_for(ctx, lambda: len(b.tx_frames) == done and len(b.commands) == done)
            for r in (ring, ctrl):
                await wait_for(ctx, lambda: r.used_idx() == (0xFFFE + done) & 0xFFFF)
                r.take_used()

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == frames
    assert [c for c, _ in bench.commands] == commands


def test_no_interrupt_flag_suppresses_the_notification():
    bench = Bench(seed=3)

    async def scenario(ctx, b):
        b.rings[TXQ].set_avail_flags(spec.VirtqAvailF.NO_INTERRUPT)
        b.post_tx(random_frame(b.rng, 100))
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.rings[TXQ].used_idx() == 1)
        for _ in range(50):
            await ctx.tick()
        assert b.notifies[TXQ] == 0
        b.rings[TXQ].set_avail_flags(0)
        b.post_tx(random_frame(b.rng, 100))
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.notifies[TXQ] == 1)

    bench.run(scenario)


def test_too_long_and_too_short_tx_frames_are_dropped_but_returned():
    bench = Bench(seed=4)
    good = random_frame(bench.rng, 100)

    async def scenario(ctx, b):
        b.post_tx(random_frame(b.rng, MAX_FRAME + 1), pieces=2)
        b.post_tx(b"")                                   # header only
        b.post_tx(good)
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.rings[TXQ].used_idx() == 3)

    bench.run(scenario)
    kept = [f for f, aborted in bench.tx_frames if not aborted]
    assert kept == [good]
    assert bench.tx_empty + sum(a for _, a in bench.tx_frames) == 2
    assert bench.needs_reset == 0


@pytest.mark.parametrize("pieces", [1, 3])
def test_rx_frames_land_in_posted_buffers(pieces):
    bench = Bench(size=16, seed=10 + pieces)
    frames = [random_frame(bench.rng, n) for n in (60, 1514, 61, 333)]

    async def scenario(ctx, b):
        posted = [b.post_rx(HDR + 1518, pieces=pieces) for _ in frames]
        b.kick(RXQ)
        for _ in range(20):
            await ctx.tick()
        b.rx_frames.extend(frames)
        await wait_for(ctx, lambda: b.rings[RXQ].used_idx() == len(frames))
        used = b.rings[RXQ].take_used()
        for (head, buffers), frame, (uid, ulen) in zip(posted, frames, used):
            assert uid == head and ulen == HDR + len(frame)
            got = b"".join(b.mem.read(a, n) for a, n in buffers)[:ulen]
            hdr = struct.unpack("<BBHHHHH", got[:HDR])
            assert hdr == (0, 0, 0, 0, 0, 0, 1), hdr                # num_buffers 1
            assert got[HDR:] == frame
        await wait_for(ctx, lambda: b.notifies[RXQ] >= 1)

    bench.run(scenario)
    assert bench.rx_delivered == len(frames)


def test_rx_frame_larger_than_the_chain_is_dropped_and_the_buffer_returned_empty():
    bench = Bench(seed=21)

    async def scenario(ctx, b):
        b.post_rx(HDR + 100)
        head, _ = b.post_rx(HDR + 600)
        b.kick(RXQ)
        b.rx_frames.extend([random_frame(b.rng, 500), random_frame(b.rng, 500)])
        await wait_for(ctx, lambda: b.rings[RXQ].used_idx() == 2)
        used = b.rings[RXQ].take_used()
        assert used[0][1] == 0 and used[1] == (head, HDR + 500)

    bench.run(scenario)
    assert bench.rx_too_big == 1 and bench.rx_delivered == 1


def test_rx_waits_for_buffers_then_delivers():
    bench = Bench(seed=22)
    frame = random_frame(bench.rng, 80)

    async def scenario(ctx, b):
        b.rx_frames.append(frame)
        for _ in range(300):
            await ctx.tick()
        assert b.rx_frames, "a frame with no buffer posted must wait (or be dropped by the FIFO)"
        b.post_rx(HDR + 1518)
        b.kick(RXQ)
        await wait_for(ctx, lambda: b.rings[RXQ].used_idx() == 1)

    bench.run(scenario)
    assert bench.rx_delivered == 1


def _bad(kind):
    """Scenario for a bad descriptor of `kind`; returns the expected RingError."""
    async def scenario(ctx, b):
        ring = b.rings[TXQ if kind != "read_only_rx" else RXQ]
        buf = b.mem.alloc(200)
        if kind == "head_out_of_range":
            ring.post(ring.size + 3)
        elif kind == "next_out_of_range":
            ring.set_desc(0, buf, 100, F.NEXT, ring.size)
            ring.post(0)
        elif kind == "loop":
            ring.set_desc(0, buf, 100, F.NEXT, 1)
            ring.set_desc(1, buf, 100, F.NEXT, 0)
            ring.post(0)
        elif kind == "zero_length":
            ring.set_desc(0, buf, 0)
            ring.post(0)
        elif kind == "writable_tx":
            ring.set_desc(0, buf, 100, F.WRITE)
            ring.post(0)
        elif kind == "read_only_rx":
            ring.set_desc(0, buf, 2000)
            ring.post(0)
            b.rx_frames.append(b.rng.randbytes(100))
        elif kind == "indirect":
            ring.set_desc(0, buf, 32, F.INDIRECT)
            ring.post(0)
        elif kind == "avail_idx_jump":
            ring.avail_idx = ring.size + 1
            ring.publish()
        elif kind == "dma_error":
            b.read_fails = lambda addr: addr == ring.desc
            ring.set_desc(0, buf, 100)
            ring.post(0)
        b.kick(TXQ if kind != "read_only_rx" else RXQ)
        await wait_for(ctx, lambda: b.needs_reset == 1)
        for _ in range(200):
            await ctx.tick()
        # halted: a later kick is not served
        b.post_tx(b.rng.randbytes(100))
        b.kick(TXQ)
        for _ in range(500):
            await ctx.tick()
        assert b.rings[TXQ].used_idx() == 0 and b.rings[RXQ].used_idx() == 0
        assert b.tx_frames == []
    return scenario


@pytest.mark.parametrize("kind,error", [
    ("head_out_of_range", RingError.HEAD_RANGE), ("next_out_of_range", RingError.HEAD_RANGE),
    ("loop", RingError.CHAIN_LOOP), ("zero_length", RingError.ZERO_LENGTH),
    ("writable_tx", RingError.DIRECTION), ("read_only_rx", RingError.DIRECTION),
    ("indirect", RingError.INDIRECT), ("avail_idx_jump", RingError.AVAIL_IDX),
    ("dma_error", RingError.DMA),
])
def test_bad_descriptors_stop_the_engine(kind, error):
    bench = Bench(seed=hash(kind) & 0xFFFF)
    errors = []

    async def scenario(ctx, b):
        await _bad(kind)(ctx, b)
        errors.append(ctx.get(b.dut.error))

    bench.run(scenario)
    assert bench.needs_reset == 1
    assert errors == [error]


def post_indirect(b, ring, pieces, flags):
    """One avail entry whose descriptor points to a table of `pieces` buffers."""
    table = b.mem.alloc(16 * len(pieces), 16)
    for n, (addr, length) in enumerate(pieces):
        last = n == len(pieces) - 1
        b.mem.write(table + 16 * n, struct.pack("<QIHH", addr, length,
                                                flags | (0 if last else F.NEXT), n + 1))
    head = ring.next_desc
    ring.set_desc(head, table, 16 * len(pieces), F.INDIRECT)
    ring.next_desc = (head + 1) % ring.size
    ring.post(head)
    return head


def test_indirect_tables_carry_tx_and_rx():
    bench = Bench(seed=31, indirect=True)
    frame = random_frame(bench.rng, 700)
    incoming = random_frame(bench.rng, 900)

    async def scenario(ctx, b):
        data = bytes(HDR) + frame
        pieces = []
        for a, z in ((0, 5), (5, 300), (300, len(data))):
            addr = b.mem.alloc(z - a, 1)
            b.mem.write(addr, data[a:z])
            pieces.append((addr, z - a))
        head = post_indirect(b, b.rings[TXQ], pieces, 0)
        b.kick(TXQ)
        rx_pieces = []
        for size in (HDR + 100, 400, 1200):
            addr = b.mem.alloc(size, 1)
            b.mem.writable.append((addr, addr + size))
            rx_pieces.append((addr, size))
        rx_head = post_indirect(b, b.rings[RXQ], rx_pieces, F.WRITE)
        b.kick(RXQ)
        b.rx_frames.append(incoming)
        await wait_for(ctx, lambda: b.rings[TXQ].used_idx() == 1 and b.rings[RXQ].used_idx() == 1)
        assert b.rings[TXQ].take_used() == [(head, 0)]
        assert b.rings[RXQ].take_used() == [(rx_head, HDR + len(incoming))]
        got = b"".join(b.mem.read(a, n) for a, n in rx_pieces)[:HDR + len(incoming)]
        assert got[HDR:] == incoming

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == [frame]


@pytest.mark.parametrize("case", ["nested", "with_next", "odd_size"])
def test_bad_indirect_tables_stop_the_engine(case):
    bench = Bench(seed=32, indirect=True)
    errors = []

    async def scenario(ctx, b):
        ring = b.rings[TXQ]
        buf = b.mem.alloc(64)
        table = b.mem.alloc(32, 16)
        inner = F.INDIRECT if case == "nested" else 0
        b.mem.write(table, struct.pack("<QIHH", buf, 64, inner, 0))
        b.mem.write(table + 16, struct.pack("<QIHH", buf, 64, 0, 0))
        flags = F.INDIRECT | (F.NEXT if case == "with_next" else 0)
        ring.set_desc(0, table, 24 if case == "odd_size" else 32, flags, 1)
        ring.set_desc(1, buf, 64)
        ring.post(0)
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.needs_reset == 1)
        errors.append(ctx.get(b.dut.error))

    bench.run(scenario)
    assert errors == [RingError.INDIRECT]


def test_event_idx_moves_avail_event_and_gates_interrupts():
    bench = Bench(seed=33, event_idx=True)

    async def scenario(ctx, b):
        ring = b.rings[TXQ]
        avail_event = lambda: struct.unpack("<H", b.mem.read(ring.device + 4 + 8 * ring.size, 2))[0]
        used_event = lambda value: b.mem.write(ring.driver + 4 + 2 * ring.size, struct.pack("<H", value))
        # used_event = 2: no interrupt for the first two buffers, one for the third
        used_event(2)
        for n in range(2):
            b.post_tx(random_frame(b.rng, 80))
        b.kick(TXQ)
        await wait_for(ctx, lambda: ring.used_idx() == 2 and avail_event() == 2)
        for _ in range(100):
            await ctx.tick()
        assert b.notifies[TXQ] == 0
        b.post_tx(random_frame(b.rng, 80))
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.notifies[TXQ] == 1 and avail_event() == 3)
        # used_event = 3: the fourth buffer (used idx 3 -> 4) is signalled
        used_event(3)
        b.post_tx(random_frame(b.rng, 80))
        b.kick(TXQ)
        await wait_for(ctx, lambda: ring.used_idx() == 4)
        await wait_for(ctx, lambda: b.notifies[TXQ] == 2)
        # used_event still 3, already passed: the fifth buffer (4 -> 5) is not
        # signalled (section 2.7.10: only the step across used_event is)
        b.post_tx(random_frame(b.rng, 80))
        b.kick(TXQ)
        await wait_for(ctx, lambda: ring.used_idx() == 5)
        for _ in range(100):
            await ctx.tick()
        assert b.notifies[TXQ] == 2

    bench.run(scenario)
    assert len(bench.tx_frames) == 5


def used_frames(b, used, buffers_of):
    """Reassemble mergeable RX frames from used elements: [(heads, num_buffers, bytes)]."""
    frames = []
    while used:
        head, length = used[0]
        addr, _ = buffers_of[head]
        count = struct.unpack("<H", b.mem.read(addr + spec.VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET, 2))[0]
        assert 1 <= count <= len(used), f"num_buffers {count} with {len(used)} used elements"
        taken, used = used[:count], used[count:]
        data = b"".join(b.mem.read(buffers_of[h][0], n) for h, n in taken)
        frames.append(([h for h, _ in taken], count, data[HDR:]))
    return frames


def test_mergeable_rx_frames_span_several_buffers():
    bench = Bench(size=32, seed=31, mrg_rxbuf=True)
    frames = [random_frame(bench.rng, n) for n in (60, 1514, 244, 245, 700, 61)]
    buffer = 256

    async def scenario(ctx, b):
        buffers_of = {}
        for _ in range(24):
            head, bufs = b.post_rx(buffer)
            buffers_of[head] = bufs[0]
        b.kick(RXQ)
        b.rx_frames.extend(frames)
        total = sum(-(-(HDR + len(f)) // buffer) for f in frames)
        await wait_for(ctx, lambda: b.rings[RXQ].used_idx() == total)
        await wait_for(ctx, lambda: b.notifies[RXQ] >= 1)
        got = used_frames(b, b.rings[RXQ].take_used(), buffers_of)
        assert [data for _, _, data in got] == frames
        expected_heads = 0
        for (heads, count, data), frame in zip(got, frames):
            assert count == -(-(HDR + len(frame)) // buffer)
            assert heads == list(range(expected_heads, expected_heads + count))
            expected_heads += count

    bench.run(scenario)
    assert bench.rx_delivered == len(frames) and bench.rx_too_big == 0


@pytest.mark.parametrize("event_idx", [False, True])
def test_mergeable_rx_waits_when_buffers_run_out_mid_frame(event_idx):
    bench = Bench(size=16, seed=32, mrg_rxbuf=True, event_idx=event_idx)
    frame = random_frame(bench.rng, 1000)

    async def scenario(ctx, b):
        ring = b.rings[RXQ]
        buffers_of = {}
        for _ in range(2):
            head, bufs = b.post_rx(256)
            buffers_of[head] = bufs[0]
        b.kick(RXQ)
        b.rx_frames.append(frame)
        for _ in range(2000):
            await ctx.tick()
        # nothing published: a frame is never handed over in part
        assert ring.used_idx() == 0 and b.rx_frames and b.notifies[RXQ] == 0
        if event_idx:
            avail_event = struct.unpack("<H", b.mem.read(ring.device + 4 + 8 * ring.size, 2))[0]
            assert avail_event == 2, "the device asks to hear of the next buffer"
        reads_before = len(b.reads)
        for _ in range(200):
            await ctx.tick()
        assert len(b.reads) == reads_before, "a starved queue waits for a doorbell, it does not poll"
        for _ in range(3):
            head, bufs = b.post_rx(256)
            buffers_of[head] = bufs[0]
        b.kick(RXQ)
        await wait_for(ctx, lambda: ring.used_idx() == 4)
        got = used_frames(b, ring.take_used(), buffers_of)
        assert got == [([0, 1, 2, 3], 4, frame)]

    bench.run(scenario)


def test_mergeable_frame_larger_than_the_whole_ring_is_dropped_taking_nothing():
    bench = Bench(size=4, seed=33, mrg_rxbuf=True)
    big, small = random_frame(bench.rng, 1000), random_frame(bench.rng, 100)

    async def scenario(ctx, b):
        ring = b.rings[RXQ]
        buffers_of = {}
        for _ in range(4):
            head, bufs = b.post_rx(128)
            buffers_of[head] = bufs[0]
        b.kick(RXQ)
        b.rx_frames.extend([big, small])
        await wait_for(ctx, lambda: ring.used_idx() == 1)
        got = used_frames(b, ring.take_used(), buffers_of)
        assert got == [([0], 1, small)]

    bench.run(scenario)
    assert bench.rx_too_big == 1 and bench.rx_delivered == 1


def test_descriptors_are_read_in_blocks():
    bench = Bench(size=16, seed=34)
    frames = [random_frame(bench.rng, 100) for _ in range(8)]

    async def scenario(ctx, b):
        for f in frames:
            b.post_tx(f)
        b.kick(TXQ)
        await wait_for(ctx, lambda: len(b.tx_frames) == len(frames))

    bench.run(scenario)
    ring = bench.rings[TXQ]
    table = range(ring.desc, ring.desc + spec.VIRTQ_DESC_SIZE * ring.size)
    desc_reads = [(a, n) for a, n in bench.reads if a in table]
    assert desc_reads == [(ring.desc, 8 * spec.VIRTQ_DESC_SIZE)]
    assert [f for f, _ in bench.tx_frames] == frames


def test_a_miss_on_the_last_descriptor_of_a_block_reads_it_whole():
    """A chain whose head is the last descriptor of a block: its last DW (flags
    and next) is the block read's last, and the chain must still go on."""
    bench = Bench(size=DESC_BLOCK, seed=5)
    frame = random_frame(bench.rng, 300)

    async def scenario(ctx, b):
        head = b.post_tx(frame, pieces=2, start_desc=DESC_BLOCK - 1)   # descriptors 7, then 0
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.rings[TXQ].used_idx() == 1)
        assert [u[0] for u in b.rings[TXQ].take_used()] == [head]

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == [frame]
    assert bench.needs_reset == 0


def test_descriptor_blocks_are_aligned_so_heads_going_down_hit_the_cache():
    # Linux's free list is last freed, first used: in steady state a driver
    # posts heads 15, 14, ..., 8. Blocks aligned to DESC_BLOCK serve them all
    # from one read (a block read from the missed descriptor on would miss
    # on every head).
    bench = Bench(size=16, seed=37)
    frames = [random_frame(bench.rng, 100) for _ in range(DESC_BLOCK)]
    heads = list(reversed(range(DESC_BLOCK, 2 * DESC_BLOCK)))

    async def scenario(ctx, b):
        for head, f in zip(heads, frames):
            b.post_tx(f, start_desc=head)
        b.kick(TXQ)
        await wait_for(ctx, lambda: len(b.tx_frames) == len(frames))

    bench.run(scenario)
    ring = bench.rings[TXQ]
    table = range(ring.desc, ring.desc + spec.VIRTQ_DESC_SIZE * ring.size)
    desc_reads = [(a, n) for a, n in bench.reads if a in table]
    assert desc_reads == [(ring.desc + DESC_BLOCK * spec.VIRTQ_DESC_SIZE,
                           DESC_BLOCK * spec.VIRTQ_DESC_SIZE)]
    assert [f for f, _ in bench.tx_frames] == frames


def test_tx_buffer_is_read_only_when_the_frame_buffer_has_room():
    bench = Bench(seed=35)
    frame = random_frame(bench.rng, 400)

    async def scenario(ctx, b):
        b.tx_space = 300
        b.post_tx(frame)
        b.kick(TXQ)
        for _ in range(1000):
            await ctx.tick()
        assert not any(n == len(frame) for _, n in b.reads), "read before there was room"
        assert not b.tx_frames
        b.tx_space = 400
        await wait_for(ctx, lambda: len(b.tx_frames) == 1)

    bench.run(scenario)
    assert bench.tx_frames == [(frame, False)]


def test_rx_frames_go_to_the_queue_they_are_steered_to():
    bench = Bench(size=16, seed=36, pairs=2)
    frames = [random_frame(bench.rng, 60 + n) for n in range(12)]
    pairs = [bench.rng.randrange(2) for _ in frames]
    for frame, pair in zip(frames, pairs):
        bench.rx_pairs[id(frame)] = pair

    async def scenario(ctx, b):
        posted = {0: [], 1: []}
        for pair in (0, 1):
            for _ in range(12):
                posted[pair].append(b.post_rx(HDR + 200, queue=spec.rx_queue_index(pair)))
            b.kick(spec.rx_queue_index(pair))
        b.rx_frames.extend(frames)
        for pair in (0, 1):
            count = pairs.count(pair)
            await wait_for(ctx, lambda: b.rings[spec.rx_queue_index(pair)].used_idx() == count)
        for pair in (0, 1):
            used = b.rings[spec.rx_queue_index(pair)].take_used()
            mine = [f for f, p in zip(frames, pairs) if p == pair]
            for (head, buffers), (uid, ulen), frame in zip(posted[pair], used, mine):
                assert uid == head and ulen == HDR + len(frame)
                assert b.mem.read(buffers[0][0] + HDR, len(frame)) == frame

    bench.run(scenario)
    assert bench.rx_delivered == len(frames)
    # each queue keeps its heads and descriptors across the other's visits:
    # its chains are read 8 at a time, whatever the interleaving
    for pair in (0, 1):
        batches = -(-pairs.count(pair) // BATCH)
        ring = bench.rings[spec.rx_queue_index(pair)]
        table = range(ring.desc, ring.desc + spec.VIRTQ_DESC_SIZE * ring.size)
        entries = range(ring.driver + spec.VIRTQ_RING_HEADER_SIZE,
                        ring.driver + spec.VIRTQ_RING_HEADER_SIZE + 2 * ring.size)
        assert sum(1 for a, _ in bench.reads if a in table) == batches, bench.reads
        assert sum(1 for a, _ in bench.reads if a in entries) == batches, bench.reads


@pytest.mark.parametrize("first_desc", [0, 4])
def test_transmit_queues_take_turns(first_desc):
    """Round robin: every transmitq with work gets a visit (VISIT_CHAINS
    chains) before any gets a second, and a queue with nothing posted holds
    up no one. With the chains from descriptor 4 on, the last chain of a
    visit and the next one share a descriptor block, so read-ahead could
    look past the visit's end (it must not: the next visit is another
    queue's)."""
    pairs = 4
    bench = Bench(size=32, seed=37, pairs=pairs, tx_ready=1.0)
    busy = [0, 1, 3]                        # pair 2 posts nothing
    per_queue = 2 * VISIT_CHAINS            # two visits each, from one avail read (BATCH)
    frames = {pair: [random_frame(bench.rng, 60) for _ in range(per_queue)] for pair in busy}
    owner = {f: pair for pair, fs in frames.items() for f in fs}

    async def scenario(ctx, b):
        for pair in busy:
            for n, frame in enumerate(frames[pair]):
                b.post_tx(frame, queue=spec.tx_queue_index(pair), start_desc=first_desc + n)
        for pair in busy:
            b.kick(spec.tx_queue_index(pair))
        await wait_for(ctx, lambda: len(b.tx_frames) == per_queue * len(busy), limit=60_000)

    bench.run(scenario)
    order = [owner[f] for f, _ in bench.tx_frames]
    step = VISIT_CHAINS * len(busy)
    for start in range(0, len(order), step):
        assert sorted(order[start:start + step]) == sorted(busy * VISIT_CHAINS), order
    for pair in busy:                       # in order within each queue
        assert [f for f, _ in bench.tx_frames if owner[f] == pair] == frames[pair]


@pytest.mark.parametrize("room, layout", [("plenty", "one buffer"), ("plenty", "header apart"),
                                          ("one frame", "one buffer")])
def test_next_buffer_is_read_while_the_current_one_arrives(room, layout):
    """Read-ahead: with room in the frame buffer, chain k+1's read (a single
    plain buffer) is asked for before chain k's used element is written;
    without room for both it waits, and frames are the same either way."""
    bench = Bench(size=16, seed=38, p_stall=0.0, tx_ready=1.0)
    frames = [random_frame(bench.rng, 200) for _ in range(6)]
    if room == "one frame":
        bench.tx_space = 250

    async def scenario(ctx, b):
        for frame in frames:
            if layout == "one buffer":
                b.post_tx(frame)
            else:                                # the 12-byte header, then the frame
                ring = b.rings[TXQ]
                first = ring.next_desc
                for n, piece in enumerate((bytes(HDR), frame)):
                    addr = b.mem.alloc(len(piece), 1)
                    b.mem.write(addr, piece)
                    index = (first + n) % ring.size
                    ring.set_desc(index, addr, len(piece), F.NEXT if n == 0 else 0,
                                  (index + 1) % ring.size)
                ring.next_desc = (first + 2) % ring.size
                ring.post(first)
        b.kick(TXQ)
        await wait_for(ctx, lambda: b.rings[TXQ].used_idx() == len(frames))

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == frames
    ring = bench.rings[TXQ]
    used = range(ring.device + spec.VIRTQ_RING_HEADER_SIZE,
                  ring.device + spec.VIRTQ_RING_HEADER_SIZE + 8 * ring.size)
    data_reads = [c for (a, n), c in zip(bench.reads, bench.reads.cycles) if n == 200]
    elem_writes = [c for (a, _), c in zip(bench.writes, bench.writes.cycles) if a in used]
    assert len(data_reads) == len(frames) and len(elem_writes) == len(frames)
    ahead = [data_reads[k + 1] < elem_writes[k] for k in range(len(frames) - 1)]
    if room == "one frame":
        assert not any(ahead), ahead
    elif layout == "one buffer":
        assert all(ahead), ahead
    else:
        # two descriptors a chain: chain 4's start a new block of DESC_BLOCK
        # descriptors, not yet in the cache when chain 3 streams in
        assert ahead == [True, True, True, False, True], ahead


def test_a_device_reset_starts_every_queue_afresh():
    """After a device reset (section 2.4) every queue the engines serve starts
    again from index 0, whichever queue they visited last: the transmitq,
    the controlq and the receiveq are each used, reset, laid out anew by
    the driver and used again."""
    bench = Bench(size=8, seed=41)

    async def use_every_queue(ctx, b, count):
        frames = [random_frame(b.rng, 60 + 50 * n) for n in range(count)]
        commands = [bytes([n, 1]) for n in range(count)]
        heads = {TXQ: [], b.ctrlq: [], RXQ: []}
        for frame, command in zip(frames, commands):
            heads[TXQ].append(b.post_tx(frame))
            heads[b.ctrlq].append(b.post_ctrl(command)[0])
            heads[RXQ].append(b.post_rx(HDR + 1518)[0])
        for q in heads:
            b.kick(q)
        b.rx_frames.extend(frames)
        await wait_for(ctx, lambda: all(b.rings[q].used_idx() == count for q in heads))
        for q, posted in heads.items():
            assert [head for head, _ in b.rings[q].take_used()] == posted, q
        return frames, commands

    async def scenario(ctx, b):
        sent, commands = await use_every_queue(ctx, b, 3)
        for _ in range(50):
            await ctx.tick()
        ctx.set(b.reset, 1)
        await ctx.tick()
        ctx.set(b.reset, 0)
        b.rings = {q: SplitRing(b.mem, 8) for q in range(b.num_queues)}
        b.set_up_rings(ctx)
        more, more_commands = await use_every_queue(ctx, b, 2)
        sent += more
        commands += more_commands
        b.sent, b.sent_commands = sent, commands

    bench.run(scenario)
    assert [f for f, _ in bench.tx_frames] == bench.sent
    assert [c for c, _ in bench.commands] == bench.sent_commands
    assert bench.rx_delivered == len(bench.sent)
    assert bench.needs_reset == 0
