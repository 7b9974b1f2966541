"""The split-virtqueue ring engine (virtio 1.2 section 2.7), with the
virtio-net transmit and receive steps (section 5.1.6) it drives.

One engine serves every queue, one descriptor chain at a time, through the
DMA requester's read and write ports. For a queue it visits it:

1. reads the avail ring's flags and idx (one 4-byte read);
2. reads up to ``BATCH`` avail ring entries at once into a head cache;
3. walks each head's chain: reads each 16-byte descriptor whole and checks it
   (index below the queue size, no longer chain than the queue, NEXT target
   in range, length non-zero, the right direction; an INDIRECT table only
   when negotiated, not nested, not with NEXT, a whole number of descriptors);
4. moves the data: TX gathers the buffers (less the 12-byte virtio_net_hdr)
   into the TX frame buffer; RX writes the header and the head frame of the
   RX frame buffer across the chain's buffers;
5. writes the used element, and after the batch the used idx;
6. raises the queue's interrupt unless VIRTQ_AVAIL_F_NO_INTERRUPT is set
   (with VIRTIO_F_EVENT_IDX: when used_event says so), once its writes have
   left (MSI-X must not pass them);
7. with VIRTIO_F_EVENT_IDX, before leaving a queue with nothing to do,
   writes avail_event = the next entry it will read, and looks once more.

Indirect descriptors (VIRTIO_F_INDIRECT_DESC) are walked like the queue's
own table, inside the table they point to.

A bad descriptor, an avail idx that moved more than the queue size, or a
failed DMA read stops the engine and reports ``needs_reset``: the transport
sets DEVICE_NEEDS_RESET and raises the config interrupt (section 2.1.1); the
engine then stays halted until the driver resets the device.

Queues are served round robin; receive queue 0 takes every RX frame (RX
steering over queue pairs belongs to the multiqueue work).
"""
import enum

from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.bytes import BYTES_PER_BEAT, ByteStreamSignature
from ..net.packet_fifo import Segment
from ..pcie.dma import DmaReadSignature, DmaWriteSignature
from .common_cfg import QueueConfig

__all__ = ["RingEngine", "RingError", "BATCH"]

BATCH = 8                  # avail entries fetched per read
_IDX_BITS = 16             # virtqueue indexes are 16-bit and wrap (section 2.7)
_HDR_DWORDS = spec.VIRTIO_NET_HDR_SIZE // 4
_IDX_BYTES = 2             # a le16 ring index (used idx)


class RingError(enum.IntEnum):
    """Why the engine stopped (the ``error`` port, for debug and tests)."""
    NONE = 0
    AVAIL_IDX = 1          # avail idx moved more than the queue size
    HEAD_RANGE = 2         # an avail entry or NEXT points past the table
    CHAIN_LOOP = 3         # a chain longer than the queue
    ZERO_LENGTH = 4
    DIRECTION = 5          # TX buffer device-writable or RX buffer read-only
    INDIRECT = 6           # INDIRECT_DESC not negotiated, nested, with NEXT, or a bad table size
    DMA = 7                # a read failed (error completion or timeout)


