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
