"""BytePacker: holes squeezed out, packets kept apart, one beat a cycle."""
import random

import pytest

from hdl.lib.byte_packer import BytePacker, keep_mask
from tests.amaranth_sim import simulate

LANES = 4
DENSE_LAST_KEEPS = {keep_mask(0, n) for n in range(LANES)}


def split_into_beats(rng, payload, *, p_empty=0.0, dense=False):
    """One packet's bytes as beats [(data, keep, last)], each beat a random
    contiguous run at a random lane, with empty beats sprinkled in."""
    beats = []
    pos = 0
    while pos < len(payload) or not beats:
        if rng.random() < p_empty:
            beats.append([0, 0])
            continue
        if dense:
            first, run = 0, min(LANES, len(payload) - pos)
        else:
            first = rng.randrange(LANES)
            run = rng.randint(1, min(LANES - first, len(payload) - pos))
        data = rng.getrandbits(32)           # junk outside the kept lanes
        for n in range(run):
            shift = 8 * (first + n)
            data = data & ~(0xFF << shift) | payload[pos + n] << shift
        beats.append([data, keep_mask(first, first + run - 1)])
        pos += run
    if rng.random() < p_empty:
        beats.append([0, 0])                 # an empty last beat
    return [(data, keep, n == len(beats) - 1) for n, (data, keep) in enumerate(beats)]


def run(packets_beats, rng, *, p_valid, p_ready, max_cycles=20000):
    """Drive the beats, collect output beats [(data, keep, last)]; return (out, cycles)."""
    dut = BytePacker()
    flat = [beat for beats in packets_beats for beat in beats]
    expected_out = sum(1 for beats in packets_beats
                       if any(keep for _, keep, _ in beats))
    out = []
    result = {}

    async def tb(ctx):
        index = 0
        valid = False
        held = None              # output offered but not taken last cycle
        cycles = 0
        packets_out = 0
        while packets_out < expected_out or index < len(flat):
            assert cycles < max_cycles, "packer stopped making progress"
            if not valid and index < len(flat):
                valid = rng.random() < p_valid
            ctx.set(dut.i.valid, valid)
            if valid:
                data, keep, last = flat[index]
                ctx.set(dut.i.payload, {"data": data, "keep": keep, "last": last})
            ready = rng.random() < p_ready
            ctx.set(dut.o.ready, ready)
            o_valid = ctx.get(dut.o.valid)
            beat = (ctx.get(dut.o.payload.data), ctx.get(dut.o.payload.keep),
                    ctx.get(dut.o.payload.last))
            if held is not None:
                assert o_valid and beat == held, "output changed while not taken"
            held = None
            if o_valid:
                if ready:
                    out.append(beat)
                    packets_out += beat[2]
                else:
                    held = beat
            if valid and ctx.get(dut.i.ready):
                index += 1
                valid = False
            await ctx.tick()
            cycles += 1
        result["cycles"] = cycles

    simulate(dut, tb)
    return out, result["cycles"]


def unpack(out):
    """Output beats -> list of packets (bytes), checking density on the way."""
    packets, current = [], bytearray()
    for data, keep, last in out:
        if last:
            assert keep in DENSE_LAST_KEEPS, f"last beat keep {keep:04b} not low-contiguous"
        else:
            assert keep == 0b1111, f"non-last beat keep {keep:04b}"
        for lane in range(LANES):
            if keep >> lane & 1:
                current.append(data >> (8 * lane) & 0xFF)
        if last:
            packets.append(bytes(current))
            current = bytearray()
    assert not current, "bytes after the last packet's end"
    return packets


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_packets_come_out_dense_and_intact(seed):
    rng = random.Random(seed)
    packets = [bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 3, 4, 5, rng.randint(1, 40)])))
               for _ in range(60)]
    beats = [split_into_beats(rng, p, p_empty=0.15) for p in packets]
    out, _ = run(beats, rng, p_valid=0.7, p_ready=0.6)
    assert unpack(out) == packets


