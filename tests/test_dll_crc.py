"""The data link layer's CRCs (PCIe Base 4.0 3.5.2, 3.6.2.1) and DLLPs (3.5)."""
import random
import zlib

from hdl.dll.dllp import (DllpDecoder, DllpEncoder, DllpType, FcKind, FcType, ack_nak,
                          dllp_bytes, flow_control)
from hdl.dll.lcrc import DLLP_CRC, LCRC, Lcrc
from hdl.phy.link_packet import PacketKind
from tests.amaranth_sim import simulate


def test_lcrc_model_known_values():
    """Sequence number 0 and a 3-DW MRd32 header of zeros: LCRC C7 79 BB D1
    on the wire; an Ack of sequence number 0: CRC B3 62 (the values in
    antmicro/warp-pipe's tests/test_crc.cc, which computes them its own way)."""
    assert LCRC.crc(bytes(2 + 12)) == bytes.fromhex("c779bbd1")
    assert DLLP_CRC.crc(bytes(4)) == bytes.fromhex("b362")
    assert dllp_bytes(ack_nak(DllpType.ACK, 0)) == bytes.fromhex("00000000b362")


def test_lcrc_model_is_ieee_crc32():
    """With the spec's bit ordering the LCRC is the 802.3 CRC-32, LSB first."""
    rng = random.Random(1)
    for length in range(0, 40):
        packet = rng.randbytes(length)
        assert LCRC.crc(packet) == zlib.crc32(packet).to_bytes(4, "little")


def test_residues():
    rng = random.Random(2)
    for spec in (LCRC, DLLP_CRC):
        for length in (0, 4, 17):
            packet = rng.randbytes(length)
            crc = spec.crc(packet)
            assert spec.register(packet + crc) == spec.residue
            assert spec.register(packet + bytes(b ^ 0xFF for b in crc)) == spec.inverted_residue
            bad = bytearray(packet + crc)
            bad[0] ^= 0x10
            assert spec.register(bytes(bad)) not in (spec.residue, spec.inverted_residue)


def test_lcrc_gateware():
    """16 bits a cycle against the model; ``good``/``nullified`` after the CRC."""
    dut = Lcrc(16)
    rng = random.Random(3)
    packets = [rng.randbytes(2 * rng.randrange(1, 40)) for _ in range(12)]

    async def bench(ctx):
        for number, packet in enumerate(packets):
            crc = LCRC.crc(packet)
            ending = crc if number % 3 else bytes(b ^ 0xFF for b in crc)
            octets = packet + ending
            ctx.set(dut.en, 1)
            for pos in range(0, len(octets), 2):
                ctx.set(dut.start, pos == 0)
                ctx.set(dut.data, int.from_bytes(octets[pos:pos + 2], "little"))
                await ctx.tick()
                if pos + 2 == len(packet):
                    assert ctx.get(dut.crc).to_bytes(4, "little") == crc
            ctx.set(dut.en, 0)
            await ctx.tick()
            assert ctx.get(dut.good) == (number % 3 != 0)
            assert ctx.get(dut.nullified) == (number % 3 == 0)

    simulate(dut, bench)


def _random_dllps(rng, count):
    values = []
    for _ in range(count):
        if rng.random() < 0.4:
            values.append(ack_nak(rng.choice([DllpType.ACK, DllpType.NAK]), rng.randrange(4096)))
        else:
            values.append(flow_control(rng.choice(list(FcKind)), rng.choice(list(FcType)),
                                       rng.randrange(256), rng.randrange(4096)))
    return values


def test_dllp_encoder():
    """Every DLLP comes out as its 4 bytes and the model's CRC, 3 beats."""
    dut = DllpEncoder()
    values = _random_dllps(random.Random(4), 20)

    async def source(ctx):
        for value in values:
            ctx.set(dut.dllp.valid, 1)
            ctx.set(dut.dllp.payload, value)
            await ctx.tick().until(dut.dllp.ready)
        ctx.set(dut.dllp.valid, 0)

    async def sink(ctx):
        ctx.set(dut.tx.ready, 1)
        for value in values:
            octets = b""
            for index in range(3):
                beat, = await ctx.tick().sample(dut.tx.payload).until(dut.tx.valid)
                assert beat.kind == PacketKind.DLLP
                assert (beat.first, beat.last) == (index == 0, index == 2)
                octets += beat.data.to_bytes(2, "little")
            assert octets == dllp_bytes(value)

    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(8e-9)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()


def test_dllp_decoder():
    """Good DLLPs come out once; a flipped bit, ``bad`` or a short packet: nothing."""
    dut = DllpDecoder()
    rng = random.Random(5)
    values = _random_dllps(rng, 24)

    async def bench(ctx):
        got = []
        expected = []
        for number, value in enumerate(values):
            octets = bytearray(dllp_bytes(value))
            fault = number % 4
            if fault == 1:
                octets[rng.randrange(6)] ^= 1 << rng.randrange(8)
            beats = [octets[pos:pos + 2] for pos in range(0, 6, 2)]
            if fault == 3:
                beats = beats[:2]
            if fault == 0:
                expected.append(value)
            for index, pair in enumerate(beats):
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, {"data": int.from_bytes(pair, "little"),
                                         "kind": PacketKind.DLLP, "first": index == 0,
                                         "last": index == len(beats) - 1,
                                         "bad": fault == 2 and index == len(beats) - 1})
                await ctx.tick()
                if ctx.get(dut.dllp.valid):
                    got.append(ctx.get(dut.dllp.payload))
            ctx.set(dut.rx.valid, 0)
            for _ in range(rng.randrange(0, 3)):
                await ctx.tick()
                if ctx.get(dut.dllp.valid):
                    got.append(ctx.get(dut.dllp.payload))
        for _ in range(3):
            await ctx.tick()
            if ctx.get(dut.dllp.valid):
                got.append(ctx.get(dut.dllp.payload))
        assert got == expected

    simulate(dut, bench)
