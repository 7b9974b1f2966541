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
                        waiting this long after it was sent fails.

    Splitting (sections 2.2.7, 7.5.3.4): sub-requests end at boundaries of
    ``min(128 << mrrs, slot_bytes)`` bytes, so they never cross 4 KiB nor
    exceed MRRS; only a read's first sub-request starts unaligned. Byte
    enables per section 2.2.5 (a one-DW request has Last BE 0).

    Tags: the TLP Tag is a sequence number modulo 32; its slot is the tag
    modulo ``tags``. A completion must match a waiting slot's full tag, so a
    late completion for a timed-out sub-request is dropped unless 32
    sub-requests have gone out since (and then it must still match the new
    request's Byte Count and Lower Address to be taken).

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
    that is not waiting is dropped.

    Completion Timeout: the sub-request at the head of the ring is checked
    against its issue time; a sub-request behind it is checked once it gets
    to the head (its time is kept modulo twice the timeout, so one that
    waited behind a stalled client for longer may get up to one extra
    timeout). No completion is pending for ever: the reader never hangs.
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
        ts_bits = self.timeout_cycles.bit_length() + 1
        sub_len_shape = unsigned(slot_bytes.bit_length())   # 0 to slot_bytes
        byte_count_shape = unsigned(spec.PCIE_BYTE_COUNT_BITS + 1)

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

        # --- per-tag state --------------------------------------------------
        # Fixed when the sub-request is sent: a small RAM (LUT RAM).
        tag_info = data.StructLayout({
            "addr_lo": unsigned(spec.PCIE_LOWER_ADDRESS_BITS),  # start address bits 6:0
            "sub_len": sub_len_shape,                           # bytes, 1 to slot_bytes
            "last": unsigned(1),                                # ends its read
            "tag": unsigned(spec.PCIE_TAG_BITS),
            "sent_at": unsigned(ts_bits),
        })
        m.submodules.info = info = Memory(shape=tag_info, depth=tags, init=[])
        info_w = info.write_port()
        info_head = info.read_port(domain="comb")   # the ring's head: drain, timeout
        info_cpl = info.read_port(domain="comb")    # the slot a completion names
        # Changed by completions: registers.
        waiting = Signal(tags)                      # sent; final completion not in yet
        failed = Signal(tags)
        remaining = [Signal(sub_len_shape, name=f"remaining_{n}") for n in range(tags)]

        wr_seq = Signal(seq_bits)                   # the next sub-request's tag
        rd_seq = Signal(seq_bits)                   # the oldest tag not yet drained
        in_flight = Signal(seq_bits)
        m.d.comb += in_flight.eq(wr_seq - rd_seq)

        now = Signal(ts_bits)                       # free-running, for the timeout
        m.d.sync += now.eq(now + 1)

        # The reorder RAM: a slot of slot_dw DWs per tag (block RAM).
        m.submodules.slots = slots = Memory(shape=32, depth=tags * slot_dw, init=[])
        slot_w = slots.write_port()
        slot_r = slots.read_port()

        # Slot updates, one source each a cycle (they never name the same slot:
        # `issue` a free one, `apply` a waiting one, `expire` the head, and
        # `expire` waits while a completion is being taken).
        issue = Signal()
        issue_len = Signal(sub_len_shape)
        apply = Signal()
        apply_slot = Signal(max(slot_bits, 1))
        apply_fail = Signal()
        apply_final = Signal()
        apply_remaining = Signal(sub_len_shape)
        expire = Signal()
        for n in range(tags):
            with m.If(issue & (slot_of(wr_seq) == n)):
                m.d.sync += [waiting[n].eq(1), failed[n].eq(0), remaining[n].eq(issue_len)]
            with m.If(apply & (apply_slot[:slot_bits] == n)):
                with m.If(apply_fail):
                    m.d.sync += [waiting[n].eq(0), failed[n].eq(1)]
                with m.Elif(apply_final):
                    m.d.sync += waiting[n].eq(0)
                with m.Else():
                    m.d.sync += remaining[n].eq(apply_remaining)
            with m.If(expire & (slot_of(rd_seq) == n)):
                m.d.sync += [waiting[n].eq(0), failed[n].eq(1)]

        # --- send MRd TLPs (sections 2.2.4.1, 2.2.5, 2.2.7) ------------------
        req, tlp = self.client.req, self.tlp
        addr = Signal(64)
        left = Signal(16)                           # bytes of the read not yet requested
        # the next sub-request's size, fixed before its header goes out
        sub_len = Signal(sub_len_shape)
        next_len = chunk_bytes(m, addr, left, self.mrrs, slot_bytes)
        lo = addr[:LANE_BITS]
        end = Signal(range(slot_bytes + _LANES))    # bytes from the first DW's lane 0
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
        final = left == sub_len
        m.d.comb += [
            issue_len.eq(sub_len),
            info_w.addr.eq(slot_of(wr_seq)),
            info_w.data.addr_lo.eq(addr[:spec.PCIE_LOWER_ADDRESS_BITS]),
            info_w.data.sub_len.eq(sub_len),
            info_w.data.last.eq(final),
            info_w.data.tag.eq(tag_of(wr_seq)),
            info_w.data.sent_at.eq(now),
            info_w.en.eq(issue),
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
        cpl_dws = Signal(range(MAX_LENGTH_DW + 1))
        status = Signal(3)
        byte_count = Signal(byte_count_shape)

        # Checks on the third header DW, against the slot its tag names.
        tag_slot = in_dw2.tag[:slot_bits]
        m.d.comb += info_cpl.addr.eq(tag_slot)
        entry = info_cpl.data
        slot_waiting = Signal()
        slot_remaining = Signal(sub_len_shape)
        for n in range(tags):
            with m.If(tag_slot == n):
                m.d.comb += [slot_waiting.eq(waiting[n]), slot_remaining.eq(remaining[n])]
        ours = Signal()                             # a completion for a waiting tag
        m.d.comb += ours.eq(is_cpl & (in_dw2.tag[spec.PCIE_TAG_BITS:] == 0)
                            & (entry.tag == in_dw2.tag[:spec.PCIE_TAG_BITS]) & slot_waiting)
        lane = in_dw2.lower_address[:LANE_BITS]
        covered = Signal(range(MAX_LENGTH_DW * DW_BYTES + 1))   # payload bytes from `lane`
        m.d.comb += covered.eq(cpl_dws * DW_BYTES - lane)
        cpl_final = Signal()
        m.d.comb += cpl_final.eq(byte_count <= covered)
        # offset of the completion's first byte from the slot's DW 0 (2.3.1.1:
        # Byte Count is what is left of the request, this completion included)
        offset = Signal(range(slot_bytes + _LANES))
        m.d.comb += offset.eq(entry.addr_lo[:LANE_BITS] + entry.sub_len - byte_count)
        expected_lower = Signal(spec.PCIE_LOWER_ADDRESS_BITS)
        m.d.comb += expected_lower.eq(entry.addr_lo + entry.sub_len - byte_count)
        consistent = Signal()
        m.d.comb += consistent.eq(
            (byte_count == slot_remaining)
            & (in_dw2.lower_address == expected_lower)
            & (~cpl_final | (cpl_dws == ceil_dw(lane + byte_count))))
        good = Signal()
        m.d.comb += good.eq(has_data & ~poisoned & (status == spec.CplStatus.SC) & consistent)

        taking = Signal()                           # this completion's payload goes in its slot
        failing = Signal()                          # this completion fails its sub-request
        final_q = Signal()
        remaining_q = Signal(sub_len_shape)
        slot_q = Signal(max(slot_bits, 1))
        dst_dw = Signal(range(slot_dw))             # next payload DW's place in the slot
        received = Signal(range(MAX_LENGTH_DW + 1))
        m.d.comb += [
            slot_w.addr.eq(Cat(dst_dw, slot_q[:slot_bits])),
            slot_w.data.eq(cpl.payload.data),
            apply_final.eq(final_q),
            apply_remaining.eq(remaining_q),
        ]

        m.d.sync += [self.received_ur.eq(0), self.received_ca.eq(0)]     # pulses
        with m.FSM(name="read_completion") as cpl_fsm:
            with m.State("HEADER_DW0"):
                with m.If(cpl.valid & cpl.payload.first & ~cpl.payload.last):
                    m.d.sync += [
                        is_cpl.eq(in_dw0.type == _CPL_TYPE),
                        has_data.eq(in_dw0.fmt == spec.TlpFmt.DW3_DATA),
                        poisoned.eq(in_dw0.ep),
                        cpl_dws.eq(Mux(in_dw0.length == 0, MAX_LENGTH_DW, in_dw0.length)),
                    ]
                    m.next = "HEADER_DW1"
            with m.State("HEADER_DW1"):
                with m.If(cpl.valid):
                    m.d.sync += [
                        status.eq(in_dw1.status),
                        byte_count.eq(Mux(in_dw1.byte_count == 0,
                                          1 << spec.PCIE_BYTE_COUNT_BITS, in_dw1.byte_count)),
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
                        remaining_q.eq(byte_count - covered),
                        slot_q.eq(tag_slot),
                        dst_dw.eq(offset >> LANE_BITS),
                        received.eq(0),
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
                    with m.If(taking & (received < cpl_dws)):
                        m.d.comb += slot_w.en.eq(1)
                        m.d.sync += dst_dw.eq(dst_dw + 1)
                    m.d.sync += received.eq(received + 1)
                    with m.If(cpl.payload.last):
                        whole = received + 1 == cpl_dws
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
        head_lo = head_info.addr_lo[:LANE_BITS]
        head_end = Signal(range(slot_bytes + _LANES))
        m.d.comb += head_end.eq(head_lo + head_info.sub_len)
        head_dws = Signal(range(slot_dw + 1))
        m.d.comb += head_dws.eq(ceil_dw(head_end))
        head_end_lane = Signal(LANE_BITS)
        m.d.comb += head_end_lane.eq(head_end - 1)
        head_busy = rd_seq != wr_seq
        head_waiting = Signal()
        head_failed = Signal()
        for n in range(tags):
            with m.If(head == n):
                m.d.comb += [head_waiting.eq(waiting[n]), head_failed.eq(failed[n])]

        # Completion Timeout (section 2.8), checked at the head
        age = Signal(ts_bits)
        m.d.comb += [
            age.eq(now - head_info.sent_at),
            expire.eq(head_busy & head_waiting & (age >= self.timeout_cycles) & cpl_idle),
        ]

        read_dw = Signal(range(slot_dw))
        first_dw = read_dw == 0
        last_dw = read_dw == head_dws - 1
        first_lane = Mux(first_dw, head_lo, 0)
        last_lane = Mux(last_dw, head_end_lane, _LANES - 1)
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