def test_empty_packet_is_dropped():
    rng = random.Random(5)
    packets = [b"\x11\x22\x33", b"", b"\x44\x55\x66\x77\x88"]
    beats = [split_into_beats(rng, packets[0]), [(0, 0, False), (0, 0, True)],
             split_into_beats(rng, packets[2])]
    out, _ = run(beats, rng, p_valid=1.0, p_ready=1.0)
    assert unpack(out) == [packets[0], packets[2]]


def test_full_rate_dense_stream():
    """Dense input, no stall: one beat a cycle in and out, the tail a cycle later."""
    rng = random.Random(6)
    packets = [bytes(rng.getrandbits(8) for _ in range(4 * 50 + 3))]
    beats = [split_into_beats(rng, p, dense=True) for p in packets]
    out, cycles = run(beats, rng, p_valid=1.0, p_ready=1.0)
    assert unpack(out) == packets
    assert len(out) == len(beats[0])
    # two cycles of latency, and the loop's cycle seeing the last packet out
    assert cycles <= len(beats[0]) + 3, f"{cycles} cycles for {len(beats[0])} beats"


def test_shifted_stream_keeps_full_rate():
    """A run shifted by one lane (as the DMA reader makes it) still moves a beat a cycle."""
    rng = random.Random(7)
    payload = bytes(rng.getrandbits(8) for _ in range(4 * 40 - 1))
    stream = b"\x00" + payload
    beats = []
    for n in range(0, len(stream), 4):
        chunk = stream[n:n + 4]
        first = 1 if n == 0 else 0
        data = int.from_bytes(chunk.ljust(4, b"\x00"), "little")
        beats.append((data, keep_mask(first, len(chunk) - 1), n + 4 >= len(stream)))
    out, cycles = run([beats], rng, p_valid=1.0, p_ready=1.0)
    assert unpack(out) == [payload]
    assert cycles <= len(beats) + 3


def test_back_to_back_small_packets():
    """Single-beat packets back to back: the next one enters while the tail leaves."""
    rng = random.Random(8)
    packets = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4))) for _ in range(30)]
    beats = [split_into_beats(rng, p, dense=True) for p in packets]
    out, cycles = run(beats, rng, p_valid=1.0, p_ready=1.0)
    assert unpack(out) == packets
    assert cycles <= len(packets) + 3, f"{cycles} cycles for {len(packets)} packets"


# --- against a cycle-by-cycle model of the documented behaviour --------------

class PackerModel:
    """What the docstring promises, cycle by cycle: the bytes waiting (at most
    two beats), and whether the packet's last beat is in. A full beat leaves
    once a byte after it (or the packet's end) is in; the packet's remaining
    bytes leave as soon as its last beat is in; ``i.ready`` leaves room for a
    whole beat after this cycle's output, and waits while a tail waits."""

    def __init__(self):
        self.waiting = []                    # bytes, oldest first
        self.tail = False

    def outputs(self):
        """(valid, keep, last, bytes): the output beat, from the state alone."""
        count = len(self.waiting)
        valid = count > LANES or (self.tail and count > 0)
        last = self.tail and count <= LANES
        keep = (1 << min(count, LANES)) - 1
        return valid, keep, last, self.waiting[:LANES]

    def i_ready(self, o_ready):
        valid, _, last, _ = self.outputs()
        out_last = valid and o_ready and last
        return out_last or (not self.tail and (len(self.waiting) <= LANES or o_ready))

    def step(self, o_ready, i_valid, beat):
        """One clock edge; returns whether the input beat was taken."""
        valid, _, last, _ = self.outputs()
        taken = i_valid and self.i_ready(o_ready)
        if valid and o_ready:
            del self.waiting[:LANES]
            if last:
                self.tail = False
        if taken:
            data, keep, last_in = beat
            self.waiting += [data >> (8 * lane) & 0xFF
                             for lane in range(LANES) if keep >> lane & 1]
            self.tail = last_in and bool(self.waiting)
        return taken


def random_stream(rng, packets):
    """Beats of `packets` random packets: runs at random lanes, empty beats
    (the last one too), empty packets, junk in the lanes keep leaves out."""
    beats = []
    for _ in range(packets):
        if rng.random() < 0.1:               # an empty packet
            length = rng.randint(1, 3)
            beats += [(rng.getrandbits(32), 0, n == length - 1) for n in range(length)]
            continue
        payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 3, 4, 5, rng.randint(1, 30)])))
        for data, keep, last in split_into_beats(rng, payload, p_empty=0.2):
            beats.append((data if keep else rng.getrandbits(32), keep, last))
    return beats


