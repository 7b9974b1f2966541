"""Behavioural models around the RingEngine for Amaranth-simulator tests:
host memory with split virtqueues a test writes as a driver would, and the
DMA read/write client ports served from that memory.

`HostMemory` keeps the byte ranges the driver posted as device-writable;
a DMA write touching any other byte is recorded in ``violations``.
"""
import random
import struct

from hdl import spec

MEMORY_BYTES = 1 << 20


class HostMemory:
    def __init__(self, size=MEMORY_BYTES):
        self.data = bytearray(random.Random(0).randbytes(size))
        self.writable = []          # (start, end)
        self.violations = []
        self.next_free = 0x1000

    def alloc(self, size, align=16):
        start = -(-self.next_free // align) * align
        self.next_free = start + size
        assert self.next_free <= len(self.data), "test host memory exhausted"
        return start

    def read(self, addr, length):
        return bytes(self.data[addr:addr + length])

    def write(self, addr, data):
        self.data[addr:addr + len(data)] = data

    def device_write(self, addr, data):
        for offset in range(len(data)):
            byte = addr + offset
            if not any(lo <= byte < hi for lo, hi in self.writable):
                self.violations.append((addr, len(data)))
                return
        self.write(addr, data)


class SplitRing:
    """One split virtqueue as a driver lays it out (virtio 1.2 section 2.7)."""

    def __init__(self, mem, size, start_idx=0):
        self.mem, self.size = mem, size
        self.desc = mem.alloc(spec.VIRTQ_DESC_SIZE * size, 16)
        self.driver = mem.alloc(6 + 2 * size, 2)
        self.device = mem.alloc(6 + 8 * size, 4)
        mem.write(self.driver, struct.pack("<HH", 0, start_idx))
        mem.write(self.device, struct.pack("<HH", 0, start_idx))
        mem.writable.append((self.device, self.device + 6 + 8 * size))
        self.avail_idx = start_idx
        self.used_seen = start_idx
        self.next_desc = 0

    def set_desc(self, index, addr, length, flags=0, next_=0):
        self.mem.write(self.desc + spec.VIRTQ_DESC_SIZE * index,
                       struct.pack("<QIHH", addr, length, flags, next_))

    def post(self, head, *, publish=True):
        slot = self.avail_idx % self.size
        self.mem.write(self.driver + 4 + 2 * slot, struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.publish()

    def publish(self):
        self.mem.write(self.driver + 2, struct.pack("<H", self.avail_idx))

    def set_avail_flags(self, flags):
        self.mem.write(self.driver, struct.pack("<H", flags))

    def used_idx(self):
        return struct.unpack("<H", self.mem.read(self.device + 2, 2))[0]

    def take_used(self):
        """Used elements (id, len) not seen yet."""
        out = []
        while self.used_seen != self.used_idx():
            slot = self.used_seen % self.size
            out.append(struct.unpack("<II", self.mem.read(self.device + 4 + 8 * slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def config(self):
        return {"size": self.size, "msix_vector": 0, "enable": 1,
                "desc": self.desc, "driver": self.driver, "device": self.device}


def dwords_of(data):
    padded = data + bytes(-len(data) % 4)
    return [int.from_bytes(padded[i:i + 4], "little") for i in range(0, len(padded), 4)]


async def serve_dma_read(ctx, port, mem, rng, *, p_stall=0.3, fail=lambda addr: False, log=None):
    """Answer the client's reads from `mem`, source-aligned, in order.
    Transfers are decided on values sampled at the clock edge."""
    pending = []
    ctx.set(port.req.ready, 1)
    offered = False
    while True:
        if pending and (offered or rng.random() > p_stall):
            data, last, error = pending[0]
            ctx.set(port.data.payload, {"data": data, "last": last, "error": error})
            ctx.set(port.data.valid, 1)
            offered = True
        else:
            ctx.set(port.data.valid, 0)
        _, _, req_valid, req, d_valid, d_ready = await ctx.tick().sample(
            port.req.valid, port.req.payload, port.data.valid, port.data.ready)
        if d_valid and d_ready:
            pending.pop(0)
            offered = False
        if req_valid:
            if log is not None:
                log.append((req.addr, req.length))
            words = dwords_of(mem.read(req.addr, req.length))
            bad = fail(req.addr)
            pending.extend((0 if bad else w, n == len(words) - 1, bad and n == len(words) - 1)
                           for n, w in enumerate(words))


async def serve_dma_write(ctx, port, mem, rng, *, p_stall=0.3, log=None):
    """Take the client's writes into `mem` (through its guard)."""
    current = None          # [addr, length, words]
    while True:
        ctx.set(port.req.ready, current is None)
        ctx.set(port.data.ready, current is not None and rng.random() > p_stall)
        ctx.set(port.busy, current is not None)
        _, _, req_valid, req_ready, req, d_valid, d_ready, d = await ctx.tick().sample(
            port.req.valid, port.req.ready, port.req.payload,
            port.data.valid, port.data.ready, port.data.payload)
        if req_valid and req_ready:
            current = [req.addr, req.length, []]
        elif d_valid and d_ready:
            current[2].append(d.data)
            expected = -(-current[1] // 4)
            assert bool(d.last) == (len(current[2]) == expected), "DMA write: last misplaced"
            if d.last:
                data = b"".join(w.to_bytes(4, "little") for w in current[2])[:current[1]]
                if log is not None:
                    log.append((current[0], data))
                mem.device_write(current[0], data)
                current = None
