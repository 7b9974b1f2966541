"""Elastic buffer (`hdl.phy.elastic_buffer`): two clock domains with slightly
different periods; SKP symbols of SKP ordered sets added or removed, the rest
of the stream unchanged, statuses reported, no overflow or underflow."""
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from hdl.phy.elastic_buffer import COM, SKP, ElasticBuffer
from hdl.phy.pipe import RxStatus


READ_PERIOD = 8e-9                  # 125 MHz
#: Data symbols between SKP ordered sets: odd, so the ordered set's COM falls
#: in lane position 0 and 1 in turn.
DATA_BETWEEN_SKP = 37
#: Clock offsets far beyond PCIe's 600 ppm, with SKP ordered sets far more
#: often than PCIe's 1180-1538 symbols, so that many SKPs move in a short run
#: (drift of ~0.4 words per ordered set, one word of compensation each).
OFFSET = 0.02
READ_CYCLES = 6000


def _source_symbols(count):
    """(symbol, is_k) pairs: data bytes counting up, a SKP ordered set after
    every `DATA_BETWEEN_SKP` of them."""
    symbols, value = [], 0
    while len(symbols) < count:
        for _ in range(DATA_BETWEEN_SKP):
            symbols.append((value & 0xFF, 0))
            value += 1
        symbols += [(COM, 1), (SKP, 1), (SKP, 1), (SKP, 1)]
    return symbols[:count]


def _run(write_period, *, invalid_gap=None):
    """Feed the buffer from a ``w`` domain of ``write_period``; return the
    words the read side produced ``(data, datak, valid, status)`` and the
    symbols that were sent."""
    m = Module()
    m.domains.w = ClockDomain()
    m.domains.r = ClockDomain()
    m.submodules.eb = eb = ElasticBuffer(w_domain="w", r_domain="r")
    write_cycles = int(READ_CYCLES * READ_PERIOD / write_period) + 64
    symbols = _source_symbols(2 * write_cycles)
    out, sent = [], []

    async def writer(ctx):
        for cycle in range(write_cycles):
            valid = cycle >= 8 and not (invalid_gap and invalid_gap[0] <= cycle < invalid_gap[1])
            (a, ka), (b, kb) = symbols[2 * cycle], symbols[2 * cycle + 1]
            ctx.set(eb.w_data, a | b << 8)
            ctx.set(eb.w_datak, ka | kb << 1)
            ctx.set(eb.w_valid, valid)
            ctx.set(eb.w_status, RxStatus.OK)
            if valid:
                sent.extend([(a, ka), (b, kb)])
            await ctx.tick("w")

    async def reader(ctx):
        for _ in range(READ_CYCLES):
            await ctx.tick("r")
            out.append((ctx.get(eb.r_data), ctx.get(eb.r_datak), ctx.get(eb.r_valid),
                        ctx.get(eb.r_status)))

    sim = Simulator(m)
    sim.add_clock(write_period, domain="w")
    sim.add_clock(READ_PERIOD, domain="r")
    sim.add_testbench(writer, background=True)
    sim.add_testbench(reader)
    sim.run()
    return out, sent


def _symbols(words):
    return [(data >> (8 * i) & 0xFF, datak >> i & 1)
            for data, datak, valid, _status in words if valid for i in range(2)]


def _skp_runs(symbols):
    """Number of SKP after each COM, but the last (possibly cut) ordered set."""
    runs = []
    for index, symbol in enumerate(symbols):
        if symbol == (COM, 1):
            count = 0
            while index + 1 + count < len(symbols) and symbols[index + 1 + count] == (SKP, 1):
                count += 1
            if index + 1 + count < len(symbols):
                runs.append(count)
    return runs


def _check(out, sent):
    first = next(i for i, word in enumerate(out) if word[2])
    words = out[first:]
    statuses = [status for *_rest, status in words]
    # once started, the read side never runs dry or loses words
    assert all(valid for _d, _k, valid, _s in words), "r_valid dropped after the start"
    assert RxStatus.EB_OVERFLOW not in statuses and RxStatus.EB_UNDERFLOW not in statuses
    received = _symbols(words)
    # apart from SKP symbols, the stream is the one sent, from its first symbol
    no_skp = lambda seq: [s for s in seq if s != (SKP, 1)]
    assert no_skp(received) == no_skp(sent)[:len(no_skp(received))]
    # every SKP ordered set kept 1 to 5 SKP: 3 as sent, 1 after a removal, 5 after an addition
    runs = _skp_runs(received)
    assert set(runs) <= {1, 3, 5}, runs
    added = statuses.count(RxStatus.SKP_ADDED)
    removed = statuses.count(RxStatus.SKP_REMOVED)
    assert abs(runs.count(5) - added) <= 1 and abs(runs.count(1) - removed) <= 1, \
        (runs.count(5), added, runs.count(1), removed)
    return added, removed


def test_write_clock_faster_removes_skp():
    out, sent = _run(READ_PERIOD * (1 - OFFSET))
    added, removed = _check(out, sent)
    # drift: ~OFFSET * READ_CYCLES words must go, one per removal
    assert removed >= OFFSET * READ_CYCLES * 0.7 and added <= 1, (added, removed)


def test_write_clock_slower_adds_skp():
    out, sent = _run(READ_PERIOD * (1 + OFFSET))
    added, removed = _check(out, sent)
    assert added >= OFFSET * READ_CYCLES * 0.7 and removed <= 1, (added, removed)


@pytest.mark.parametrize("offset", [OFFSET, -OFFSET])
def test_gap_without_symbol_lock(offset):
    """A long stretch without symbol lock (no SKP to work with) neither
    overflows nor underflows: words without lock are dropped or repeated. The
    read side shows r_valid low for it, and the stream resumes."""
    write_period = READ_PERIOD * (1 - offset)
    out, sent = _run(write_period, invalid_gap=(1000, 3000))
    statuses = [status for *_rest, status in out]
    assert RxStatus.EB_OVERFLOW not in statuses and RxStatus.EB_UNDERFLOW not in statuses
    valid = [word[2] for word in out]
    first = valid.index(1)
    gap = valid[first:].index(0) + first
    resume = valid[gap:].index(1) + gap
    assert resume - gap > 1500
    assert all(valid[resume:])
    received = _symbols(out)
    no_skp = lambda seq: [s for s in seq if s != (SKP, 1)]
    assert no_skp(received) == no_skp(sent)[:len(no_skp(received))]
    assert set(_skp_runs(received)) <= {1, 3, 5}


def test_depth_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        ElasticBuffer(depth=24)
