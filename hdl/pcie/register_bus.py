"""A DW-wide register bus between the TLP completer and register blocks.

The completer (initiator) turns config and memory requests into single-DW
accesses; register blocks (config space, virtio common cfg, ISR, ...) are its
subordinates. One access per strobe:

    initiator -> subordinate   addr    DW index inside the block
                               be      byte enables (reads too: a read-to-clear
                                       register clears only the bytes read)
                               r_stb   read; r_data is valid the next cycle
                               w_stb   write w_data under be
    subordinate -> initiator   r_data  read data, one cycle after r_stb

`RegisterDecoder` splits one bus into several by address range.
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class RegisterBusSignature(wiring.Signature):
    def __init__(self, addr_width):
        self.addr_width = addr_width
        super().__init__({
            "addr": Out(addr_width),
            "be": Out(4),
            "r_stb": Out(1),
            "r_data": In(32),
            "w_stb": Out(1),
            "w_data": Out(32),
        })

    def __eq__(self, other):
        return isinstance(other, RegisterBusSignature) and other.addr_width == self.addr_width

    def __repr__(self):
        return f"RegisterBusSignature({self.addr_width})"


def byte_mask(be):
    """A 32-bit mask with the bytes selected by the 4-bit value ``be``."""
    from amaranth.hdl import Cat
    return Cat(*(be[i].replicate(8) for i in range(4)))


def masked_write(current, w_data, be):
    """The value of a 32-bit register after writing ``w_data`` under ``be``."""
    mask = byte_mask(be)
    return (current & ~mask) | (w_data & mask)


class RegisterDecoder(wiring.Component):
    """Route one register bus to several windows by DW address.

    ``windows`` is a list of ``(name, dw_offset, addr_width)``; each window is
    ``2**addr_width`` DWs at ``dw_offset`` (aligned to its size). Accesses that
    hit no window read as zero and write nowhere.

    Ports:
        bus: In(RegisterBusSignature(addr_width)), from the initiator.
        <name>: Out(RegisterBusSignature(window width)), one per window.
    """

    def __init__(self, addr_width, windows):
        self._windows = []
        members = {"bus": In(RegisterBusSignature(addr_width))}
        for name, dw_offset, width in windows:
            if dw_offset % (1 << width):
                raise ValueError(f"window {name} at DW {dw_offset:#x} is not aligned to its size")
            if dw_offset + (1 << width) > 1 << addr_width:
                raise ValueError(f"window {name} does not fit in {addr_width} address bits")
            self._windows.append((name, dw_offset, width))
            members[name] = Out(RegisterBusSignature(width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        selected = Signal(range(len(self._windows) + 1))   # registered for the read data
        hit_any = 0
        for index, (name, dw_offset, width) in enumerate(self._windows):
            sub = getattr(self, name)
            hit = (bus.addr >> width) == (dw_offset >> width)
            m.d.comb += [
                sub.addr.eq(bus.addr[:width]),
                sub.be.eq(bus.be),
                sub.w_data.eq(bus.w_data),
                sub.r_stb.eq(bus.r_stb & hit),
                sub.w_stb.eq(bus.w_stb & hit),
            ]
            with m.If(bus.r_stb & hit):
                m.d.sync += selected.eq(index + 1)
            hit_any = hit_any | hit
        with m.If(bus.r_stb & ~hit_any):
            m.d.sync += selected.eq(0)
        with m.Switch(selected):
            for index, (name, _, _) in enumerate(self._windows):
                with m.Case(index + 1):
                    m.d.comb += bus.r_data.eq(getattr(self, name).r_data)
            with m.Default():
                m.d.comb += bus.r_data.eq(0)
        return m


class RegisterBusRegister(wiring.Component):
    """A register stage on a register bus: the initiator's strobes, address
    and data reach the subordinate a cycle later, so read data comes back two
    cycles after ``r_stb`` instead of one (`READ_LATENCY`).

    Ports:
        i: In(RegisterBusSignature(addr_width)), from the initiator.
        o: Out(RegisterBusSignature(addr_width)), to the subordinate.
    """
    READ_LATENCY = 2

    def __init__(self, addr_width):
        super().__init__({
            "i": In(RegisterBusSignature(addr_width)),
            "o": Out(RegisterBusSignature(addr_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [
            self.o.addr.eq(self.i.addr),
            self.o.be.eq(self.i.be),
            self.o.r_stb.eq(self.i.r_stb),
            self.o.w_stb.eq(self.i.w_stb),
            self.o.w_data.eq(self.i.w_data),
        ]
        m.d.comb += self.i.r_data.eq(self.o.r_data)
        return m
