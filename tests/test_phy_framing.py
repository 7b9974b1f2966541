"""Receive side units: the deframer (`framing.Receiver`) and the ordered set
receiver (`ordered_sets.OrderedSetRx`), driven symbol by symbol."""
import pytest

from hdl.phy.framing import Receiver
from hdl.phy.link_packet import PacketKind
from hdl.phy.ordered_sets import OrderedSetRx, TsKind
from hdl.phy.symbols import (KSymbol, TS1_ID, TS2_ID, TS1_ID_INVERTED, DataRate)
from tests.amaranth_sim import simulate

K = KSymbol


def k(sym):
    return (sym, 1)


def d(*data):
    return [(byte, 0) for byte in data]


def packet(start, data, end=K.END):
    return [k(start)] + d(*data) + [k(end)]


def run_receiver(symbols, errors=(), enable=True):
    """Symbols [(byte, is_k)] two a cycle (padded with idle); `errors` =
    cycle numbers with a decode error. Returns (packets, framing errors)."""
    if len(symbols) % 2:
        symbols = symbols + d(0)
    dut = Receiver()
    packets, framing = [], [0]

    async def testbench(ctx):
        partial = None
        pairs = [symbols[i:i + 2] for i in range(0, len(symbols), 2)] + [d(0, 0)] * 4
        for cycle, (s0, s1) in enumerate(pairs):
            ctx.set(dut.data, s0[0] | s1[0] << 8)
            ctx.set(dut.datak, s0[1] | s1[1] << 1)
            ctx.set(dut.valid, 1)
            ctx.set(dut.enable, enable)
            ctx.set(dut.error, cycle in errors)
            await ctx.tick()
            framing[0] += ctx.get(dut.framing_error)
            if ctx.get(dut.rx.valid):
                beat = ctx.get(dut.rx.payload)
                if beat.first:
                    assert partial is None
                    partial = [PacketKind(beat.kind), b""]
                partial[1] += beat.data.to_bytes(2, "little")
                if beat.last:
                    packets.append((partial[0], partial[1], beat.bad))
                    partial = None

    simulate(dut, testbench)
    return packets, framing[0]


DATA = bytes(range(1, 11))


@pytest.mark.parametrize("lead", [0, 1])
def test_packet_in_either_slot(lead):
    symbols = d(0) * lead + packet(K.STP, DATA) + packet(K.SDP, DATA[:6]) + d(0, 0, 0) + \
        packet(K.STP, DATA[:4])
    packets, framing = run_receiver(symbols)
    assert packets == [(PacketKind.TLP, DATA, 0), (PacketKind.DLLP, DATA[:6], 0),
                       (PacketKind.TLP, DATA[:4], 0)]
    assert framing == 0


@pytest.mark.parametrize("lead", [0, 1])
def test_edb_and_decode_error_give_bad(lead):
    symbols = d(0) * lead + packet(K.STP, DATA, end=K.EDB) + packet(K.STP, DATA) + \
        packet(K.STP, DATA)
    errors = {(lead + 12 + 3) // 2}      # a symbol inside the second packet
    packets, framing = run_receiver(symbols, errors=errors)
    assert [(kind, data, bad) for kind, data, bad in packets] == \
        [(PacketKind.TLP, DATA, 1), (PacketKind.TLP, DATA, 1), (PacketKind.TLP, DATA, 0)]
    assert framing == 0


@pytest.mark.parametrize("lead", [0, 1])
@pytest.mark.parametrize("case", ["odd_length", "k_inside", "end_outside"])
def test_framing_errors(lead, case):
    if case == "odd_length":
        bad = packet(K.STP, DATA[:5])
    elif case == "k_inside":
        bad = [k(K.STP)] + d(*DATA[:4]) + [k(K.COM)] + d(*DATA[:5]) + [k(K.END)]
    else:
        bad = d(1) + [k(K.END)] + d(2)
    symbols = d(0) * lead + bad + d(0, 0) + packet(K.STP, DATA)
    packets, framing = run_receiver(symbols)
    assert framing >= 1
    assert packets[-1] == (PacketKind.TLP, DATA, 0)       # the next packet is fine
    if case != "end_outside":
        assert len(packets) == 2 and packets[0][2] == 1


def test_nothing_when_disabled():
    packets, framing = run_receiver(packet(K.STP, DATA), enable=False)
    assert packets == [] and framing == 0


# -- ordered sets ---------------------------------------------------------------

def ts(kind_id, link=None, lane=None, n_fts=0x80, rate=DataRate.GEN1_2_5GT, control=0):
    return [k(K.COM),
            k(K.PAD) if link is None else (link, 0),
            k(K.PAD) if lane is None else (lane, 0),
            (n_fts, 0), (rate, 0), (control, 0)] + d(*[kind_id] * 10)


def run_ordered_sets(symbols):
    if len(symbols) % 2:
        symbols = symbols + d(0)
    dut = OrderedSetRx()
    seen = []

    async def testbench(ctx):
        pairs = [symbols[i:i + 2] for i in range(0, len(symbols), 2)] + [d(0, 0)] * 4
        for s0, s1 in pairs:
            ctx.set(dut.data, s0[0] | s1[0] << 8)
            ctx.set(dut.datak, s0[1] | s1[1] << 1)
            ctx.set(dut.valid, 1)
            await ctx.tick()
            if ctx.get(dut.ts_valid):
                t = ctx.get(dut.ts)
                f = t.fields
                seen.append(("TS2" if t.kind == TsKind.TS2 else "TS1", t.inverted,
                             None if f.link_pad else f.link, None if f.lane_pad else f.lane,
                             f.n_fts))
            if ctx.get(dut.skp):
                seen.append("SKP")
            if ctx.get(dut.eios):
                seen.append("EIOS")

    simulate(dut, testbench)
    return seen


@pytest.mark.parametrize("lead", [0, 1])
def test_ordered_sets_realign_on_every_com(lead):
    # SKP ordered sets of 1 to 5 SKPs move the COM between slots.
    skp = lambda n: [k(K.COM)] + [k(K.SKP)] * n
    symbols = d(0) * lead + ts(TS1_ID) + skp(1) + ts(TS2_ID, 7, 0, 0x20) + skp(2) + \
        ts(TS1_ID, 7) + skp(3) + ts(TS1_ID_INVERTED) + skp(5) + \
        [k(K.COM), k(K.IDL), k(K.IDL), k(K.IDL)]
    assert run_ordered_sets(symbols) == [
        ("TS1", 0, None, None, 0x80), "SKP", ("TS2", 0, 7, 0, 0x20), "SKP",
        ("TS1", 0, 7, None, 0x80), "SKP", ("TS1", 1, None, None, 0x80), "SKP", "EIOS"]


def test_broken_training_set_is_not_reported():
    broken = ts(TS1_ID)
    broken[10] = (TS2_ID, 0)                  # identifiers disagree
    short = ts(TS1_ID)[:12]                   # cut short by a new COM
    assert run_ordered_sets(broken + short + ts(TS2_ID)) == [("TS2", 0, None, None, 0x80)]