class RingEngine(wiring.Component):
    """Ports:
        queues:      In(QueueConfig).array(num_queues), from the common config.
        run:         In(1), DRIVER_OK set and the device not halted.
        event_idx:   In(1), VIRTIO_F_EVENT_IDX negotiated (section 2.7.7.2, 2.7.10).
        indirect:    In(1), VIRTIO_F_INDIRECT_DESC negotiated (section 2.7.5.3).
        doorbell:    In(stream.Signature(16)), notified queue indexes.
        used_notify: Out(num_queues), pulse: raise the queue's interrupt.
        needs_reset: Out(1), pulse: the engine stopped on an error.
        error:       Out(RingError), the first error seen since reset.
        dma_rd:      Out(DmaReadSignature()), reads of rings and TX buffers.
        dma_wr:      Out(DmaWriteSignature()), writes of used rings and RX buffers.
        tx:          Out(ByteStreamSignature), TX frames, bytes at any lane
                     (to a BytePacker, then the TX PacketFifo).
        tx_abort:    Out(1), the frame on ``tx`` is to be dropped (held until
                     ``tx_done``).
        tx_done:     In(1), pulse: the TX frame buffer committed or dropped it.
        tx_sent:     Out(1), pulse: a TX chain was returned ...
        tx_empty:    Out(1), ... with no frame byte in it (dropped here) ...
        tx_long:     Out(1), ... because the frame was too long (else: too short).
        rx_valid, rx_length: In, the RX frame buffer's head frame.
        rx_seg_req:  Out(stream.Signature(Segment)), read a byte range of it.
        rx_seg:      In(ByteStreamSignature), those bytes, packed (a BytePacker).
        rx_pop:      Out(1), pulse: the head frame is delivered (or dropped).
        rx_delivered, rx_too_big: Out(1), pulses: how the head frame went.
        queue:       Out(8), the queue the pulses above refer to.
    """

    def __init__(self, *, num_queues, max_tx_frame, initial_idx=0):
        self.num_queues = num_queues
        self.max_tx_frame = max_tx_frame
        self.initial_idx = initial_idx
        super().__init__({
            "queues": In(QueueConfig).array(num_queues),
            "run": In(1),
            "event_idx": In(1),
            "indirect": In(1),
            "doorbell": In(stream.Signature(16)),
            "used_notify": Out(num_queues),
            "needs_reset": Out(1),
            "error": Out(RingError),
            "dma_rd": Out(DmaReadSignature()),
            "dma_wr": Out(DmaWriteSignature()),
            "tx": Out(ByteStreamSignature),
            "tx_abort": Out(1),
            "tx_done": In(1),
            "tx_sent": Out(1),
            "tx_empty": Out(1),
            "tx_long": Out(1),
            "rx_valid": In(1),
            "rx_length": In(16),
            "rx_seg_req": Out(stream.Signature(Segment)),
            "rx_seg": In(ByteStreamSignature),
            "rx_pop": Out(1),
            "rx_delivered": Out(1),
            "rx_too_big": Out(1),
            "queue": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        nq = self.num_queues
        served = nq - 1                      # the control queue is not served yet
        tx_queues = [q for q in range(served) if q % 2 == 1]

        # --- per-queue state ------------------------------------------------
        # Indexes start at 0 (section 2.7); `initial_idx` is a test-only
        # build parameter that starts them elsewhere, to reach the 16-bit
        # wrap-around quickly (the driver has the matching option).
        def idx(name):
            return Array(Signal(_IDX_BITS, name=f"{name}{q}", init=self.initial_idx)
                         for q in range(nq))
        last_avail = idx("last_avail")
        avail_seen = idx("avail_seen")
        used_idx = idx("used_idx")
        no_interrupt = Array(Signal(name=f"no_interrupt{q}") for q in range(nq))
        signalled = idx("signalled")         # used idx at the last interrupt decision
        kick = Signal(nq)
        cfgs = Array(self.queues)
        cfg = Signal(QueueConfig)            # the served queue's settings, registered

        m.d.comb += self.doorbell.ready.eq(1)
        kick_set = Signal(nq)
        kick_clr = Signal(nq)
        with m.If(self.doorbell.valid):
            for q in range(nq):
                with m.If(self.doorbell.payload == q):
                    m.d.comb += kick_set[q].eq(1)
        recheck = Signal(nq)                 # the engine asks itself to look again
        notify_now = Signal(nq)
        m.d.sync += self.used_notify.eq(notify_now)      # registered: a pulse a cycle later
        m.d.sync += kick.eq((kick & ~kick_clr) | kick_set | recheck)

        q = Signal(8)                        # the queue being served
        m.d.comb += self.queue.eq(q)
        size_mask = Signal(_IDX_BITS)
        m.d.comb += size_mask.eq(cfg.size - 1)
        # The served queue's state, copied in registers on a visit (the
        # per-queue arrays are only written back): keeps the queue-select
        # multiplexers out of the engine's arithmetic.
        cur_last = Signal(_IDX_BITS)
        cur_used = Signal(_IDX_BITS)
        cur_seen = Signal(_IDX_BITS)
        cur_signalled = Signal(_IDX_BITS)
        cur_no_interrupt = Signal()

        def enabled(index):
            return self.run & self.queues[index].enable

        # --- head cache -----------------------------------------------------
        heads = Array(Signal(_IDX_BITS, name=f"head{n}") for n in range(BATCH))
        cached = Signal(range(BATCH + 1))    # heads in the cache
        taken = Signal(range(BATCH + 1))     # heads consumed from it
        cache_q = Signal(8)
        cache_valid = Signal()               # the cache belongs to cache_q

        # --- chain state ----------------------------------------------------
        desc_idx = Signal(_IDX_BITS)
        in_table = Signal()                  # walking an indirect table
        table_addr = Signal(64)
        table_len = Signal(_IDX_BITS + 1)    # its descriptors (at most the queue size... or 2**16)
        event_armed = Signal()               # avail_event written, avail idx re-read once
        used_event = Signal(_IDX_BITS)
        need = Signal()                      # vring_need_event's answer
        chain_len = Signal(_IDX_BITS + 1)
        d_addr = Signal(64)
        d_len = Signal(32)
        d_flags = Signal(16)
        d_next = Signal(_IDX_BITS)
        head_id = Signal(_IDX_BITS)
        used_len = Signal(32)
        is_rx = Signal()
        dw = Signal(3)                       # DWs received of the current read

        # TX gather
        hdr_left = Signal(range(spec.VIRTIO_NET_HDR_SIZE + 1))
        frame_bytes = Signal(17)
        tx_drop = Signal()
        tx_read_len = Signal(16)
        tx_data_len = Signal(33)             # this buffer's frame bytes, before the length check
        m.d.comb += self.tx_abort.eq(tx_drop)

        # RX scatter
        rx_len = Signal(16)
        rx_pos = Signal(16)                  # frame bytes written so far
        seg_addr = Signal(64)
        seg_len = Signal(16)
        rx_room = Signal(33)                 # bytes this buffer can take
        rx_left = Signal(16)                 # frame bytes still to write

        err = Signal(RingError)
        m.d.comb += self.error.eq(err)

        rd_req = self.dma_rd.req
        rd = self.dma_rd.data
        wr_req = self.dma_wr.req
        wr = self.dma_wr.data

        def fail(reason):
            return [err.eq(reason)]

        def request(port, addr, length):
            """Offer a DMA request of `length` bytes at `addr` (held until taken)."""
            return [port.valid.eq(1), port.payload.addr.eq(addr), port.payload.length.eq(length)]

        # --- scheduler state ------------------------------------------------
        scan = Signal(8, init=tx_queues[0] if tx_queues else 0)
        prefer_rx = Signal()

        def tx_pending(index):
            return enabled(index) & (kick[index] | (avail_seen[index] != last_avail[index])
                                     | (cache_valid & (cache_q == index) & (taken != cached)))

        rx_q = spec.rx_queue_index(0)
        rx_ready = (self.rx_valid & enabled(rx_q)
                    & (kick[rx_q] | (avail_seen[rx_q] != last_avail[rx_q])
                       | (cache_valid & (cache_q == rx_q) & (taken != cached))))
        tx_here = Signal()
        with m.Switch(scan):
            for index in tx_queues:
                with m.Case(index):
                    m.d.comb += tx_here.eq(tx_pending(index))
        # The scheduler decides on last cycle's view (registered: timing); a
        # stale "pending" costs at most one visit that finds nothing.
        tx_here_r = Signal()
        rx_ready_r = Signal()
        scan_r = Signal.like(scan)
        m.d.sync += [tx_here_r.eq(tx_here), rx_ready_r.eq(rx_ready), scan_r.eq(scan)]

        new_avail = Signal(_IDX_BITS)
        to_wrap = Signal(_IDX_BITS + 1)
        m.d.comb += to_wrap.eq(cfg.size - ((cur_last) & size_mask))
        fetch = Signal(range(BATCH + 1))

        with m.FSM(name="ring"):
            with m.State("IDLE"):
                with m.If(rx_ready_r & (prefer_rx | ~tx_here_r)):
                    m.d.sync += [q.eq(rx_q), is_rx.eq(1), prefer_rx.eq(0)]
                    m.next = "VISIT"
                with m.Elif(tx_here_r):
                    m.d.sync += [q.eq(scan_r), is_rx.eq(0), prefer_rx.eq(1)]
                    m.next = "VISIT"
                # the scan moves on every cycle: TX queues take turns
                m.d.sync += scan.eq(Mux(scan >= tx_queues[-1], tx_queues[0], scan + 2))

            with m.State("VISIT"):
                m.d.sync += [cfg.eq(cfgs[q]),cur_last.eq(last_avail[q]), cur_used.eq(used_idx[q]),
                             cur_seen.eq(avail_seen[q]), cur_signalled.eq(signalled[q]),
                             cur_no_interrupt.eq(no_interrupt[q])]
                m.next = "VISIT_PLAN"
            with m.State("VISIT_PLAN"):
                with m.If(~(cache_valid & (cache_q == q))):
                    m.d.sync += [cache_valid.eq(0), cached.eq(0), taken.eq(0), cache_q.eq(q)]
                with m.If(cache_valid & (cache_q == q) & (taken != cached)):
                    m.next = "NEXT_HEAD"
                with m.Elif(cur_seen != cur_last):
                    m.next = "READ_AVAIL_RING"
                with m.Else():
                    m.next = "READ_AVAIL_IDX"

            # Step 1: flags and idx of the avail ring (section 2.7.6).
            with m.State("READ_AVAIL_IDX"):
                m.d.comb += request(rd_req, cfg.driver, spec.VIRTQ_RING_HEADER_SIZE)
                with m.If(rd_req.ready):
                    m.d.comb += kick_clr.eq(1 << q)
                    m.next = "GET_AVAIL_IDX"
            with m.State("GET_AVAIL_IDX"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.comb += new_avail.eq(rd.payload.data[16:])
                    m.d.sync += [avail_seen[q].eq(new_avail), cur_seen.eq(new_avail),
                                 no_interrupt[q].eq(rd.payload.data[0]),
                                 cur_no_interrupt.eq(rd.payload.data[0])]
                    with m.If(rd.payload.error):
                        m.d.sync += fail(RingError.DMA)
                        m.next = "ERROR"
                    with m.Elif(((new_avail - cur_last) & 0xFFFF) > cfg.size):
                        m.d.sync += fail(RingError.AVAIL_IDX)
                        m.next = "ERROR"
                    with m.Elif((new_avail == cur_last) & self.event_idx & ~event_armed):
                        m.next = "WRITE_AVAIL_EVENT"
                    with m.Elif(new_avail == cur_last):
                        m.d.sync += event_armed.eq(0)
                        m.next = "DONE"          # nothing new
                    with m.Else():
                        m.d.sync += event_armed.eq(0)
                        m.next = "READ_AVAIL_RING"

            # Section 2.7.10: ask for a notification once the driver makes
            # entry `last_avail` available, then look again (it may already be).
            with m.State("WRITE_AVAIL_EVENT"):
                avail_event = cfg.device + spec.VIRTQ_RING_HEADER_SIZE + (cfg.size << 3)
                m.d.comb += request(wr_req, avail_event, spec.VIRTQ_EVENT_SIZE)
                with m.If(wr_req.ready):
                    m.next = "AVAIL_EVENT_DATA"
            with m.State("AVAIL_EVENT_DATA"):
                m.d.comb += [wr.valid.eq(1), wr.payload.data.eq(cur_last), wr.payload.last.eq(1)]
                with m.If(wr.ready):
                    m.d.sync += event_armed.eq(1)
                    m.next = "AVAIL_EVENT_SENT"
            with m.State("AVAIL_EVENT_SENT"):
                # the re-read must not pass the avail_event write (two arbiter inputs)
                with m.If(~self.dma_wr.busy):
                    m.next = "READ_AVAIL_IDX"

            # Step 2: a batch of avail entries, not past the ring's end.
            with m.State("READ_AVAIL_RING"):
                pending = (cur_seen - cur_last)[:_IDX_BITS]
                capped = Mux(pending < BATCH, pending, BATCH)
                m.d.comb += fetch.eq(Mux(to_wrap < capped, to_wrap, capped))
                entries = cfg.driver + spec.VIRTQ_RING_HEADER_SIZE + ((cur_last & size_mask) << 1)
                m.d.comb += request(rd_req, entries, fetch << 1)
                with m.If(rd_req.ready):
                    m.d.sync += [cached.eq(fetch), taken.eq(0), cache_valid.eq(1),
                                 cache_q.eq(q), dw.eq(0)]
                    m.next = "GET_AVAIL_RING"
            with m.State("GET_AVAIL_RING"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.sync += [heads[dw << 1].eq(rd.payload.data[:16]),
                                 heads[(dw << 1) + 1].eq(rd.payload.data[16:]),
                                 dw.eq(dw + 1)]
                    with m.If(rd.payload.last):
                        with m.If(rd.payload.error):
                            m.d.sync += [fail(RingError.DMA), cache_valid.eq(0)]
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "NEXT_HEAD"

            # Step 3: the next chain.
            with m.State("NEXT_HEAD"):
                head = heads[taken]
                m.d.sync += [head_id.eq(head), desc_idx.eq(head), chain_len.eq(0), in_table.eq(0),
                             used_len.eq(0), hdr_left.eq(spec.VIRTIO_NET_HDR_SIZE),
                             frame_bytes.eq(0), tx_drop.eq(0), rx_pos.eq(0),
                             rx_len.eq(self.rx_length)]
                with m.If(head >= cfg.size):
                    m.d.sync += fail(RingError.HEAD_RANGE)
                    m.next = "ERROR"
                with m.Else():
                    m.next = "READ_DESC"

            with m.State("READ_DESC"):
                table = Mux(in_table, table_addr, cfg.desc)
                m.d.comb += request(rd_req, table + (desc_idx << 4), spec.VIRTQ_DESC_SIZE)
                with m.If(rd_req.ready):
                    m.d.sync += [dw.eq(0), chain_len.eq(chain_len + 1)]
                    m.next = "GET_DESC"
            with m.State("GET_DESC"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.sync += dw.eq(dw + 1)
                    with m.Switch(dw):
                        with m.Case(0):
                            m.d.sync += d_addr[:32].eq(rd.payload.data)
                        with m.Case(1):
                            m.d.sync += d_addr[32:].eq(rd.payload.data)
                        with m.Case(2):
                            m.d.sync += d_len.eq(rd.payload.data)
                        with m.Case(3):
                            m.d.sync += [d_flags.eq(rd.payload.data[:16]),
                                         d_next.eq(rd.payload.data[16:])]
                    with m.If(rd.payload.last):
                        with m.If(rd.payload.error):
                            m.d.sync += fail(RingError.DMA)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "CHECK_DESC"

            # Section 2.7.5.x: what a device may assume of a descriptor, checked.
            with m.State("CHECK_DESC"):
                writable = (d_flags & spec.VirtqDescF.WRITE) != 0
                is_indirect = (d_flags & spec.VirtqDescF.INDIRECT) != 0
                has_next = (d_flags & spec.VirtqDescF.NEXT) != 0
                table_size = Mux(in_table, table_len, cfg.size)
                with m.If(chain_len > table_size):
                    m.d.sync += fail(RingError.CHAIN_LOOP)
                    m.next = "ERROR"
                with m.Elif(d_len == 0):
                    m.d.sync += fail(RingError.ZERO_LENGTH)
                    m.next = "ERROR"
                with m.Elif(is_indirect):
                    # section 2.7.5.3.1: negotiated, not inside a table, not
                    # with NEXT, a whole number of descriptors
                    with m.If(~self.indirect | in_table | has_next
                              | (d_len[:4] != 0) | (d_len[4:] > (1 << _IDX_BITS))):
                        m.d.sync += fail(RingError.INDIRECT)
                        m.next = "ERROR"
                    with m.Else():
                        m.d.sync += [in_table.eq(1), table_addr.eq(d_addr),
                                     table_len.eq(d_len[4:]), desc_idx.eq(0), chain_len.eq(0)]
                        m.next = "READ_DESC"
                with m.Elif(has_next & (d_next >= table_size)):
                    m.d.sync += fail(RingError.HEAD_RANGE)
                    m.next = "ERROR"
                with m.Elif(writable != is_rx):
                    m.d.sync += fail(RingError.DIRECTION)
                    m.next = "ERROR"
                with m.Elif(is_rx):
                    m.next = "RX_PLAN"
                with m.Else():
                    m.next = "TX_PLAN"

            # Step 4, transmit (section 5.1.6.2): the header is skipped (no
            # offload is offered), the rest is the frame.
            with m.State("TX_PLAN"):
                skip = Signal(32)
                m.d.comb += skip.eq(Mux(d_len < hdr_left, d_len, hdr_left))
                data_len = Signal(33)
                m.d.comb += data_len.eq(d_len - skip)
                m.d.sync += [hdr_left.eq(hdr_left - skip), seg_addr.eq(d_addr + skip),
                             tx_data_len.eq(data_len)]
                m.next = "TX_CHECK"
            with m.State("TX_CHECK"):
                m.d.sync += tx_read_len.eq(tx_data_len)
                with m.If((tx_data_len == 0) | tx_drop):
                    m.next = "CHAIN_NEXT"
                with m.Elif(frame_bytes + tx_data_len > self.max_tx_frame):
                    m.d.sync += tx_drop.eq(1)            # too long: dropped, still returned
                    m.next = "CHAIN_NEXT"
                with m.Else():
                    m.d.sync += frame_bytes.eq(frame_bytes + tx_data_len)
                    m.next = "TX_READ"
            with m.State("TX_READ"):
                m.d.comb += request(rd_req, seg_addr, tx_read_len)
                with m.If(rd_req.ready):
                    m.next = "TX_MOVE"
            with m.State("TX_MOVE"):
                tail = tx_read_len[:2]
                final = (d_flags & spec.VirtqDescF.NEXT) == 0
                m.d.comb += [
                    self.tx.valid.eq(rd.valid),
                    rd.ready.eq(self.tx.ready),
                    self.tx.payload.data.eq(rd.payload.data),
                    self.tx.payload.keep.eq(Mux(rd.payload.last & (tail != 0),
                                                (Const(1, 5) << tail) - 1, 0b1111)),
                    self.tx.payload.last.eq(rd.payload.last & final),
                ]
                with m.If(rd.valid & rd.ready & rd.payload.last):
                    with m.If(rd.payload.error):
                        m.d.sync += tx_drop.eq(1)
                        m.d.sync += fail(RingError.DMA)
                        m.next = "TX_ERROR_END"
                    with m.Elif(final):
                        m.next = "TX_WAIT"
                    with m.Else():
                        m.next = "CHAIN_NEXT"
            with m.State("TX_END"):
                # the frame's last byte went out with a NEXT still to walk
                # (or was dropped): close the frame with an empty beat
                with m.If(frame_bytes == 0):
                    m.d.comb += [self.tx_empty.eq(1), self.tx_long.eq(tx_drop)]
                    m.next = "WRITE_USED_ELEM"
                with m.Else():
                    m.d.comb += [self.tx.valid.eq(1), self.tx.payload.last.eq(1)]
                    with m.If(self.tx.ready):
                        m.next = "TX_WAIT"
            with m.State("TX_WAIT"):
                with m.If(self.tx_done):
                    m.next = "WRITE_USED_ELEM"
            with m.State("TX_ERROR_END"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.last.eq(1)]
                with m.If(self.tx.ready):
                    m.next = "ERROR"

            # Step 4, receive (section 5.1.6.3): header, then the frame, across
            # the chain's buffers; the first must hold the whole header.
            with m.State("RX_PLAN"):
                first = chain_len == 1
                m.d.sync += [
                    rx_room.eq(Mux(first, d_len - spec.VIRTIO_NET_HDR_SIZE, d_len)),
                    seg_addr.eq(Mux(first, d_addr + spec.VIRTIO_NET_HDR_SIZE, d_addr)),
                    rx_left.eq(rx_len - rx_pos),
                ]
                with m.If(first & (d_len < spec.VIRTIO_NET_HDR_SIZE)):
                    m.next = "RX_TOO_BIG"              # not even the header fits
                with m.Else():
                    m.next = "RX_FIT"
            with m.State("RX_FIT"):
                m.d.sync += seg_len.eq(Mux(rx_room < rx_left, rx_room, rx_left))
                with m.If(chain_len == 1):
                    m.next = "RX_WRITE_HDR"
                with m.Else():
                    m.next = "RX_WRITE_SEG"
            with m.State("RX_WRITE_HDR"):
                m.d.comb += request(wr_req, d_addr, spec.VIRTIO_NET_HDR_SIZE)
                with m.If(wr_req.ready):
                    m.d.sync += dw.eq(0)
                    m.next = "RX_HDR_DATA"
            with m.State("RX_HDR_DATA"):
                # virtio_net_hdr v1: no flags, no GSO, num_buffers = 1 (section 5.1.6.4)
                m.d.comb += [wr.valid.eq(1), wr.payload.last.eq(dw == _HDR_DWORDS - 1)]
                with m.If(dw == _HDR_DWORDS - 1):
                    m.d.comb += wr.payload.data.eq(1 << 16)
                with m.If(wr.ready):
                    m.d.sync += dw.eq(dw + 1)
                    with m.If(dw == _HDR_DWORDS - 1):
                        m.next = "RX_WRITE_SEG"
            with m.State("RX_WRITE_SEG"):
                with m.If(seg_len == 0):
                    m.next = "RX_SEG_DONE"
                with m.Else():
                    m.d.comb += request(wr_req, seg_addr, seg_len)
                    with m.If(wr_req.ready):
                        m.next = "RX_SEG_REQ"
            with m.State("RX_SEG_REQ"):
                m.d.comb += [self.rx_seg_req.valid.eq(1),
                             self.rx_seg_req.payload.offset.eq(rx_pos),
                             self.rx_seg_req.payload.length.eq(seg_len)]
                with m.If(self.rx_seg_req.ready):
                    m.next = "RX_SEG_DATA"
            with m.State("RX_SEG_DATA"):
                m.d.comb += [wr.valid.eq(self.rx_seg.valid),
                             self.rx_seg.ready.eq(wr.ready),
                             wr.payload.data.eq(self.rx_seg.payload.data),
                             wr.payload.last.eq(self.rx_seg.payload.last)]
                with m.If(self.rx_seg.valid & wr.ready & self.rx_seg.payload.last):
                    m.d.sync += rx_pos.eq(rx_pos + seg_len)
                    m.next = "RX_SEG_DONE"
            with m.State("RX_SEG_DONE"):
                with m.If(rx_pos == rx_len):
                    m.d.sync += used_len.eq(rx_len + spec.VIRTIO_NET_HDR_SIZE)
                    m.d.comb += self.rx_delivered.eq(1)
                    m.next = "RX_POP"
                with m.Elif((d_flags & spec.VirtqDescF.NEXT) != 0):
                    m.next = "CHAIN_NEXT"
                with m.Else():
                    m.next = "RX_TOO_BIG"
            with m.State("RX_TOO_BIG"):
                # the chain ends before the frame does: the frame is dropped
                # and the buffer returned empty (Linux counts a length error)
                m.d.sync += used_len.eq(0)
                m.d.comb += self.rx_too_big.eq(1)
                m.next = "RX_POP"
            with m.State("RX_POP"):
                m.d.comb += self.rx_pop.eq(1)
                m.next = "WRITE_USED_ELEM"

            with m.State("CHAIN_NEXT"):
                with m.If((d_flags & spec.VirtqDescF.NEXT) != 0):
                    m.d.sync += desc_idx.eq(d_next)
                    m.next = "READ_DESC"
                with m.Elif(is_rx):
                    m.next = "RX_TOO_BIG"
                with m.Else():
                    m.next = "TX_END"

            # Step 5: the used ring (section 2.7.8).
            with m.State("WRITE_USED_ELEM"):
                elem = cfg.device + spec.VIRTQ_RING_HEADER_SIZE + ((cur_used & size_mask) << 3)
                m.d.comb += request(wr_req, elem, spec.VIRTQ_USED_ELEM_SIZE)
                with m.If(wr_req.ready):
                    m.d.sync += dw.eq(0)
                    m.next = "USED_ELEM_DATA"
            with m.State("USED_ELEM_DATA"):
                m.d.comb += [wr.valid.eq(1),
                             wr.payload.data.eq(Mux(dw == 0, head_id, used_len)),
                             wr.payload.last.eq(dw == 1)]
                with m.If(wr.ready):
                    m.d.sync += dw.eq(dw + 1)
                    with m.If(dw == 1):
                        m.d.comb += self.tx_sent.eq(~is_rx)
                        m.d.sync += [cur_used.eq(cur_used + 1), cur_last.eq(cur_last + 1),
                                     used_idx[q].eq(cur_used + 1), last_avail[q].eq(cur_last + 1),
                                     taken.eq(taken + 1)]
                        m.next = "AFTER_CHAIN"
            with m.State("AFTER_CHAIN"):
                # keep going within the batch: RX while frames wait, TX while
                # none does (a waiting RX frame ends a TX batch: the RX frame
                # buffer is small and the wire does not wait)
                with m.If((taken != cached) & (is_rx == self.rx_valid)):
                    m.next = "NEXT_HEAD"
                with m.Else():
                    m.next = "WRITE_USED_IDX"
            with m.State("WRITE_USED_IDX"):
                m.d.comb += request(wr_req, cfg.device + spec.VIRTQ_IDX_OFFSET, _IDX_BYTES)
                with m.If(wr_req.ready):
                    m.next = "USED_IDX_DATA"
            with m.State("USED_IDX_DATA"):
                m.d.comb += [wr.valid.eq(1), wr.payload.data.eq(cur_used), wr.payload.last.eq(1)]
                with m.If(wr.ready):
                    m.next = "NOTIFY"

            # Step 6: the interrupt, after the writes have left (section 2.7.7).
            with m.State("NOTIFY"):
                # the used ring writes leave before anything else does
                with m.If(self.dma_wr.busy):
                    pass
                with m.Elif(self.event_idx):
                    # look at this queue again later: with EVENT_IDX the
                    # driver may have added buffers without notifying
                    m.d.comb += recheck.eq(1 << q)
                    m.next = "READ_USED_EVENT"
                with m.Else():
                    with m.If(~cur_no_interrupt):
                        m.d.comb += notify_now.eq(1 << q)
                    m.next = "IDLE"
            # Section 2.7.10: used_event, read after the used idx write (a
            # read does not pass a posted write).
            with m.State("READ_USED_EVENT"):
                used_event_addr = cfg.driver + spec.VIRTQ_RING_HEADER_SIZE + (cfg.size << 1)
                m.d.comb += request(rd_req, used_event_addr, spec.VIRTQ_EVENT_SIZE)
                with m.If(rd_req.ready):
                    m.next = "GET_USED_EVENT"
            with m.State("GET_USED_EVENT"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.sync += used_event.eq(rd.payload.data[:16])
                    with m.If(rd.payload.error):
                        m.d.sync += fail(RingError.DMA)
                        m.next = "ERROR"
                    with m.Else():
                        m.next = "EVENT_CHECK"
            with m.State("EVENT_CHECK"):
                new, old = cur_used, cur_signalled
                m.d.sync += [need.eq(((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)),
                             signalled[q].eq(new)]
                m.next = "EVENT_NOTIFY"
            with m.State("EVENT_NOTIFY"):
                with m.If(~self.dma_wr.busy):
                    with m.If(need):
                        m.d.comb += notify_now.eq(1 << q)
                    m.next = "IDLE"

            with m.State("DONE"):
                m.next = "IDLE"

            with m.State("ERROR"):
                m.d.comb += self.needs_reset.eq(1)
                m.next = "HALTED"
            with m.State("HALTED"):
                # nothing more is served until the driver resets the device;
                # stray read data is taken so the DMA reader never blocks
                m.d.comb += rd.ready.eq(1)
        return m