def run_against_model(beats, rng, *, p_valid, p_ready):
    """Drive `beats`; every cycle, compare i.ready and the output beat with the
    model, and check that the output does not change with this cycle's inputs.
    Returns [(cycle, beat index)] of the input beats as they were taken."""
    dut = BytePacker()
    model = PackerModel()
    taken_at = []

    def output(ctx):
        return (ctx.get(dut.o.valid), ctx.get(dut.o.payload.keep),
                ctx.get(dut.o.payload.last), ctx.get(dut.o.payload.data))

    async def tb(ctx):
        index, valid, cycle = 0, False, 0
        while index < len(beats) or model.waiting:
            assert cycle < 20 * len(beats) + 100, "packer stopped making progress"
            # the output must not depend on this cycle's inputs
            ctx.set(dut.i.valid, rng.random() < 0.5)
            ctx.set(dut.i.payload, {"data": rng.getrandbits(32), "keep": rng.getrandbits(4),
                                    "last": rng.random() < 0.5})
            ctx.set(dut.o.ready, rng.random() < 0.5)
            before = output(ctx)

            if not valid and index < len(beats):
                valid = rng.random() < p_valid
            beat = beats[index] if valid else (0, 0, False)
            ready = rng.random() < p_ready
            ctx.set(dut.i.valid, valid)
            ctx.set(dut.i.payload, {"data": beat[0], "keep": beat[1], "last": beat[2]})
            ctx.set(dut.o.ready, ready)
            o_valid, o_keep, o_last, o_data = output(ctx)
            assert before == (o_valid, o_keep, o_last, o_data), \
                f"cycle {cycle}: output follows this cycle's inputs"

            m_valid, m_keep, m_last, m_bytes = model.outputs()
            assert o_valid == m_valid, f"cycle {cycle}: o.valid {o_valid}, model {m_valid}"
            if m_valid:
                got = [o_data >> (8 * lane) & 0xFF for lane in range(len(m_bytes))]
                assert (o_keep, o_last, got) == (m_keep, m_last, m_bytes), \
                    f"cycle {cycle}: beat {o_keep:04b} {o_last} {got}, model {m_keep:04b} {m_last} {m_bytes}"
            m_ready = model.i_ready(ready)
            assert ctx.get(dut.i.ready) == m_ready, f"cycle {cycle}: i.ready, model {m_ready}"

            if model.step(ready, valid, beat):
                taken_at.append((cycle, index))
                index += 1
                valid = False
            await ctx.tick()
            cycle += 1

    simulate(dut, tb)
    return taken_at


@pytest.mark.parametrize("seed,p_valid,p_ready", [
    (11, 0.7, 0.6), (12, 0.5, 0.9), (13, 0.9, 0.4), (14, 1.0, 1.0),
    (15, 1.0, 0.7), (16, 0.6, 1.0),
])
def test_matches_cycle_model(seed, p_valid, p_ready):
    rng = random.Random(seed)
    beats = random_stream(rng, 80)
    run_against_model(beats, rng, p_valid=p_valid, p_ready=p_ready)


def test_random_runs_full_rate():
    """Random runs, random empty beats, o.ready and i.valid always 1: a beat
    goes in every cycle, but for the one cycle a tail of more than four bytes
    takes to drain."""
    rng = random.Random(17)
    beats = random_stream(rng, 100)
    taken_at = run_against_model(beats, rng, p_valid=1.0, p_ready=1.0)
    bubbles, before = 0, 0                   # bytes of the packet before this beat
    for _, keep, last in beats:
        run_bytes = bin(keep).count("1")
        if last:
            # a full beat waits for the next byte: up to four bytes still wait
            waiting = (before - 1) % LANES + 1 if before else 0
            bubbles += waiting + run_bytes > LANES
            before = 0
        else:
            before += run_bytes
    assert [index for _, index in taken_at] == list(range(len(beats)))
    assert taken_at[-1][0] == len(beats) - 1 + bubbles
    assert 0 < bubbles < len(beats) // 4
