"""Crc32 (IEEE 802.3 Clause 3.2.9): the Python model and the gateware against zlib.crc32."""
import random
import zlib

import pytest

from hdl.eth.crc import CRC32_RESIDUE, Crc32, crc32, fcs_bytes
from tests.amaranth_sim import simulate

ALL_ONES = 0xFFFFFFFF


def zlib_fcs(frame):
    """The FCS as zlib computes it: the complemented CRC, least significant octet first."""
    return zlib.crc32(frame).to_bytes(4, "little")


def test_python_model_matches_zlib():
    rng = random.Random(1)
    for length in [0, 1, 2, 3, 4, 5, 14, 60, 64, 1514, *rng.sample(range(6, 2000), 20)]:
        frame = rng.randbytes(length)
        assert fcs_bytes(frame) == zlib_fcs(frame), length


def test_residue_is_zlibs():
    """A frame followed by its FCS leaves the register at one constant."""
    rng = random.Random(2)
    for length in (0, 13, 200):
        frame = rng.randbytes(length)
        assert crc32(frame + zlib_fcs(frame)) == CRC32_RESIDUE
        assert zlib.crc32(frame + zlib_fcs(frame)) ^ ALL_ONES == CRC32_RESIDUE


def run_frames(width, frames):
    """Feed each frame, then its FCS, ``width`` bits a cycle (frame lengths are
    multiples of width/8). Returns [(crc after the frame, match after the FCS,
    match after a corrupted FCS)]."""
    dut = Crc32(width)
    step = width // 8
    results = []

    async def feed(ctx, octets):
        ctx.set(dut.en, 1)
        for pos in range(0, len(octets), step):
            ctx.set(dut.data, int.from_bytes(octets[pos:pos + step], "little"))
            await ctx.tick()
        ctx.set(dut.en, 0)

    async def clear(ctx):
        ctx.set(dut.clear, 1)
        ctx.set(dut.en, 1)          # clear wins
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.en, 0)

    async def bench(ctx):
        for frame in frames:
            await clear(ctx)
            await feed(ctx, frame)
            crc = ctx.get(dut.crc).to_bytes(4, "little")
            await feed(ctx, crc)
            good = ctx.get(dut.match)
            await clear(ctx)
            bad = bytearray(zlib_fcs(frame))
            bad[len(frame) % 4] ^= 1 << (len(frame) % 8)
            await feed(ctx, frame + bytes(bad))
            results.append((crc, good, ctx.get(dut.match)))

    simulate(dut, bench)
    return results


@pytest.mark.parametrize("width", [8, 32])
def test_gateware_matches_zlib(width):
    rng = random.Random(width)
    step = width // 8
    lengths = [0, step, 15 * step, 16 * step] + [rng.randint(1, 400) * step for _ in range(20)]
    frames = [rng.randbytes(n) for n in lengths]
    for frame, (crc, good, bad) in zip(frames, run_frames(width, frames)):
        assert crc == zlib_fcs(frame), len(frame)
        assert good == 1, "frame + its FCS must match the residue"
        assert bad == 0, "a corrupted FCS must not match"

