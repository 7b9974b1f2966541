"""Receive elastic buffer: clock tolerance compensation by SKP add/remove.

The receiver's symbols arrive on the clock recovered from the link partner's
transmitter; the physical layer runs on our own transmit clock (``pcie``).
Both are 125 MHz (2.5 GT/s, 2 symbols a cycle) but from different reference
clocks, each transmitter's bit rate allowed +-300 ppm (PCIe Base, electrical
sub-block), so they drift apart by up to 600 ppm: one symbol every ~1666. The
transmitter sends a SKP ordered set (COM followed by three SKP, K28.5 K28.0
K28.0 K28.0) every 1180 to 1538 symbol times precisely so that a receiver can
add or remove SKP symbols to absorb that drift, and a receiver must accept an
ordered set of COM and 1 to 5 SKP (PCIe Base 4.0 section 4.2.7, "Clock
Tolerance Compensation").

Design. An `AsyncFIFO` of 2-symbol words (plus flags) carries the stream from
the receive domain (``w_domain``) to the read domain (``r_domain``). Compensation
works a whole word at a time, two SKP symbols:

* in a SKP ordered set of three SKP, whichever lane position its COM takes,
  exactly one 2-symbol word is ``SKP SKP``: ``[COM SKP] [SKP SKP]`` or
  ``[x COM] [SKP SKP] [SKP y]``. Removing it leaves COM + 1 SKP; repeating it
  gives COM + 5 SKP, both legal. Keeping the word whole keeps every other
  symbol in its lane position, so the buffer needs no symbol shifter;
* the write side drops a ``SKP SKP`` word when its fill level (as the write
  side sees it) is at or above `high_mark`; the read side repeats one when its
  fill level is below `low_mark`. At most one word is added or removed per
  ordered set (a flag per side, cleared by the first word that is not
  ``SKP SKP``);
* words written without symbol lock (``w_valid`` low) carry no data, so either
  side may drop or repeat them freely: the level stays centred through long
  stretches without SKP (electrical idle, training before lock);
* the read side starts (and restarts after an underflow) only once the buffer
  is half full.

Status (PIPE RxStatus, `hdl.phy.pipe.RxStatus`), on ``r_status`` with the
affected word: SKP_REMOVED on the word written after the removed one,
SKP_ADDED on the repeated word's first appearance, EB_OVERFLOW on the word
written after words were lost to a full buffer, EB_UNDERFLOW on the cycle the
buffer ran dry (``r_valid`` low). A status the receiver gave a word
(``w_status``: decode or disparity error) travels with it and wins over the
SKP statuses; the buffer's own overflow and underflow win over everything.

Latency: about ``depth / 2`` words (16 at the default depth of 32: 128 ns).
With ``high_mark``/``low_mark`` at 3/4 and 1/4 of the depth there is room for
the FIFO's pointer-synchroniser lag (each side sees the other's pointer 2-3
cycles late, so the write side over-estimates and the read side
under-estimates the level) plus a margin of several words of drift.
"""
from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from .pipe import RxStatus, SYMBOLS_PER_CYCLE
from .symbols import KSymbol

__all__ = ["SKP", "COM", "ElasticBuffer"]

#: K28.0, the SKP symbol, and K28.5, COM (both with the K flag).
SKP = int(KSymbol.SKP)
COM = int(KSymbol.COM)


class _Word(data.Struct):
    data: unsigned(8 * SYMBOLS_PER_CYCLE)
    datak: unsigned(SYMBOLS_PER_CYCLE)
    status: unsigned(3)
    valid: unsigned(1)
    skp_removed: unsigned(1)
    overflow: unsigned(1)


def _is_skp_pair(data, datak):
    pair = Const(int.from_bytes(bytes([SKP] * SYMBOLS_PER_CYCLE), "little"),
                 8 * SYMBOLS_PER_CYCLE)
    return (datak == (1 << SYMBOLS_PER_CYCLE) - 1) & (data == pair)


