"""DmaWriteMux in the Amaranth simulator: clients behind one behavioural DMA
writer (tests/ring_model.py) each get their writes where they asked, and
writes never interleave."""
import random

import pytest
from amaranth.sim import Simulator

from hdl.pcie.dma_mux import DmaWriteMux
from tests.amaranth_sim import CLOCK_PERIOD
from tests.ring_model import HostMemory, dwords_of, serve_dma_write

CLIENTS = 2
REQUESTS = 12


def random_requests(rng, mem):
    """Per client: [(addr, length)] of regions it reads or writes."""
    out = []
    for _ in range(CLIENTS):
        reqs = []
        for _ in range(REQUESTS):
            length = rng.randint(1, 70)
            addr = mem.alloc(length, 1)
            reqs.append((addr, length))
        out.append(reqs)
    return out


def run(dut, testbenches, background):
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    sim.run()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_writes_pass_whole_and_land_where_each_client_asked(seed):
    rng = random.Random(seed)
    mem = HostMemory()
    dut = DmaWriteMux(CLIENTS)
    requests = random_requests(rng, mem)
    payloads = [[rng.randbytes(length) for _, length in reqs] for reqs in requests]
    for reqs in requests:
        for addr, length in reqs:
            mem.writable.append((addr, addr + length))
    log = []

    def client(index):
        port = dut.clients[index]

        async def writer(ctx):
            for (addr, length), data in zip(requests[index], payloads[index]):
                ctx.set(port.req.payload, {"addr": addr, "length": length})
                ctx.set(port.req.valid, 1)
                await ctx.tick().until(port.req.ready)
                ctx.set(port.req.valid, 0)
                words = dwords_of(data)
                for n, word in enumerate(words):
                    ctx.set(port.data.payload, {"data": word, "last": n == len(words) - 1})
                    ctx.set(port.data.valid, 1)
                    await ctx.tick().until(port.data.ready)
                ctx.set(port.data.valid, 0)
        return writer

    async def host(ctx):
        await serve_dma_write(ctx, dut.out, mem, rng, log=log)

    run(dut, [client(index) for index in range(CLIENTS)], [host])
    assert mem.violations == []
    assert len(log) == CLIENTS * REQUESTS
    for index in range(CLIENTS):
        for (addr, length), data in zip(requests[index], payloads[index]):
            assert mem.read(addr, length) == data
    # both clients got turns: the log interleaves them
    owners = [next(i for i in range(CLIENTS) if any(a == addr for a, _ in requests[i]))
              for addr, _ in log]
    assert owners != sorted(owners)
