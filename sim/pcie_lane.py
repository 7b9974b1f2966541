"""A behavioural PCIe lane joining two PIPE ports (`hdl/phy/pipe.py`), for
simulating two physical layers against each other.

What it models, per direction (port ``a`` to port ``b`` and back):

* the symbols a transmitter sends arrive at the other receiver ``delay``
  cycles later, two a cycle as sent, or shifted by one symbol
  (``shift_ab``/``shift_ba``: the receiver's word is the previous cycle's
  symbol 1 and this cycle's symbol 0, so a COM sent in slot 0 arrives in
  slot 1);
* polarity (``invert_ab``/``invert_ba``): with the lane's wires swapped a
  receiver's 8b/10b decoder sees the complement of every 10-bit code. We
  model that at the byte level: data bytes arrive complemented (D10.2, the
  TS1 identifier, arrives as D21.5 and D5.2 as D26.5, as section 4.2.4.4
  says) and K symbols arrive unchanged (true of COM, whose two running
  disparity codes are each other's complement; a simplification for the
  others), until that receiver sets ``rx_polarity``;
* electrical idle: while a transmitter idles, the far receiver sees
  ``rx_elec_idle`` = 1, ``rx_valid`` = 0 and zero data; ``cut`` holds both
  directions idle (a broken or unplugged lane) for as long as it is high;
* receiver detection: ``tx_detect_rx`` on a port is answered
  ``detect_cycles`` later by a one-cycle ``phy_status`` with ``rx_status``
  = RECEIVER_DETECTED if ``present`` (the far end is plugged in), else OK;
* corruption: ``corrupt_ab`` (``corrupt_ba``) high for a cycle corrupts the
  symbol in slot ``corrupt_slot`` of what port ``a`` (``b``) sends in that
  cycle: it arrives complemented, with ``rx_status`` = DECODE_ERROR, as an
  8b/10b decoder reports a code it cannot decode.

SKP addition or removal by an elastic buffer is not modelled (both ends share
the simulator's clock).
"""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from hdl.phy.pipe import PipeSignature, RxStatus

__all__ = ["PcieLane"]


class PcieLane(wiring.Component):
    a: In(PipeSignature())
    b: In(PipeSignature())
    present: In(1, init=1)
    cut: In(1)
    corrupt_ab: In(1)
    corrupt_ba: In(1)
    corrupt_slot: In(1)

    def __init__(self, *, delay=3, shift_ab=False, shift_ba=False, invert_ab=False,
                 invert_ba=False, detect_cycles=4):
        assert delay >= 1
        self.delay = delay
        self.shift = {"ab": shift_ab, "ba": shift_ba}
        self.invert = {"ab": invert_ab, "ba": invert_ba}
        self.detect_cycles = detect_cycles
        super().__init__()

    def _direction(self, m, name, src, dst, corrupt):
        # Stage 0: what the transmitter sends, corrupted if asked.
        flip = Signal(16, name=f"{name}_flip")
        with m.If(corrupt):
            m.d.comb += flip.eq(Mux(self.corrupt_slot, 0xFF00, 0x00FF))
        word = Cat(src.tx_data ^ flip, src.tx_datak, src.tx_elec_idle | self.cut, corrupt)
        if self.shift[name]:
            prev = Signal(len(word), name=f"{name}_prev", init=1 << 18)
            # (bit 19 of `prev`: the corrupted symbol was symbol 1)
            m.d.sync += prev.eq(Cat(word[0:19], corrupt & self.corrupt_slot))
            # previous symbol 1, this symbol 0; idle if either half is idle.
            word = Cat(prev[8:16], src.tx_data[0:8] ^ flip[0:8], prev[17], src.tx_datak[0],
                       prev[18] | src.tx_elec_idle | self.cut,
                       prev[19] | (corrupt & ~self.corrupt_slot))
        for stage in range(self.delay):
            reg = Signal(len(word), name=f"{name}_stage{stage}", init=1 << 18)
            m.d.sync += reg.eq(word)
            word = reg
        data, datak, idle, error = word[0:16], word[16:18], word[18], word[19]
        idle = idle | self.cut
        if self.invert[name]:
            mask = Cat(*[~datak[i] & ~dst.rx_polarity for i in range(2) for _ in range(8)])
            data = data ^ mask
        m.d.comb += [
            dst.rx_data.eq(Mux(idle, 0, data)),
            dst.rx_datak.eq(Mux(idle, 0, datak)),
            dst.rx_valid.eq(~idle),
            dst.rx_elec_idle.eq(idle),
        ]
        return error & ~idle

    def _detect(self, m, name, port, error):
        count = Signal(range(self.detect_cycles + 1), name=f"{name}_detect_count")
        done = Signal(name=f"{name}_detect_done")
        with m.If(port.tx_detect_rx & port.tx_elec_idle):
            with m.If(count == self.detect_cycles):
                m.d.comb += port.phy_status.eq(~done)
                m.d.sync += done.eq(1)
            with m.Else():
                m.d.sync += count.eq(count + 1)
        with m.Else():
            m.d.sync += [count.eq(0), done.eq(0)]
        with m.If(port.phy_status):
            m.d.comb += port.rx_status.eq(Mux(self.present, RxStatus.RECEIVER_DETECTED,
                                              RxStatus.OK))
        with m.Elif(error):
            m.d.comb += port.rx_status.eq(RxStatus.DECODE_ERROR)

    def elaborate(self, platform):
        m = Module()
        error_b = self._direction(m, "ab", self.a, self.b, self.corrupt_ab)
        error_a = self._direction(m, "ba", self.b, self.a, self.corrupt_ba)
        self._detect(m, "a", self.a, error_a)
        self._detect(m, "b", self.b, error_b)
        return m