class ElasticBuffer(wiring.Component):
    """Clock tolerance compensation between two 125 MHz domains.

    Parameters
    ----------
    depth : int
        Words (a power of 2, at least 8).
    w_domain, r_domain : str
        Receive (recovered clock) and read (``pcie``) domains. Resetting the
        write domain empties the buffer.

    Ports
    -----
    w_data, w_datak, w_status, w_valid : In, ``w_domain``
        Received word (symbol 0 in bits 7:0), its K flags, its RxStatus
        (`RxStatus.OK`, DECODE_ERROR or DISPARITY_ERROR) and symbol lock.
    r_data, r_datak, r_status, r_valid : Out, ``r_domain``, registered
        The same stream with SKP words added or removed, and the status
        described in the module docstring.
    """

    w_data: In(8 * SYMBOLS_PER_CYCLE)
    w_datak: In(SYMBOLS_PER_CYCLE)
    w_status: In(3)
    w_valid: In(1)
    r_data: Out(8 * SYMBOLS_PER_CYCLE)
    r_datak: Out(SYMBOLS_PER_CYCLE)
    r_status: Out(3)
    r_valid: Out(1)

    def __init__(self, depth=32, *, w_domain="pcie_rx", r_domain="pcie"):
        if depth < 8 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of 2, at least 8, not {depth}")
        self.depth = depth
        self.high_mark = depth * 3 // 4
        self.low_mark = depth // 4
        self.start_mark = depth // 2
        self.w_domain = w_domain
        self.r_domain = r_domain
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = AsyncFIFO(width=_Word.as_shape().size, depth=self.depth,
                                             w_domain=self.w_domain, r_domain=self.r_domain)
        wd, rd = m.d[self.w_domain], m.d[self.r_domain]

        # --- write side --------------------------------------------------------
        w_word = Signal(_Word)
        w_skp = _is_skp_pair(self.w_data, self.w_datak)
        removed_in_set = Signal()       # one removal per SKP ordered set
        removed_pending = Signal()      # report on the next word written
        overflow_pending = Signal()
        high = fifo.w_level >= self.high_mark
        remove_skp = self.w_valid & w_skp & ~removed_in_set & high
        remove = remove_skp | (~self.w_valid & high)
        m.d.comb += [
            w_word.data.eq(self.w_data),
            w_word.datak.eq(self.w_datak),
            w_word.status.eq(self.w_status),
            w_word.valid.eq(self.w_valid),
            w_word.skp_removed.eq(removed_pending),
            w_word.overflow.eq(overflow_pending),
            fifo.w_data.eq(w_word),
            fifo.w_en.eq(~remove),
        ]
        with m.If(~w_skp | ~self.w_valid):
            wd += removed_in_set.eq(0)
        with m.Elif(remove_skp):
            wd += removed_in_set.eq(1)
        with m.If(remove_skp):
            wd += removed_pending.eq(1)
        with m.Elif(fifo.w_en & fifo.w_rdy):
            wd += removed_pending.eq(0)
        with m.If(fifo.w_en & ~fifo.w_rdy):
            wd += overflow_pending.eq(1)
        with m.Elif(fifo.w_en):
            wd += overflow_pending.eq(0)

        # --- read side -----------------------------------------------------------
        head = _Word(fifo.r_data)
        started = Signal()
        added_in_set = Signal()         # one addition per SKP ordered set
        r_skp = _is_skp_pair(head.data, head.datak)
        # r_level is combinational from the synchronised write pointer; register
        # the comparison (the level is a few cycles stale anyway) to keep it off
        # the path to the FIFO's read address.
        low = Signal()
        rd += low.eq(fifo.r_level < self.low_mark)
        add_skp = head.valid & r_skp & ~added_in_set & low
        add = fifo.r_rdy & (add_skp | (~head.valid & low))

        with m.If(fifo.r_rst):
            rd += started.eq(0)
        with m.Elif(~started):
            rd += started.eq(fifo.r_level >= self.start_mark)

        status = Signal(3)
        with m.If(started & fifo.r_rdy):
            m.d.comb += fifo.r_en.eq(~add)
            with m.If(head.overflow & ~add):
                m.d.comb += status.eq(RxStatus.EB_OVERFLOW)
            with m.Elif(head.status != RxStatus.OK):
                m.d.comb += status.eq(head.status)
            with m.Elif(add_skp):
                m.d.comb += status.eq(RxStatus.SKP_ADDED)
            with m.Elif(head.skp_removed & ~add):
                m.d.comb += status.eq(RxStatus.SKP_REMOVED)
            rd += [
                self.r_data.eq(head.data),
                self.r_datak.eq(head.datak),
                self.r_valid.eq(head.valid),
                self.r_status.eq(status),
            ]
            with m.If(~r_skp | ~head.valid):
                rd += added_in_set.eq(0)
            with m.Elif(add_skp):
                rd += added_in_set.eq(1)
        with m.Else():
            rd += [
                self.r_data.eq(0),
                self.r_datak.eq(0),
                self.r_valid.eq(0),
                self.r_status.eq(RxStatus.OK),
            ]
            with m.If(started & ~fifo.r_rst):   # ran dry: report it once and refill
                rd += [
                    self.r_status.eq(RxStatus.EB_UNDERFLOW),
                    started.eq(0),
                ]
        return m
