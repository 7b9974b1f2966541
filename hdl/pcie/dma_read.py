"""DMA reader: bus-master memory reads of host memory (PCIe Base 4.0 sections
2.2.5, 2.2.7, 2.2.9, 2.3.1.1, 2.3.2, 2.8 / Completion Timeout).

A client's read (``addr``, ``length``) is split into sub-requests (MRd TLPs).
Each sub-request takes the next tag of a ring of ``tags`` and owns that tag's
slot of a reorder RAM. Completions (split at the Read Completion Boundary,
out of order across tags) are written into their slot at the place their
Byte Count says. Slots drain strictly in tag order, so data leaves in request
order, through a `BytePacker` that drops the leading ``addr & 3`` bytes.

    client.req ──> split ──> MRd TLPs ──> tlp
                    │ tag ring (wr)
    cpl ──> check ──> reorder RAM [tag slot] ──> drain (rd) ──> BytePacker ──> client.data
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.block_ram import BLOCK_RAM_ATTRS, BlockRamReadPort
from ..lib.byte_packer import BytePacker, keep_mask
from ..lib.bytes import BYTES_PER_BEAT
from .dma import DmaReadSignature
from .tlp import CompletionDw1, CompletionDw2, DwordStreamSignature, TlpDw0
from .tlp_header import (DW_BYTES, HEADER_INDEX_BITS, LANE_BITS, MAX_LENGTH_DW, HeaderDw,
                         RequestHeader, byte_enables, ceil_dw, chunk_bytes)

__all__ = ["DmaReader"]

_LANES = BYTES_PER_BEAT
_CPL_TYPE = spec.TlpFmtType.CPL & 0x1F           # Cpl and CplD share it; Fmt says data
_MAX_TAGS = 1 << spec.PCIE_TAG_BITS
_MIN_SLOT_BYTES = 16
_TICKS_PER_TIMEOUT = 4            # timestamp ticks in a Completion Timeout, at least


class DmaReader(wiring.Component):
    """Bus-master reads for one or more clients behind one request stream.

    Ports:
        client:       In(DmaReadSignature()): ``client.req`` in, ``client.data``
                      out (source-aligned DWs, ceil(length / 4) per read, in
                      request order, ``last`` on the final one, ``error`` on
                      the final one of a failed read).
        tlp:          Out(DwordStreamSignature), MRd TLPs to a TX arbiter input
                      (three-DW header below 4 GiB, four-DW above, section 2.2.4.1).
        cpl:          In(DwordStreamSignature), every completion TLP from the
                      link (RxDemux.cpl). Always ready.
        requester_id: In(16), this function's ID for the requests' headers.
        mrrs:         In(3), Device Control Max_Read_Request_Size code
                      (bytes = 128 << code, section 7.5.3.4).
        bus_master:   In(1), Command.BUS_MASTER: no request starts while 0
                      (reads already in flight complete; queued ones wait).
        received_ur:  Out(1), pulse: a completion for one of our reads came back
                      Unsupported Request (sets Status.Received Master Abort,
                      PCIe Base 4.0 section 7.5.1.1.4).
        received_ca:  Out(1), pulse: ... Completer Abort (Status.Received
                      Target Abort).
        error:        Out(1), one-cycle pulse per failed read, the cycle after
                      its last DW left on ``client.data``.

    Parameters:
        tags:           sub-requests in flight, a power of two up to 32 (Tag
                        values 0 to 31 need no Extended Tag, section 2.2.6.2).
        slot_bytes:     the largest sub-request, a power of two from 16 to
                        4096; the reorder RAM is ``tags * slot_bytes`` bytes.
        timeout_cycles: Completion Timeout (section 2.8): a sub-request still
                        waiting this long after it was sent fails (within
                        half a timeout more: see below).

    Splitting (sections 2.2.7, 7.5.3.4): sub-requests end at boundaries of
    ``min(128 << mrrs, slot_bytes)`` bytes, so they never cross 4 KiB nor
    exceed MRRS; only a read's first sub-request starts unaligned. Byte
    enables per section 2.2.5 (a one-DW request has Last BE 0).

    Tags: the TLP Tag is a sequence number modulo 32; its slot is the tag
    modulo ``tags``. A completion must match a waiting slot's full tag, so a
    late completion for a timed-out sub-request is dropped unless 32
    sub-requests have gone out since (and then it must still match the new
    request's Byte Count and Lower Address to be taken). The full tag is not
    stored: a waiting slot's sequence number is the one from the drain
    pointer on with the slot's low bits.

    Completions (sections 2.2.9, 2.3.1.1, 2.3.2): a completion is taken when
    its tag is waiting, its status is Successful Completion, it is not
    poisoned (EP), it carries data, its Byte Count equals the bytes still
    expected, its Lower Address is where those bytes start and its Length
    matches (a final completion carries exactly the remaining bytes; a
    partial one, fewer). Its payload goes to DW ``(addr & 3 + sub_len -
    byte_count) / 4`` of the slot. A completion for a waiting tag that fails
    any other check (UR, CA, CRS, EP, inconsistent counts, a payload shorter
    or longer than its Length) fails the sub-request: its read still delivers
    all its DWs (as zeros) with ``error`` on the last. A completion for a tag
    that is not waiting is dropped. The checks run on narrowed values: a
    Length above ``slot_bytes / 4`` DWs or a Byte Count above ``slot_bytes``
    (more than any sub-request) is flagged and fails; where the bytes still
    expected start is kept per tag as the request's first lane until a
    partial completion is taken, then as the DW after its payload (a
    partial completion's bytes run to the end of its last DW: it ends on a
    Read Completion Boundary, section 2.3.1.1).

    Completion Timeout: the sub-request at the head of the ring is checked
    against its issue time; a sub-request behind it is checked once it gets
    to the head. Times are kept in ticks of at most a quarter timeout (the
    top bits of a free-running counter), so a sub-request fails between
    ``timeout_cycles`` and 1.5 times that after it was sent; and modulo at
    least twice the timeout, so one that waited behind a stalled client for
    longer than that may get up to one extra timeout. No completion is
    pending for ever: the reader never hangs.
    """

    def __init__(self, *, tags=8, slot_bytes=256, timeout_cycles=125_000, tag_space=(0, 0)):
        if not (1 <= tags <= _MAX_TAGS and tags & (tags - 1) == 0):
            raise ValueError(f"tags must be a power of two from 1 to {_MAX_TAGS}, not {tags}")
        if not (_MIN_SLOT_BYTES <= slot_bytes <= spec.PCIE_REQUEST_BOUNDARY_BYTES
                and slot_bytes & (slot_bytes - 1) == 0):
            raise ValueError(f"slot_bytes must be a power of two from {_MIN_SLOT_BYTES} "
                             f"to {spec.PCIE_REQUEST_BOUNDARY_BYTES}, not {slot_bytes}")
        if timeout_cycles < 1:
            raise ValueError("timeout_cycles must be positive")
        space, space_bits = tag_space
        if not (0 <= space < 1 << space_bits and tags <= 1 << (spec.PCIE_TAG_BITS - space_bits)):
            raise ValueError(f"tag_space {tag_space}: a value of its bits, leaving room for {tags} tags")
        self.tag_space = tag_space
        self.tags = tags
        self.slot_bytes = slot_bytes
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "client": In(DmaReadSignature()),
            "tlp": Out(DwordStreamSignature),
            "cpl": In(DwordStreamSignature),
            "requester_id": In(16),
            "mrrs": In(spec.PCIE_SIZE_CODE_BITS),
            "bus_master": In(1),
            "error": Out(1),
            "received_ur": Out(1),
            "received_ca": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        tags, slot_bytes = self.tags, self.slot_bytes
        slot_dw = slot_bytes // DW_BYTES
        slot_bits = (tags - 1).bit_length()
        seq_bits = spec.PCIE_TAG_BITS + 1           # ring pointers: the tag and a wrap bit
        sub_len_shape = unsigned(slot_bytes.bit_length())   # 0 to slot_bytes
        # A sub-request ends on a boundary of at least 128 bytes, so its bytes
        # from its first DW's lane 0 (`end`, lane + length) never pass the
        # slot: ``1 <= end <= slot_bytes``, and it spans ``ceil(end / 4)`` DWs.
        slot_dw_shape = unsigned(max((slot_dw - 1).bit_length(), 1))   # a DW of the slot
        lower_dw_bits = spec.PCIE_LOWER_ADDRESS_BITS - LANE_BITS

        def slot_of(seq):
            return seq[:slot_bits]

        # Tags: the sequence number in the low bits, the reader's tag space in
        # the top ones, so that readers sharing the completion stream each
        # recognise only their own completions.
        space, space_bits = self.tag_space
        seq_tag_bits = spec.PCIE_TAG_BITS - space_bits

        def tag_of(seq):
            return Cat(seq[:seq_tag_bits], Const(space, space_bits)) if space_bits \
                else seq[:spec.PCIE_TAG_BITS]

        # Completion Timeout clock: a free-running cycle counter; its top bits
        # count ticks of 2**tick_bits cycles (at most a quarter of the timeout)
        # and are the sub-requests' timestamps.
        tick_bits = max((self.timeout_cycles // _TICKS_PER_TIMEOUT).bit_length() - 1, 0)
        # ticks of age that guarantee timeout_cycles whatever the phase of the
        # issue within its tick
        timeout_ticks = -(-self.timeout_cycles >> tick_bits) + (1 if tick_bits else 0)
        stamp_bits = (2 * timeout_ticks - 1).bit_length()   # ages modulo >= two timeouts
        now = Signal(tick_bits + stamp_bits)
        m.d.sync += now.eq(now + 1)
        stamp = now[tick_bits:]

        # --- per-tag state --------------------------------------------------
        # Fixed when the sub-request is sent: two small RAMs (LUT RAM), one
        # for each reader, holding only what that reader needs.
        head_layout = data.StructLayout({           # the drain and the timeout
            "first_lane": unsigned(LANE_BITS),      # start address bits 1:0
            "end_lane": unsigned(LANE_BITS),        # lane of the last byte
            "last_dw": slot_dw_shape,               # DWs - 1
            "last": unsigned(1),                    # ends its read
            "sent_at": unsigned(stamp_bits),
        })
        cpl_layout = data.StructLayout({            # the completion checks
            "addr_lo": unsigned(spec.PCIE_LOWER_ADDRESS_BITS),  # start address bits 6:0
            "end": sub_len_shape,                   # bytes from the first DW's lane 0
        })
        m.submodules.info_head = info_head_mem = Memory(shape=head_layout, depth=tags, init=[])
        m.submodules.info_cpl = info_cpl_mem = Memory(shape=cpl_layout, depth=tags, init=[])
        head_w = info_head_mem.write_port()
        cpl_w = info_cpl_mem.write_port()
        info_head = info_head_mem.read_port(domain="comb")
        info_cpl = info_cpl_mem.read_port(domain="comb")
        # Changed by completions: a bit each in registers, and where a
        # partial completion left off (its next DW) in LUT RAM, valid once
        # `fresh` is clear.
        waiting = Signal(tags)                      # sent; final completion not in yet
        failed = Signal(tags)
        fresh = Signal(tags)                        # no completion taken yet
        m.submodules.next_dw = next_dw_mem = Memory(shape=slot_dw_shape, depth=tags, init=[])
        next_dw_w = next_dw_mem.write_port()
        next_dw_r = next_dw_mem.read_port(domain="comb")

        wr_seq = Signal(seq_bits)                   # the next sub-request's tag
        rd_seq = Signal(seq_bits)                   # the oldest tag not yet drained
        in_flight = Signal(seq_bits)
        m.d.comb += in_flight.eq(wr_seq - rd_seq)

        # The reorder RAM: a slot of slot_dw DWs per tag (block RAM).
        # A read in the cycle of a write to the same DW is undefined
        # (`BLOCK_RAM_ATTRS`) and never used: payload is written only to a
        # waiting slot, and a slot drains once it is no longer waiting.
        m.submodules.slots = slots = Memory(shape=32, depth=tags * slot_dw, init=[],
                                            attrs=BLOCK_RAM_ATTRS)
        slot_w = slots.write_port()
        slot_r = BlockRamReadPort(m, slots, name="slot_r")

        # Slot updates, one source each a cycle (they never name the same slot:
        # `issue` a free one, `apply` a waiting one, `expire` the head, and
        # `expire` waits while a completion is being taken).
        issue = Signal()
        apply = Signal()
        apply_slot = Signal(max(slot_bits, 1))
        apply_fail = Signal()
        apply_final = Signal()
        expire = Signal()
        for n in range(tags):
            with m.If(issue & (slot_of(wr_seq) == n)):
                m.d.sync += [waiting[n].eq(1), failed[n].eq(0), fresh[n].eq(1)]
            with m.If(apply & (apply_slot[:slot_bits] == n)):
                m.d.sync += fresh[n].eq(0)
                with m.If(apply_fail):
                    m.d.sync += [waiting[n].eq(0), failed[n].eq(1)]
                with m.Elif(apply_final):
                    m.d.sync += waiting[n].eq(0)
            with m.If(expire & (slot_of(rd_seq) == n)):
                m.d.sync += [waiting[n].eq(0), failed[n].eq(1)]

        # --- send MRd TLPs (sections 2.2.4.1, 2.2.5, 2.2.7) ------------------
        req, tlp = self.client.req, self.tlp
        addr = Signal(64)
        left = Signal(16)                           # bytes of the read not yet requested
        # `left`, narrowed for the size choice: any value past the largest
        # sub-request reads as "more than a sub-request"
        left_bits = sub_len_shape.width
        left_many = Signal()
        m.d.comb += left_many.eq(left[left_bits:] != 0)
        # the next sub-request's size, fixed before its header goes out
        sub_len = Signal(sub_len_shape)
        next_len = chunk_bytes(m, addr, Cat(left[:left_bits], left_many), self.mrrs, slot_bytes)
        lo = addr[:LANE_BITS]
        end = Signal(sub_len_shape)                 # bytes from the first DW's lane 0
        m.d.comb += end.eq(lo + sub_len)
        length_dw = Signal(range(MAX_LENGTH_DW + 1))
        m.d.comb += length_dw.eq(ceil_dw(end))
        end_lane = Signal(LANE_BITS)
        m.d.comb += end_lane.eq(end - 1)
        first_be, last_be = byte_enables(m, lo, end_lane, length_dw == 1)
        header = RequestHeader(m, with_data=False, addr=addr, length_dw=length_dw,
                               requester_id=self.requester_id,
                               tag=tag_of(wr_seq),
                               first_be=first_be, last_be=last_be)
        index = Signal(HEADER_INDEX_BITS)
        final = ~left_many & (left[:left_bits] == sub_len)
        m.d.comb += [
            head_w.addr.eq(slot_of(wr_seq)),
            head_w.data.first_lane.eq(lo),
            head_w.data.end_lane.eq(end_lane),
            head_w.data.last_dw.eq(length_dw - 1),
            head_w.data.last.eq(final),
            head_w.data.sent_at.eq(stamp),
            head_w.en.eq(issue),
            cpl_w.addr.eq(slot_of(wr_seq)),
            cpl_w.data.addr_lo.eq(addr[:spec.PCIE_LOWER_ADDRESS_BITS]),
            cpl_w.data.end.eq(end),
            cpl_w.en.eq(issue),
        ]

        with m.FSM(name="read_request"):
            with m.State("IDLE"):
                m.d.comb += req.ready.eq(1)
                with m.If(req.valid):
                    m.d.sync += [addr.eq(req.payload.addr), left.eq(req.payload.length)]
                    with m.If(req.payload.length != 0):     # an empty read has no data
                        m.next = "WAIT_TAG"
            with m.State("WAIT_TAG"):
                with m.If(self.bus_master & (in_flight < tags)):
                    m.d.sync += [index.eq(HeaderDw.DW0), sub_len.eq(next_len)]
                    m.next = "SEND_MRD"
            with m.State("SEND_MRD"):
                m.d.comb += [
                    tlp.valid.eq(1),
                    tlp.payload.data.eq(header.dw(index)),
                    tlp.payload.first.eq(index == HeaderDw.DW0),
                    tlp.payload.last.eq(header.is_last(index)),
                ]
                with m.If(tlp.ready):
                    m.d.sync += index.eq(header.next_index(index))
                    with m.If(header.is_last(index)):
                        m.d.comb += issue.eq(1)
                        m.d.sync += [
                            wr_seq.eq(wr_seq + 1),
                            addr.eq(addr + sub_len),
                            left.eq(left - sub_len),
                        ]
                        with m.If(final):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "WAIT_TAG"

        # --- take completions (sections 2.2.9, 2.3.1.1, 2.3.2) ---------------
        cpl = self.cpl
        m.d.comb += cpl.ready.eq(1)                 # completions are never stalled
        in_dw0 = TlpDw0(cpl.payload.data)
        in_dw1 = CompletionDw1(cpl.payload.data)
        in_dw2 = CompletionDw2(cpl.payload.data)
        is_cpl = Signal()
        has_data = Signal()
        poisoned = Signal()
        status = Signal(3)
        # Length and Byte Count, narrowed to what a sub-request can take; a
        # larger value sets a flag and fails the checks (a taken completion
        # has at most slot_dw DWs and slot_bytes bytes).
        cpl_dws = Signal(range(slot_dw + 1))
        cpl_long = Signal()
        byte_count = Signal(sub_len_shape)
        byte_count_over = Signal()

        # Checks on the third header DW, against the slot its tag names.
        tag_slot = in_dw2.tag[:slot_bits]
        m.d.comb += [info_cpl.addr.eq(tag_slot), next_dw_r.addr.eq(tag_slot)]
        entry = info_cpl.data
        slot_waiting = Signal()
        slot_fresh = Signal()
        for n in range(tags):
            with m.If(tag_slot == n):
                m.d.comb += [slot_waiting.eq(waiting[n]), slot_fresh.eq(fresh[n])]
        # A waiting slot holds one of the `tags` sequence numbers from rd_seq
        # on: the one whose low bits are the slot, so the tag bits above the
        # slot are rd_seq's, plus one if the slot is below rd_seq's.
        seq_hi = Signal(seq_tag_bits - slot_bits)
        m.d.comb += seq_hi.eq(rd_seq[slot_bits:seq_tag_bits]
                              + (tag_slot < slot_of(rd_seq)))
        tag_matches = Signal()
        m.d.comb += tag_matches.eq((in_dw2.tag[slot_bits:seq_tag_bits] == seq_hi)
                                   & (in_dw2.tag[seq_tag_bits:] == space))
        ours = Signal()                             # a completion for a waiting tag
        m.d.comb += ours.eq(is_cpl & tag_matches & slot_waiting)
        lane = in_dw2.lower_address[:LANE_BITS]
        # offset of the completion's first byte from the slot's DW 0 (2.3.1.1:
        # Byte Count is what is left of the request, this completion included).
        # Modulo twice slot_bytes: a Byte Count past `end` makes it wrap to
        # above slot_bytes, where no expected start lies.
        offset = Signal(sub_len_shape)
        m.d.comb += offset.eq(entry.end - byte_count)
        # where the bytes still expected start: the request's first byte, or
        # the DW after the last completion taken
        expected = Signal(sub_len_shape)
        m.d.comb += expected.eq(Mux(slot_fresh, entry.addr_lo[:LANE_BITS],
                                    next_dw_r.data << LANE_BITS))
        expected_lower = Signal(spec.PCIE_LOWER_ADDRESS_BITS)
        m.d.comb += expected_lower.eq(Cat(offset[:LANE_BITS],
                                          entry.addr_lo[LANE_BITS:] + offset[LANE_BITS:]))
        # DWs from `lane` to the request's end: a final completion has exactly
        # these, a partial one fewer (2.3.1.1)
        tail_dws = Signal(range(slot_dw + 2))
        m.d.comb += tail_dws.eq(ceil_dw(lane + byte_count))
        cpl_final = Signal()
        m.d.comb += cpl_final.eq(cpl_dws == tail_dws)
        consistent = Signal()
        m.d.comb += consistent.eq(
            ~byte_count_over & ~cpl_long
            & (offset == expected)
            & (in_dw2.lower_address == expected_lower)
            & (cpl_dws <= tail_dws))
        good = Signal()
        m.d.comb += good.eq(has_data & ~poisoned & (status == spec.CplStatus.SC) & consistent)

        taking = Signal()                           # this completion's payload goes in its slot
        failing = Signal()                          # this completion fails its sub-request
        final_q = Signal()
        slot_q = Signal(max(slot_bits, 1))
        dst_dw = Signal(slot_dw_shape)              # next payload DW's place in the slot
        dws_left = Signal.like(cpl_dws)             # payload DWs still due (taken completion)
        m.d.comb += [
            slot_w.addr.eq(Cat(dst_dw, slot_q[:slot_bits])),
            slot_w.data.eq(cpl.payload.data),
            apply_final.eq(final_q),
            # a partial completion ends on a DW boundary: the next one
            # starts at the DW after it
            next_dw_w.addr.eq(apply_slot[:slot_bits]),
            next_dw_w.data.eq(dst_dw + 1),
            next_dw_w.en.eq(apply),
        ]

        m.d.sync += [self.received_ur.eq(0), self.received_ca.eq(0)]     # pulses
        with m.FSM(name="read_completion") as cpl_fsm:
            with m.State("HEADER_DW0"):
                with m.If(cpl.valid & cpl.payload.first & ~cpl.payload.last):
                    length = Mux(in_dw0.length == 0, MAX_LENGTH_DW, in_dw0.length)
                    m.d.sync += [
                        is_cpl.eq(in_dw0.type == _CPL_TYPE),
                        has_data.eq(in_dw0.fmt == spec.TlpFmt.DW3_DATA),
                        poisoned.eq(in_dw0.ep),
                        cpl_dws.eq(length),
                        cpl_long.eq(length > slot_dw),
                    ]
                    m.next = "HEADER_DW1"
            with m.State("HEADER_DW1"):
                with m.If(cpl.valid):
                    count = Mux(in_dw1.byte_count == 0,
                                1 << spec.PCIE_BYTE_COUNT_BITS, in_dw1.byte_count)
                    m.d.sync += [
                        status.eq(in_dw1.status),
                        byte_count.eq(count),
                        byte_count_over.eq(count > slot_bytes),
                    ]
                    m.next = "HEADER_DW2"
                    with m.If(cpl.payload.last):             # malformed: too short
                        m.next = "HEADER_DW0"
            with m.State("HEADER_DW2"):
                with m.If(cpl.valid):
                    m.d.sync += [
                        taking.eq(ours & good),
                        failing.eq(ours & ~good),
                        self.received_ur.eq(ours & (status == spec.CplStatus.UR)),
                        self.received_ca.eq(ours & (status == spec.CplStatus.CA)),
                        final_q.eq(cpl_final),
                        slot_q.eq(tag_slot),
                        dst_dw.eq(offset >> LANE_BITS),
                        dws_left.eq(cpl_dws),
                    ]
                    with m.If(cpl.payload.last):
                        # no payload: an error status (or a CplD cut short) ends
                        # the sub-request as failed
                        m.d.comb += [apply.eq(ours), apply_fail.eq(1),
                                     apply_slot.eq(tag_slot)]
                        m.next = "HEADER_DW0"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(cpl.valid):
                    with m.If(dws_left != 0):
                        m.d.sync += dws_left.eq(dws_left - 1)
                        with m.If(taking):
                            m.d.comb += slot_w.en.eq(1)
                            m.d.sync += dst_dw.eq(dst_dw + 1)
                    with m.If(cpl.payload.last):
                        whole = dws_left == 1               # as many DWs as Length
                        m.d.comb += [
                            apply.eq(taking | failing),
                            apply_fail.eq(failing | ~whole),
                            apply_slot.eq(slot_q),
                        ]
                        m.next = "HEADER_DW0"
        cpl_idle = cpl_fsm.ongoing("HEADER_DW0")

        # --- drain the head slot, in tag order, through the packer ----------
        head = slot_of(rd_seq)
        m.d.comb += info_head.addr.eq(head)
        head_info = info_head.data
        head_busy = rd_seq != wr_seq
        head_waiting = Signal()
        head_failed = Signal()
        for n in range(tags):
            with m.If(head == n):
                m.d.comb += [head_waiting.eq(waiting[n]), head_failed.eq(failed[n])]

        # Completion Timeout (section 2.8), checked at the head, in ticks
        age = Signal(stamp_bits)
        m.d.comb += [
            age.eq(stamp - head_info.sent_at),
            expire.eq(head_busy & head_waiting & (age >= timeout_ticks) & cpl_idle),
        ]

        read_dw = Signal(slot_dw_shape)
        first_dw = read_dw == 0
        last_dw = read_dw == head_info.last_dw
        first_lane = Mux(first_dw, head_info.first_lane, 0)
        last_lane = Mux(last_dw, head_info.end_lane, _LANES - 1)
        keep = Signal(_LANES)
        with m.Switch(Cat(first_lane, last_lane)):
            for lo_lane in range(_LANES):
                for hi_lane in range(lo_lane, _LANES):
                    with m.Case(lo_lane | hi_lane << LANE_BITS):
                        m.d.comb += keep.eq(keep_mask(lo_lane, hi_lane))

        m.submodules.packer = packer = BytePacker()
        # one stage: the slot RAM's read register and this DW's marks
        stage_valid = Signal()
        stage_keep = Signal(_LANES)
        stage_last = Signal()                       # ends the read
        stage_zero = Signal()                       # a failed sub-request's DW
        stage_error = Signal()                      # the read failed (with stage_last)
        read_failed = Signal()                      # a sub-request of this read failed
        advance = ~stage_valid | packer.i.ready
        head_ready = head_busy & ~head_waiting
        m.d.comb += [
            slot_r.addr.eq(Cat(read_dw, head)),
            slot_r.en.eq(advance),
            packer.i.valid.eq(stage_valid),
            packer.i.payload.data.eq(Mux(stage_zero, 0, slot_r.data)),
            packer.i.payload.keep.eq(stage_keep),
            packer.i.payload.last.eq(stage_last),
        ]
        with m.If(advance):
            m.d.sync += stage_valid.eq(head_ready)
            with m.If(head_ready):
                m.d.sync += [
                    stage_keep.eq(keep),
                    stage_last.eq(last_dw & head_info.last),
                    stage_zero.eq(head_failed),
                    stage_error.eq(read_failed | head_failed),
                ]
                with m.If(last_dw):
                    m.d.sync += [
                        read_dw.eq(0),
                        rd_seq.eq(rd_seq + 1),      # the slot is free again
                        read_failed.eq(~head_info.last & (read_failed | head_failed)),
                    ]
                with m.Else():
                    m.d.sync += read_dw.eq(read_dw + 1)

        # the read's error mark travels beside the packer: at most one read's
        # last beat is inside it at a time
        out_error = Signal()
        with m.If(packer.i.valid & packer.i.ready & packer.i.payload.last):
            m.d.sync += out_error.eq(stage_error)
        out = self.client.data
        m.d.comb += [
            out.valid.eq(packer.o.valid),
            out.payload.data.eq(packer.o.payload.data),
            out.payload.last.eq(packer.o.payload.last),
            out.payload.error.eq(packer.o.payload.last & out_error),
            packer.o.ready.eq(out.ready),
        ]
        m.d.sync += self.error.eq(out.valid & out.ready & out.payload.last & out.payload.error)
        return m
