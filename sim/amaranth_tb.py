"""Host-side helpers for Amaranth-simulator tests of the core at its TLP ports.

`CoreHost` plays the root complex in miniature: it packs requests with
cocotbext-pcie's `Tlp` (a pure-Python model), feeds them into ``tlp_rx`` and
collects completions from ``tlp_tx``.
"""
from cocotbext.pcie.core.tlp import CplStatus, Tlp, TlpType
from cocotbext.pcie.core.utils import PcieId

from .tlp_codec import beats_to_tlp, tlp_to_beats

__all__ = ["CoreHost", "Tlp", "TlpType", "CplStatus", "PcieId"]

REQUESTER = PcieId(0, 0, 0)
COMPLETER = PcieId(1, 0, 0)
TIMEOUT_CYCLES = 2000


class CoreHost:
    def __init__(self, ctx, core):
        self.ctx = ctx
        self.core = core
        self.tag = 0
        self.ctx.set(core.tlp_tx.ready, 1)

    def _next_tag(self):
        self.tag = (self.tag + 1) % 256
        return self.tag

    async def send(self, tlp):
        rx = self.core.tlp_rx
        for data, keep, first, last in tlp_to_beats(tlp.pack()):
            self.ctx.set(rx.payload, {"data": data, "keep": keep, "first": first, "last": last})
            self.ctx.set(rx.valid, 1)
            await self.ctx.tick().until(rx.ready)
        self.ctx.set(rx.valid, 0)

    async def receive(self, timeout=TIMEOUT_CYCLES):
        tx = self.core.tlp_tx
        beats = []
        for _ in range(timeout):
            await self.ctx.tick()
            if self.ctx.get(tx.valid) and self.ctx.get(tx.ready):
                p = self.ctx.get(tx.payload)
                beats.append((p.data, p.keep, p.first, p.last))
                if p.last:
                    return Tlp.unpack(beats_to_tlp(beats))
        raise TimeoutError("no completion from the core")

    async def idle(self, cycles):
        """Run cycles; fail if the core sends anything (posted requests get no reply)."""
        for _ in range(cycles):
            await self.ctx.tick()
            assert not self.ctx.get(self.core.tlp_tx.valid), "unexpected TLP from the core"

    async def request(self, tlp):
        tlp.requester_id = REQUESTER
        tlp.tag = self._next_tag()
        await self.send(tlp)
        if tlp.fmt_type in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64):
            return None
        cpls = [await self.receive()]
        if cpls[0].status == CplStatus.SC and cpls[0].fmt_type == TlpType.CPL_DATA:
            # more completions follow until byte count is covered
            while cpls[-1].byte_count > cpls[-1].length * 4 - (cpls[-1].lower_address & 3):
                cpls.append(await self.receive())
        for cpl in cpls:
            assert cpl.tag == tlp.tag and cpl.requester_id == REQUESTER, cpl
        return cpls

    async def cfg_read(self, offset):
        tlp = Tlp()
        tlp.fmt_type = TlpType.CFG_READ_0
        tlp.completer_id = COMPLETER
        tlp.address = offset & ~3
        tlp.length = 1
        tlp.first_be = 0xF
        cpl, = await self.request(tlp)
        assert cpl.status == CplStatus.SC, cpl
        assert cpl.completer_id == COMPLETER, cpl
        return int.from_bytes(cpl.get_data(), "little")

    async def cfg_write(self, offset, value, be=0xF):
        tlp = Tlp()
        tlp.fmt_type = TlpType.CFG_WRITE_0
        tlp.completer_id = COMPLETER
        tlp.address = offset & ~3
        tlp.length = 1
        tlp.first_be = be
        tlp.data = value.to_bytes(4, "little")
        cpl, = await self.request(tlp)
        assert cpl.status == CplStatus.SC and cpl.fmt_type == TlpType.CPL, cpl

    async def mem_read(self, addr, length, *, use_64=False):
        """Returns (data, completions)."""
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_READ_64 if use_64 else TlpType.MEM_READ
        tlp.set_addr_be(addr, length)
        cpls = await self.request(tlp)
        data = b"".join(bytes(c.get_data()) for c in cpls)
        offset = addr & 3
        return data[offset:offset + length], cpls

    async def mem_write(self, addr, data, *, use_64=False):
        tlp = Tlp()
        tlp.fmt_type = TlpType.MEM_WRITE_64 if use_64 else TlpType.MEM_WRITE
        tlp.set_addr_be_data(addr, data)
        await self.request(tlp)
