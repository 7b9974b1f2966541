"""A split-virtqueue ring engine (virtio 1.2 section 2.7), with the
virtio-net transmit or receive steps (section 5.1.6) it drives.

An engine has a role: a TX engine serves every transmitq and the controlq
(the queues whose buffers the device reads), an RX engine every receiveq
(`Virtqueues` runs one of each side by side, sharing the DMA requester). It
serves one descriptor chain at a time. For a queue it visits:

1. reads the avail ring's flags and idx (one 4-byte read);
2. reads up to ``BATCH`` avail ring entries at once into a head cache;
3. walks each head's chain. Descriptors come from a descriptor cache: a
   miss reads the aligned block of ``DESC_BLOCK`` descriptors holding the
   one missed, in one read (a driver's free list hands out neighbouring
   descriptors, in either order: Linux's is last freed, first used, so in
   steady state heads go down; one read usually serves several chains).
   Each is checked (index below the queue
   size, no longer chain than the queue, NEXT target in range, length
   non-zero, the right direction; an INDIRECT table only when negotiated,
   not nested, not with NEXT, a whole number of descriptors);
4. moves the data: TX gathers the buffers (less the 12-byte virtio_net_hdr)
   into the TX frame buffer, reading a buffer only once the frame buffer has
   room for it (a read never waits on the wire inside the DMA reader, where
   it would hold up the RX engine's reads); RX writes the header and the
   RX frame buffer's head frame across the chain's buffers, the header and
   the first bytes in one write. With VIRTIO_NET_F_MRG_RXBUF a frame runs on
   into the next heads' chains (section 5.1.6.4); a controlq chain's
   read-only buffers go to the command executor, which answers into its
   first device-writable one (section 5.1.6.5);
5. writes the used element, and after the batch the used idx;
6. raises the queue's interrupt unless VIRTQ_AVAIL_F_NO_INTERRUPT is set
   (with VIRTIO_F_EVENT_IDX: when used_event says so), once its writes have
   left (MSI-X must not pass them);
7. with VIRTIO_F_EVENT_IDX, before leaving a queue with nothing to do,
   writes avail_event = the next entry it will read, and looks once more.

The descriptor cache only holds descriptors read after the last avail idx
read: a driver writes a chain's descriptors before it publishes the chain,
so every chain published by then is read whole, and nothing a later avail
idx makes available is ever served from an older copy.

Mergeable receive buffers never hand the driver a truncated frame: the used
elements of a frame's buffers are written past the used idx and only
published together. When the buffers run out mid-frame, the engine takes
them back (its last_avail and cache rewind to the frame's first head; the
bytes already written sit in buffers the driver still owns) and waits for a
doorbell; a frame larger than the whole ring is dropped the same way.

A bad descriptor, an avail idx that moved more than the queue size, or a
failed DMA read stops the engine and reports ``needs_reset``: the transport
sets DEVICE_NEEDS_RESET and raises the config interrupt (section 2.1.1); the
engine then stays halted until the driver resets the device.
"""
import enum

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.block_ram import BLOCK_RAM_ATTRS, BlockRamReadPort
from ..lib.bytes import ByteStreamSignature
from ..net.packet_fifo import Segment
from ..pcie.dma import DmaReadSignature, DmaWriteSignature
from .common_cfg import QueueSettings, QueueSettingsSignature

__all__ = ["BATCH", "DESC_BLOCK", "VISIT_CHAINS", "RingEngine", "RingError", "Role"]

_BATCH_BITS = 4
BATCH = 1 << _BATCH_BITS   # avail entries fetched per read (16: 32 bytes)
# A TX visit of a queue ends after this many chains when another transmitq
# has work (the rest of its batch waits in its head cache for the next
# visit), so queues take turns in steps of 8 frames, not BATCH
VISIT_CHAINS = 8
_DESC_BLOCK_BITS = 3       # blocks are aligned to DESC_BLOCK entries
DESC_BLOCK = 1 << _DESC_BLOCK_BITS   # descriptors fetched per read (the descriptor cache)
_IDX_BITS = 16             # virtqueue indexes are 16-bit and wrap (section 2.7)
_IDX_MASK = (1 << _IDX_BITS) - 1
# an offset into a ring: up to a 65536-entry descriptor table (16 bytes each)
_ADDR_OFFSET_BITS = _IDX_BITS + 4 + 1
_DESC_DWORDS = spec.VIRTQ_DESC_SIZE // 4
_HDR_DWORDS = spec.VIRTIO_NET_HDR_SIZE // 4
_IDX_BYTES = 2             # a le16 ring index (used idx)
_NUM_BUFFERS_BYTES = 2     # virtio_net_hdr.num_buffers, le16


def _read_into(rd, out, length, last):
    """Statements passing a DMA read of ``length`` bytes (source-aligned DWs)
    on to byte stream ``out``: the final DW keeps only the read's last bytes;
    ``last`` marks the beat that ends the stream's packet."""
    tail = length[:2]
    return [
        out.valid.eq(rd.valid),
        rd.ready.eq(out.ready),
        out.payload.data.eq(rd.payload.data),
        out.payload.keep.eq(Mux(rd.payload.last & (tail != 0), (Const(1, 5) << tail) - 1, 0b1111)),
        out.payload.last.eq(last),
    ]


class Role(enum.Enum):
    """Which queues an engine serves (section 5.1.2: 2n receiveq, 2n+1
    transmitq, the last the controlq): TX the transmitqs and the controlq
    (its last slot), RX the receiveqs."""
    TX = "tx"
    RX = "rx"

    def queues(self, num_queues):
        """The virtqueue indexes served."""
        parity = 1 if self is Role.TX else 0
        data = [q for q in range(num_queues - 1) if q % 2 == parity]
        return data + [num_queues - 1] if self is Role.TX else data


class _ReadAhead(enum.Enum):
    """The TX read-ahead's steps (see `RingEngine.elaborate`)."""
    IDLE = 0
    LOOKUP = 1           # the next chain's head: in the descriptor cache?
    READ = 2             # its descriptor read from the cache
    LOOKUP_NEXT = 3      # after a header-only descriptor, the frame's one
    READ_NEXT = 4
    REQUEST = 5          # the frame's read, once allowed


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
    """Ports (both roles):
        queue_enable: In(num_queues), each queue's queue_enable (common config).
        settings:    Out(QueueSettingsSignature(num_queues)), reads the settings
                     of the queue visited from the common config's table.
        run:         In(1), DRIVER_OK set and the device not halted.
        event_idx:   In(1), VIRTIO_F_EVENT_IDX negotiated (section 2.7.7.2, 2.7.10).
        indirect:    In(1), VIRTIO_F_INDIRECT_DESC negotiated (section 2.7.5.3).
        doorbell:    In(stream.Signature(16)), notified queue indexes (others' ignored).
        used_notify: Out(num_queues), pulse: raise the queue's interrupt.
        needs_reset: Out(1), pulse: the engine stopped on an error.
        error:       Out(RingError), the first error seen since reset.
        dma_rd:      Out(DmaReadSignature()), reads of rings and TX buffers.
        dma_wr:      Out(DmaWriteSignature()), writes of used rings and RX buffers.
        queue:       Out(8), the queue the pulses below refer to.
    TX role, the transmitqs:
        tx:          Out(ByteStreamSignature), TX frames, bytes at any lane
                     (to a BytePacker, then the TX PacketFifo).
        tx_abort:    Out(1), the frame on ``tx`` is to be dropped (held until
                     ``tx_done``).
        tx_done:     In(1), pulse: the TX frame buffer committed or dropped it.
        tx_space:    In(16), bytes the TX frame buffer can take now.
        tx_sent:     Out(1), pulse: a TX chain was returned ...
        tx_empty:    Out(1), ... with no frame byte in it (dropped here) ...
        tx_long:     Out(1), ... because the frame was too long (else: too short).
    RX role:
        mrg_rxbuf:   In(1), VIRTIO_NET_F_MRG_RXBUF negotiated.
        rx_valid, rx_length: In, the RX frame buffer's head frame.
        rx_pair:     In(8), the queue pair whose receiveq takes it (steering).
        rx_seg_req:  Out(stream.Signature(Segment)), read a byte range of it.
        rx_seg:      In(ByteStreamSignature), those bytes, packed (a BytePacker).
        rx_pop:      Out(1), pulse: the head frame is delivered (or dropped).
        rx_delivered, rx_too_big: Out(1), pulses: how the head frame went.
    TX role, the controlq (section 5.1.6.5: class, command, data in
    read-only buffers, then the ack byte in a device-writable one):
        cmd:         Out(ByteStreamSignature), the command's bytes (class,
                     command, data) at any lane, ended by an empty beat with
                     ``last`` (to a BytePacker, then the command executor).
        cmd_bad:     Out(1), from that last beat until ``ack``: the chain was
                     malformed (a read-only buffer after a writable one, or
                     longer than a command can be): answer ERR.
        ack:         In(stream.Signature(8)), the executor's answer
                     (VIRTIO_NET_OK or VIRTIO_NET_ERR) once it has acted.

    Parameters:
        max_tx_frame: TX role, the longest frame (bytes after the header).
        max_command:  TX role, the longest command (class, command, data).
    """

    def __init__(self, *, role, num_queues, max_tx_frame=0, max_command=0, initial_idx=0):
        if num_queues < 3:
            raise ValueError(f"{num_queues} virtqueues: a device has at least a receiveq, "
                             "a transmitq and the controlq")
        self.role = Role(role)
        self.num_queues = num_queues
        self.served = self.role.queues(num_queues)
        self.max_tx_frame = max_tx_frame
        self.max_command = max_command
        self.initial_idx = initial_idx
        ports = {
            "queue_enable": In(num_queues),
            "settings": Out(QueueSettingsSignature(num_queues)),
            "run": In(1),
            "event_idx": In(1),
            "indirect": In(1),
            "doorbell": In(stream.Signature(16)),
            "used_notify": Out(num_queues),
            "needs_reset": Out(1),
            "error": Out(RingError),
            "dma_rd": Out(DmaReadSignature()),
            "dma_wr": Out(DmaWriteSignature()),
            "queue": Out(8),
        }
        if self.role is Role.TX:
            ports.update({
                "tx": Out(ByteStreamSignature),
                "tx_abort": Out(1),
                "tx_done": In(1),
                "tx_space": In(16),
                "tx_sent": Out(1),
                "tx_empty": Out(1),
                "tx_long": Out(1),
                "cmd": Out(ByteStreamSignature),
                "cmd_bad": Out(1),
                "ack": In(stream.Signature(8)),
            })
        else:
            ports.update({
                "mrg_rxbuf": In(1),
                "rx_valid": In(1),
                "rx_length": In(16),
                "rx_pair": In(8),
                "rx_seg_req": Out(stream.Signature(Segment)),
                "rx_seg": In(ByteStreamSignature),
                "rx_pop": Out(1),
                "rx_delivered": Out(1),
                "rx_too_big": Out(1),
            })
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        is_rx = self.role is Role.RX
        served = self.served
        slots = len(served)

        # --- per-queue state (one slot per served queue) -------------------
        # Indexes start at 0 (section 2.7); `initial_idx` is a test-only
        # build parameter that starts them elsewhere, to reach the 16-bit
        # wrap-around quickly (the driver has the matching option).
        #
        # A visit works on registers (`cur_last`, `cached`, ...: the fields
        # of `state` below) loaded from the queue's row of a block RAM table
        # in VISIT, and writes them back to that row in every other cycle, so
        # a row is at most a cycle behind its registers and is whole again
        # the cycle after the visit. No per-queue registers and no
        # multiplexers over them, and no LUTs for the table. After a
        # (device) reset, CLEAR writes the registers' reset values to every
        # row. Whether a queue has work is a bit per queue (`work`), updated
        # with its row, for the scheduler, which looks at every queue at once.
        starved = Array(Signal(name=f"starved{q}") for q in served)  # RX: waits for a doorbell
        kick = Signal(slots)
        enables = Signal(slots)              # queue_enable of the served queues
        m.d.comb += enables.eq(Cat(self.queue_enable[q] for q in served))
        cfg = Signal(QueueSettings)          # the served queue's settings, registered

        m.d.comb += self.doorbell.ready.eq(1)
        kick_set = Signal(slots)
        kick_clr = Signal(slots)
        with m.If(self.doorbell.valid):
            for s, q in enumerate(served):
                with m.If(self.doorbell.payload == q):
                    m.d.comb += kick_set[s].eq(1)
        recheck = Signal(slots)              # the engine asks itself to look again
        m.d.sync += kick.eq((kick & ~kick_clr) | kick_set | recheck)
        for s in range(slots):
            with m.If(kick_set[s]):
                m.d.sync += starved[s].eq(0)

        slot = Signal(range(max(slots, 2)))  # the queue being served ...
        q = Signal(8)                        # ... and its virtqueue index
        m.d.comb += [self.queue.eq(q), self.settings.queue.eq(q)]
        notify_now = Signal()
        notify_r = Signal(self.num_queues)
        m.d.sync += notify_r.eq(0)
        with m.If(notify_now):
            m.d.sync += notify_r.eq(1 << q)
        m.d.comb += self.used_notify.eq(notify_r)      # registered: a pulse a cycle later

        size_mask = Signal(_IDX_BITS)
        m.d.comb += size_mask.eq(cfg.size - 1)
        # The served queue's state, in registers for the visit (see above).
        idx_init = self.initial_idx
        cur_last = Signal(_IDX_BITS, init=idx_init)      # last_avail_idx: entries taken
        cur_used = Signal(_IDX_BITS, init=idx_init)      # used idx
        cur_seen = Signal(_IDX_BITS, init=idx_init)      # avail idx as last read
        cur_signalled = Signal(_IDX_BITS, init=idx_init) # used idx at the last interrupt decision
        cur_no_interrupt = Signal()                      # VIRTQ_AVAIL_F_NO_INTERRUPT as last read
        visit_used = Signal(_IDX_BITS)       # used idx when the visit began
        visit_chains = Signal(range(VISIT_CHAINS + 1))   # chains served this visit
        last_of_visit = Signal()             # the chain under way ends the visit

        def enabled(index):
            bit = enables[index] if isinstance(index, int) else enables.bit_select(index, 1)
            return self.run & bit

        # --- head cache -----------------------------------------------------
        # One per queue, so that a visit finds its queue's heads and
        # descriptors even after visits to other queues (RX frames of
        # different flows alternate between receiveqs). The visit works on
        # registered copies of its queue's entries (`cached`, `taken`, ...),
        # loaded on the visit and written back as they change.
        slot_bits = max(1, (slots - 1).bit_length())
        m.submodules.head_ram = head_ram = Memory(shape=2 * _IDX_BITS, depth=slots * BATCH // 2,
                                                  init=[])
        head_wr = head_ram.write_port()
        head_rd = head_ram.read_port(domain="comb")
        cached = Signal(range(BATCH + 1))    # heads in the cache
        taken = Signal(range(BATCH + 1))     # heads consumed from it
        cache_valid = Signal()

        # --- descriptor cache -----------------------------------------------
        # Block RAM (a DW column per DP16KD on ECP5): read synchronously, so a
        # descriptor's address goes out the cycle before its data is used.
        # The address is the chain's `desc_idx` unless the read-ahead asks.
        # A read in the cycle of a write to the same entry is undefined
        # (`BLOCK_RAM_ATTRS`) and never used: the engine fills a block in
        # GET_DESC_BLOCK and reads it from the cycle after (READ_DESC), and
        # read-ahead looks only while no block is being filled.
        m.submodules.desc_ram = desc_ram = Memory(shape=spec.VIRTQ_DESC_SIZE * 8,
                                                  depth=DESC_BLOCK * slots, init=[],
                                                  attrs=BLOCK_RAM_ATTRS)
        desc_wr = desc_ram.write_port(granularity=32)
        desc_rd = BlockRamReadPort(m, desc_ram, name="desc_rd")
        dc_valid = Signal()
        dc_first = Signal(_IDX_BITS)         # index of the first cached descriptor
        dc_count = Signal(range(DESC_BLOCK + 1))
        dc_table = Signal()                  # the entries are of the indirect table being walked

        # --- the queues' state table (see above) ------------------------------
        state = {"last": cur_last, "seen": cur_seen, "used": cur_used,
                 "signalled": cur_signalled, "no_interrupt": cur_no_interrupt,
                 "cached": cached, "taken": taken, "cache_valid": cache_valid,
                 "dc_valid": dc_valid, "dc_first": dc_first, "dc_count": dc_count,
                 "dc_table": dc_table}
        row_layout = data.StructLayout({name: len(reg) for name, reg in state.items()})
        # Block RAM, read as a visit is chosen (the row of `target_r`, ready in
        # VISIT). A read in the cycle of a write to the same row is undefined
        # (`BLOCK_RAM_ATTRS`) and never used: the only write then is the
        # write-back of `slot`, and a visit to `slot` again keeps the
        # registers, which hold its state already (`same_queue`).
        m.submodules.state_ram = state_ram = Memory(shape=row_layout, depth=slots, init=[],
                                                    attrs=BLOCK_RAM_ATTRS)
        state_wr = state_ram.write_port()
        state_rd = BlockRamReadPort(m, state_ram, name="state_rd")
        saved = state_rd.data                # the row of the queue chosen for the visit
        same_queue = Signal()                # the visit is to the queue of the registers
        work = Signal(slots)                 # per queue: avail entries not taken yet

        # --- chain state ----------------------------------------------------
        desc_idx = Signal(_IDX_BITS)
        in_table = Signal()                  # walking an indirect table
        table_addr = Signal(64)
        table_len = Signal(_IDX_BITS + 1)    # its descriptors
        table_size = Signal(_IDX_BITS + 1)   # descriptors in the table being walked
        m.d.comb += table_size.eq(Mux(in_table, table_len, cfg.size))
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
        dw = Signal(range(DESC_BLOCK * _DESC_DWORDS + 1))   # DWs received of the current read
        has_next = (d_flags & spec.VirtqDescF.NEXT) != 0
        # mergeable receive: buffers (heads) the current frame has filled so far
        frame_bufs = Signal(_IDX_BITS)
        next_avail = Signal(_IDX_BITS)       # the next avail entry to take
        m.d.comb += next_avail.eq(cur_last + frame_bufs)
        num_buffers = Signal(_IDX_BITS)

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

        # --- addresses: one adder for the engine ----------------------------
        # Every ring address is a ring's base plus an offset below 2**20
        # (section 2.7: at most 65536 descriptors of 16 bytes, used elements
        # of 8), and a buffer's segment is a descriptor's address plus a few
        # header bytes. Only one state at a time needs such a sum, so the
        # states share one 64-bit adder (its operands chosen by the state)
        # instead of an adder each.
        addr_base = Signal(64)
        addr_offset = Signal(_ADDR_OFFSET_BITS)
        addr_sum = Signal(64)
        m.d.comb += addr_sum.eq(addr_base + addr_offset)

        def address(base, offset):
            """`base + offset` from the shared adder, in the current state."""
            m.d.comb += [addr_base.eq(base), addr_offset.eq(offset)]
            return addr_sum

        # --- scheduler ------------------------------------------------------
        def has_work(index):
            return work.bit_select(index, 1)

        if is_rx:
            # the receiveq the head frame is steered to; a starved queue waits
            # for a doorbell
            target = Signal.like(slot)
            m.d.comb += target.eq(Mux(self.rx_pair < slots, self.rx_pair, 0))
            pending = (self.rx_valid & enabled(target)
                       & (kick.bit_select(target, 1) | (~starved[target] & has_work(target))))
        else:
            # round robin: the scan stops at a queue with work and moves past
            # it once its visit starts, so every queue with work gets a visit
            # (of up to BATCH chains) before any gets a second
            target = Signal.like(slot)
            advance = Signal()
            with m.If(advance):
                m.d.sync += target.eq(Mux(target == slots - 1, 0, target + 1))
            pending = enabled(target) & (kick.bit_select(target, 1) | has_work(target))
        # The scheduler decides on last cycle's view (registered: timing); a
        # stale "pending" costs at most one visit that finds nothing.
        pending_r = Signal()
        target_r = Signal.like(slot)
        m.d.sync += [pending_r.eq(pending), target_r.eq(target)]
        if self.role is Role.TX and slots > 1:
            # a visit is cut at VISIT_CHAINS only when another transmitq
            # waits (registered; a stale view at worst cuts a visit early)
            waiting = Signal(slots)
            m.d.comb += waiting.eq(Cat(enabled(index) & (kick[index] | has_work(index))
                                       for index in range(slots)))
            others_waiting = Signal()
            m.d.sync += others_waiting.eq((waiting & ~(1 << slot)) != 0)
            m.d.comb += last_of_visit.eq((visit_chains == VISIT_CHAINS - 1) & others_waiting)

        new_avail = Signal(_IDX_BITS)
        to_wrap = Signal(_IDX_BITS + 1)
        m.d.comb += to_wrap.eq(cfg.size - (next_avail & size_mask))
        fetch = Signal(range(BATCH + 1))     # avail entries the next read takes
        entries_addr = Signal(64)            # and where they are
        nothing_done = cur_used == visit_used

        # TX gather (and control commands, gathered the same way)
        if not is_rx:
            ctrl_slot = slots - 1            # the controlq's (Role.queues)
            on_ctrl = Signal()               # the visit is the controlq's
            hdr_left = Signal(range(spec.VIRTIO_NET_HDR_SIZE + 1))
            frame_bytes = Signal(17)
            tx_drop = Signal()
            tx_read_len = Signal(16)
            tx_data_len = Signal(33)         # this buffer's frame bytes, before the length check
            seg_addr = Signal(64)
            # read-ahead: the next chain's buffer read, issued while this
            # chain's data still arrives (see after the FSM)
            pf_stage = Signal(_ReadAhead)
            pf_valid = Signal()              # issued: its data follows this chain's
            pf_head = Signal(_IDX_BITS)
            pf_addr = Signal(64)
            pf_len = Signal(16)
            pf_d_addr = Signal(64)
            pf_d_len = Signal(32)
            pf_d_flags = Signal(16)
            pf_skip = Signal(range(spec.VIRTIO_NET_HDR_SIZE + 1))   # header bytes in the buffer
            # the controlq's chain
            ack_addr = Signal(64)            # the first writable buffer: the ack goes there
            have_ack = Signal()
            cmd_bad = Signal()
            ack_value = Signal(8)
            m.d.comb += [self.cmd_bad.eq(cmd_bad),   # held until the answer
                         self.tx_abort.eq(tx_drop)]
        # RX scatter
        else:
            rx_len = Signal(16)
            rx_pos = Signal(16)              # frame bytes written so far
            seg_addr = Signal(64)
            seg_len = Signal(16)
            rx_room = Signal(33)             # bytes this buffer can take
            rx_left = Signal(16)             # frame bytes still to write
            rx_first = Signal()              # this buffer starts the frame: the header goes first
            frame_done = Signal()            # the used element being written ends the frame
            first_addr = Signal(64)          # the frame's header, for num_buffers
            starve = Signal()                # leaving because buffers ran out mid-frame
            rewind_drop = Signal()

        def new_chain():
            chain = [chain_len.eq(0), in_table.eq(0), used_len.eq(0)]
            if is_rx:
                with m.If(frame_bufs == 0):
                    m.d.sync += [rx_pos.eq(0), rx_len.eq(self.rx_length)]
            else:
                chain += [hdr_left.eq(spec.VIRTIO_NET_HDR_SIZE), frame_bytes.eq(0), tx_drop.eq(0),
                          have_ack.eq(0), cmd_bad.eq(0)]
            return chain

        def go_by_queue(*, rx, tx, ctrl):
            """Next, the step of the chain's kind: a receiveq's, a transmitq's
            or the controlq's."""
            if is_rx:
                m.next = rx
            else:
                m.next = tx
                with m.If(on_ctrl):
                    m.next = ctrl

        write_back = Signal()                # the registers belong to `slot`
        m.d.comb += [state_rd.addr.eq(target_r), state_wr.addr.eq(slot), state_wr.en.eq(write_back),
                     state_wr.data.eq(Cat(state[name] for name in row_layout.members))]
        with m.If(write_back):
            # cached heads not taken yet are avail entries past `last`, so
            # `seen != last` covers them too
            m.d.sync += work.bit_select(slot, 1).eq(cur_seen != cur_last)

        with m.FSM(name="ring", init="CLEAR") as ring_fsm:
            with m.State("CLEAR"):
                # after a reset: every row gets the registers' reset values
                m.d.sync += slot.eq(slot + 1)
                with m.If(slot == slots - 1):
                    m.next = "IDLE"
            with m.State("IDLE"):
                if not is_rx:
                    # the scan moves while the queue it shows has no work, and
                    # past the queue a visit starts on
                    m.d.comb += advance.eq(~pending_r | (target == target_r))
                with m.If(pending_r):
                    m.d.sync += [slot.eq(target_r), frame_bufs.eq(0), same_queue.eq(target_r == slot)]
                    if not is_rx:
                        m.d.sync += on_ctrl.eq(target_r == ctrl_slot)
                    with m.Switch(target_r):
                        for s, index in enumerate(served):
                            with m.Case(s):
                                m.d.sync += q.eq(index)
                    m.next = "VISIT"

            with m.State("VISIT"):
                m.d.sync += visit_chains.eq(0)
                with m.If(~same_queue):
                    m.d.sync += [reg.eq(saved[name]) for name, reg in state.items()]
                m.d.sync += visit_used.eq(Mux(same_queue, cur_used, saved.used))
                m.next = "VISIT_PLAN"
            with m.State("VISIT_PLAN"):
                # the settings of `q` (set with `slot`), read the cycle after
                m.d.sync += cfg.eq(self.settings.settings)
                with m.If(cache_valid & (taken != cached)):
                    m.next = "NEXT_HEAD"
                with m.Elif(cur_seen != cur_last):
                    m.next = "PLAN_AVAIL_RING"
                with m.Else():
                    m.next = "READ_AVAIL_IDX"

            # Step 1: flags and idx of the avail ring (section 2.7.6).
            with m.State("READ_AVAIL_IDX"):
                m.d.comb += request(rd_req, address(cfg.driver, 0), spec.VIRTQ_RING_HEADER_SIZE)
                with m.If(rd_req.ready):
                    # descriptors read from now on are at least as new as
                    # every chain this read can make available
                    m.d.sync += dc_valid.eq(0)
                    m.d.comb += kick_clr.eq(1 << slot)
                    m.next = "GET_AVAIL_IDX"
            with m.State("GET_AVAIL_IDX"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.comb += new_avail.eq(rd.payload.data[16:])
                    m.d.sync += [cur_seen.eq(new_avail),
                                 cur_no_interrupt.eq(rd.payload.data[0])]
                    with m.If(rd.payload.error):
                        m.d.sync += fail(RingError.DMA)
                        m.next = "ERROR"
                    with m.Elif(((new_avail - cur_last) & _IDX_MASK) > cfg.size):
                        m.d.sync += fail(RingError.AVAIL_IDX)
                        m.next = "ERROR"
                    with m.Elif((new_avail == next_avail) & self.event_idx & ~event_armed):
                        m.next = "WRITE_AVAIL_EVENT"
                    with m.Elif(new_avail == next_avail):
                        m.d.sync += event_armed.eq(0)
                        m.next = "NOTHING_NEW"
                    with m.Else():
                        m.d.sync += event_armed.eq(0)
                        m.next = "PLAN_AVAIL_RING"
            with m.State("NOTHING_NEW"):
                if is_rx:
                    with m.If(frame_bufs != 0):
                        m.next = "RX_REWIND"         # out of buffers mid-frame
                        m.d.sync += [starve.eq(1), rewind_drop.eq(0)]
                    with m.Elif(nothing_done):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "WRITE_USED_IDX"
                else:
                    m.next = "DONE"

            # Section 2.7.10: ask for a notification once the driver makes
            # entry `next_avail` available, then look again (it may already be).
            with m.State("WRITE_AVAIL_EVENT"):
                avail_event = address(cfg.device, spec.VIRTQ_RING_HEADER_SIZE + (cfg.size << 3))
                m.d.comb += request(wr_req, avail_event, spec.VIRTQ_EVENT_SIZE)
                with m.If(wr_req.ready):
                    m.next = "AVAIL_EVENT_DATA"
            with m.State("AVAIL_EVENT_DATA"):
                m.d.comb += [wr.valid.eq(1), wr.payload.data.eq(next_avail), wr.payload.last.eq(1)]
                with m.If(wr.ready):
                    m.d.sync += event_armed.eq(1)
                    m.next = "AVAIL_EVENT_SENT"
            with m.State("AVAIL_EVENT_SENT"):
                # the re-read must not pass the avail_event write (two arbiter inputs)
                with m.If(~self.dma_wr.busy):
                    m.next = "READ_AVAIL_IDX"

            # Step 2: a batch of avail entries, not past the ring's end.
            # (planned a cycle ahead, registered: the count and the address
            # are the sync domain's longest paths otherwise)
            with m.State("PLAN_AVAIL_RING"):
                pending_entries = (cur_seen - next_avail)[:_IDX_BITS]
                capped = Mux(pending_entries < BATCH, pending_entries, BATCH)
                m.d.sync += [
                    fetch.eq(Mux(to_wrap < capped, to_wrap, capped)),
                    entries_addr.eq(address(cfg.driver, spec.VIRTQ_RING_HEADER_SIZE
                                                        + ((next_avail & size_mask) << 1))),
                ]
                m.next = "READ_AVAIL_RING"
            with m.State("READ_AVAIL_RING"):
                m.d.comb += request(rd_req, entries_addr, fetch << 1)
                with m.If(rd_req.ready):
                    m.d.sync += [cached.eq(fetch), taken.eq(0), cache_valid.eq(1), dw.eq(0)]
                    m.next = "GET_AVAIL_RING"
            with m.State("GET_AVAIL_RING"):
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.comb += [head_wr.en.eq(1),
                                 head_wr.addr.eq(Cat(dw[:_BATCH_BITS - 1], slot[:slot_bits])),
                                 head_wr.data.eq(rd.payload.data)]
                    m.d.sync += dw.eq(dw + 1)
                    with m.If(rd.payload.last):
                        with m.If(rd.payload.error):
                            m.d.sync += [fail(RingError.DMA), cache_valid.eq(0)]
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "NEXT_HEAD"

            # Step 3: the next chain.
            with m.State("NEXT_HEAD"):
                m.d.comb += head_rd.addr.eq(Cat(taken[1:_BATCH_BITS], slot[:slot_bits]))
                head = head_rd.data.word_select(taken[0], _IDX_BITS)
                m.d.sync += [head_id.eq(head), desc_idx.eq(head)] + new_chain()
                with m.If(head >= cfg.size):
                    m.d.sync += fail(RingError.HEAD_RANGE)
                    m.next = "ERROR"
                with m.Else():
                    m.next = "READ_DESC"

            with m.State("READ_DESC"):
                with m.If(dc_valid & (dc_table == in_table) & (desc_idx >= dc_first)
                          & (desc_idx - dc_first < dc_count)):
                    m.next = "CACHED_DESC"
                with m.Else():
                    m.next = "READ_DESC_BLOCK"
            with m.State("READ_DESC_BLOCK"):
                table = Mux(in_table, table_addr, cfg.desc)
                first = Cat(Const(0, _DESC_BLOCK_BITS), desc_idx[_DESC_BLOCK_BITS:])
                left = table_size - first
                count = Signal(range(DESC_BLOCK + 1))
                m.d.comb += count.eq(Mux(left < DESC_BLOCK, left, DESC_BLOCK))
                m.d.comb += request(rd_req, address(table, first << 4), count << 4)
                with m.If(rd_req.ready):
                    m.d.sync += [dw.eq(0), dc_valid.eq(0), dc_first.eq(first),
                                 dc_count.eq(count), dc_table.eq(in_table)]
                    m.next = "GET_DESC_BLOCK"
            with m.State("GET_DESC_BLOCK"):
                m.d.comb += [rd.ready.eq(1),
                             desc_wr.addr.eq(Cat(dw[2:5], slot[:slot_bits])),
                             desc_wr.data.eq(rd.payload.data.replicate(_DESC_DWORDS))]
                with m.If(rd.valid):
                    m.d.comb += desc_wr.en.eq(1 << dw[:2])
                    m.d.sync += dw.eq(dw + 1)
                    with m.If(rd.payload.last):
                        with m.If(rd.payload.error):
                            m.d.sync += fail(RingError.DMA)
                            m.next = "ERROR"
                        with m.Else():
                            # (READ_DESC again: the block's last DW is
                            # written this cycle, readable from the next)
                            m.d.sync += dc_valid.eq(1)
                            m.next = "READ_DESC"
            with m.State("CACHED_DESC"):
                # desc_idx's descriptor, addressed in READ_DESC
                desc = desc_rd.data
                m.d.sync += [d_addr.eq(desc[0:64]), d_len.eq(desc[64:96]),
                             d_flags.eq(desc[96:112]), d_next.eq(desc[112:128]),
                             chain_len.eq(chain_len + 1)]
                m.next = "CHECK_DESC"

            # Section 2.7.5.x: what a device may assume of a descriptor, checked.
            with m.State("CHECK_DESC"):
                writable = (d_flags & spec.VirtqDescF.WRITE) != 0
                is_indirect = (d_flags & spec.VirtqDescF.INDIRECT) != 0
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
                        m.d.sync += [in_table.eq(1), table_addr.eq(d_addr), dc_valid.eq(0),
                                     table_len.eq(d_len[4:]), desc_idx.eq(0), chain_len.eq(0)]
                        m.next = "READ_DESC"
                with m.Elif(has_next & (d_next >= table_size)):
                    m.d.sync += fail(RingError.HEAD_RANGE)
                    m.next = "ERROR"
                with m.Elif(~writable if is_rx else writable & ~on_ctrl):
                    m.d.sync += fail(RingError.DIRECTION)
                    m.next = "ERROR"
                with m.Else():
                    go_by_queue(rx="RX_PLAN", tx="TX_PLAN", ctrl="CTRL_PLAN")

            with m.State("CHAIN_NEXT"):
                with m.If(has_next):
                    m.d.sync += desc_idx.eq(d_next)
                    m.next = "READ_DESC"
                with m.Else():
                    go_by_queue(rx="RX_CHAIN_END", tx="TX_END", ctrl="CTRL_END")

            if is_rx:
                self._receive(m, locals())
            else:
                self._transmit(m, locals())
                self._control(m, locals())

            # Step 5: the used ring (section 2.7.8). A mergeable frame's
            # elements go past the used idx, published with the frame's last.
            with m.State("WRITE_USED_ELEM"):
                pos = cur_used + frame_bufs
                elem = address(cfg.device, spec.VIRTQ_RING_HEADER_SIZE + ((pos & size_mask) << 3))
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
                        m.d.sync += taken.eq(taken + 1)
                        bufs = frame_bufs + 1
                        publish = [cur_used.eq(cur_used + bufs), cur_last.eq(cur_last + bufs),
                                   frame_bufs.eq(0), num_buffers.eq(bufs)]
                        if is_rx:
                            with m.If(~frame_done):
                                m.d.sync += frame_bufs.eq(frame_bufs + 1)
                                m.next = "RX_NEXT_BUFFER"
                            with m.Elif(frame_bufs != 0):
                                m.d.sync += publish
                                m.next = "WRITE_NUM_BUFFERS"
                            with m.Else():
                                m.d.sync += publish
                                m.next = "AFTER_CHAIN"
                        else:
                            m.d.sync += publish
                            m.d.comb += self.tx_sent.eq(~on_ctrl)
                            m.next = "AFTER_CHAIN"
            with m.State("AFTER_CHAIN"):
                # keep going within the batch (RX: while the next frame is
                # for this queue)
                more = (taken != cached) & cache_valid
                m.d.sync += visit_chains.eq(visit_chains + 1)
                more &= ~last_of_visit
                with m.If((more & self.rx_valid & (target == slot)) if is_rx else more):
                    m.next = "NEXT_HEAD"
                with m.Else():
                    m.next = "WRITE_USED_IDX"
            with m.State("WRITE_USED_IDX"):
                m.d.comb += request(wr_req, address(cfg.device, spec.VIRTQ_IDX_OFFSET), _IDX_BYTES)
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
                    m.d.comb += recheck.eq(1 << slot)
                    m.next = "READ_USED_EVENT"
                with m.Else():
                    with m.If(~cur_no_interrupt):
                        m.d.comb += notify_now.eq(1)
                    m.next = "IDLE"
            # Section 2.7.10: used_event, read after the used idx write (a
            # read does not pass a posted write).
            with m.State("READ_USED_EVENT"):
                used_event_addr = address(cfg.driver, spec.VIRTQ_RING_HEADER_SIZE + (cfg.size << 1))
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
                m.d.sync += [need.eq(((new - used_event - 1) & _IDX_MASK) < ((new - old) & _IDX_MASK)),
                             cur_signalled.eq(new)]
                m.next = "EVENT_NOTIFY"
            with m.State("EVENT_NOTIFY"):
                with m.If(~self.dma_wr.busy):
                    with m.If(need):
                        m.d.comb += notify_now.eq(1)
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
        # not in VISIT: the registers are loading the row of the new `slot`
        m.d.comb += write_back.eq(~ring_fsm.ongoing("VISIT"))
        desc_at = desc_rd.addr
        m.d.comb += desc_at.eq(Cat(desc_idx[:_DESC_BLOCK_BITS], slot[:slot_bits]))

        if not is_rx:
            # Read-ahead (TX): while the last buffer of chain k streams in,
            # look up chain k+1 in the head and descriptor caches; if it is a
            # single plain buffer (no NEXT, WRITE or INDIRECT) longer than the
            # header, or the 12-byte header then one plain buffer (Linux's two
            # layouts), no longer than a frame, and the frame buffer has room
            # for both, issue its frame read now. Its data comes right after
            # chain k's, so the read's latency overlaps chain k's tail, commit
            # and used element. TX_READ then takes it instead of asking
            # again. Any other chain shape is read as usual. (Long frames
            # too: the TX engine has a DMA reader of its own, and read
            # requests go first on the link, so an early 1518-byte read does
            # not hold up the RX engine's descriptor reads.)
            streaming = ring_fsm.ongoing("TX_MOVE") | ring_fsm.ongoing("TX_WAIT")
            may_request = (streaming | ring_fsm.ongoing("WRITE_USED_ELEM")
                           | ring_fsm.ongoing("USED_ELEM_DATA"))
            following = Signal(range(BATCH + 1))
            m.d.comb += following.eq(taken + 1)
            offset = Signal(_IDX_BITS)
            m.d.comb += offset.eq(pf_head - dc_first)
            pf_data_len = Signal(33)
            m.d.comb += pf_data_len.eq(pf_d_len - pf_skip)
            plain = ((pf_d_flags == 0) & (pf_d_len > pf_skip)
                     & (pf_data_len <= self.max_tx_frame))
            cached_desc = desc_rd.data
            header_only = ((cached_desc[96:112] == spec.VirtqDescF.NEXT)
                           & (cached_desc[64:96] == spec.VIRTIO_NET_HDR_SIZE))
            cached_hit = (pf_head < cfg.size) & (pf_head >= dc_first) & (offset < dc_count)
            load = [pf_d_addr.eq(cached_desc[0:64]), pf_d_len.eq(cached_desc[64:96]),
                    pf_d_flags.eq(cached_desc[96:112])]
            R = _ReadAhead
            with m.Switch(pf_stage):
                with m.Case(R.IDLE):
                    with m.If(ring_fsm.ongoing("TX_MOVE") & ~has_next & ~pf_valid & ~in_table
                              & cache_valid & (following < cached) & ~last_of_visit):
                        m.d.comb += head_rd.addr.eq(Cat(following[1:_BATCH_BITS], slot[:slot_bits]))
                        m.d.sync += [pf_head.eq(head_rd.data.word_select(following[0], _IDX_BITS)),
                                     pf_stage.eq(R.LOOKUP)]
                with m.Case(R.LOOKUP, R.LOOKUP_NEXT):
                    # in the descriptor cache (a plain one, for the head): read it
                    with m.If(streaming & cached_hit & ((pf_stage == R.LOOKUP_NEXT) | dc_valid & ~dc_table)):
                        m.d.comb += desc_at.eq(Cat(pf_head[:_DESC_BLOCK_BITS], slot[:slot_bits]))
                        m.d.sync += pf_stage.eq(Mux(pf_stage == R.LOOKUP, R.READ, R.READ_NEXT))
                    with m.Else():
                        m.d.sync += pf_stage.eq(R.IDLE)      # not in the caches: read as usual
                with m.Case(R.READ):
                    with m.If(streaming):
                        m.d.sync += load
                        with m.If(header_only):
                            # the frame is in the next descriptor
                            m.d.sync += [pf_head.eq(cached_desc[112:128]), pf_skip.eq(0),
                                         pf_stage.eq(R.LOOKUP_NEXT)]
                        with m.Else():
                            m.d.sync += [pf_skip.eq(spec.VIRTIO_NET_HDR_SIZE), pf_stage.eq(R.REQUEST)]
                    with m.Else():
                        m.d.sync += pf_stage.eq(R.IDLE)
                with m.Case(R.READ_NEXT):
                    with m.If(streaming):
                        m.d.sync += load + [pf_stage.eq(R.REQUEST)]
                    with m.Else():
                        m.d.sync += pf_stage.eq(R.IDLE)
                with m.Case(R.REQUEST):
                    with m.If(~may_request | ~plain):
                        m.d.sync += pf_stage.eq(R.IDLE)
                    with m.Elif(self.tx_space >= tx_read_len + pf_data_len):
                        m.d.comb += request(rd_req, pf_d_addr + pf_skip, pf_data_len)
                        with m.If(rd_req.ready):
                            m.d.sync += [pf_valid.eq(1), pf_stage.eq(R.IDLE),
                                         pf_addr.eq(pf_d_addr + pf_skip), pf_len.eq(pf_data_len)]
        return m

    # Step 4, transmit (section 5.1.6.2): the header is skipped (no offload
    # is offered), the rest is the frame.
    def _transmit(self, m, v):
        rd_req, rd, request = v["rd_req"], v["rd"], v["request"]
        d_len, d_addr, hdr_left = v["d_len"], v["d_addr"], v["hdr_left"]
        tx_data_len, tx_read_len, tx_drop = v["tx_data_len"], v["tx_read_len"], v["tx_drop"]
        frame_bytes, seg_addr, has_next = v["frame_bytes"], v["seg_addr"], v["has_next"]
        fail, address = v["fail"], v["address"]

        with m.State("TX_PLAN"):
            skip = Signal(32)
            m.d.comb += skip.eq(Mux(d_len < hdr_left, d_len, hdr_left))
            data_len = Signal(33)
            m.d.comb += data_len.eq(d_len - skip)
            m.d.sync += [hdr_left.eq(hdr_left - skip), seg_addr.eq(address(d_addr, skip)),
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
            pf_valid, pf_addr, pf_len = v["pf_valid"], v["pf_addr"], v["pf_len"]
            with m.If(pf_valid):
                # read ahead (see RingEngine.elaborate): its data is next
                m.d.sync += pf_valid.eq(0)
                with m.If((pf_addr == seg_addr) & (pf_len == tx_read_len)):
                    m.next = "TX_MOVE"
                with m.Else():                       # cannot happen: the caches hold still
                    m.d.sync += fail(RingError.DMA)
                    m.next = "ERROR"
            # only once the frame buffer can take the whole read
            with m.Elif(self.tx_space >= tx_read_len):
                m.d.comb += request(rd_req, seg_addr, tx_read_len)
                with m.If(rd_req.ready):
                    m.next = "TX_MOVE"
        with m.State("TX_MOVE"):
            final = ~has_next
            m.d.comb += _read_into(rd, self.tx, tx_read_len, rd.payload.last & final)
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

    # Step 4, receive (sections 5.1.6.3, 5.1.6.4): header, then the frame,
    # across the chain's buffers; the first must hold the whole header.
    def _receive(self, m, v):
        wr_req, wr, request = v["wr_req"], v["wr"], v["request"]
        d_len, d_addr, chain_len = v["d_len"], v["d_addr"], v["chain_len"]
        rx_room, rx_left, rx_len, rx_pos = v["rx_room"], v["rx_left"], v["rx_len"], v["rx_pos"]
        seg_addr, seg_len, rx_first, dw = v["seg_addr"], v["seg_len"], v["rx_first"], v["dw"]
        used_len, frame_done, first_addr = v["used_len"], v["frame_done"], v["first_addr"]
        frame_bufs, num_buffers, cfg = v["frame_bufs"], v["num_buffers"], v["cfg"]
        taken, cached, cache_valid = v["taken"], v["cached"], v["cache_valid"]
        cur_seen, next_avail, starved, slot = v["cur_seen"], v["next_avail"], v["starved"], v["slot"]
        starve, rewind_drop, nothing_done = v["starve"], v["rewind_drop"], v["nothing_done"]
        address = v["address"]

        with m.State("RX_PLAN"):
            first = (chain_len == 1) & (frame_bufs == 0)
            m.d.sync += [
                rx_first.eq(first),
                rx_room.eq(Mux(first, d_len - spec.VIRTIO_NET_HDR_SIZE, d_len)),
                seg_addr.eq(address(d_addr, Mux(first, spec.VIRTIO_NET_HDR_SIZE, 0))),
                rx_left.eq(rx_len - rx_pos),
            ]
            with m.If(first):
                m.d.sync += first_addr.eq(d_addr)
            with m.If(first & (d_len < spec.VIRTIO_NET_HDR_SIZE)):
                m.next = "RX_TOO_BIG"              # not even the header fits
            with m.Else():
                m.next = "RX_FIT"
        with m.State("RX_FIT"):
            m.d.sync += seg_len.eq(Mux(rx_room < rx_left, rx_room, rx_left))
            m.next = "RX_WRITE"
        with m.State("RX_WRITE"):
            # one write: the header (first buffer only), then the segment
            hdr = Mux(rx_first, spec.VIRTIO_NET_HDR_SIZE, 0)
            with m.If(rx_first | (seg_len != 0)):
                m.d.comb += request(wr_req, Mux(rx_first, d_addr, seg_addr), seg_len + hdr)
                with m.If(wr_req.ready):
                    m.d.sync += [dw.eq(0), used_len.eq(used_len + seg_len + hdr)]
                    with m.If(rx_first):
                        m.next = "RX_HDR_DATA"
                    with m.Else():
                        m.next = "RX_SEG_REQ"
            with m.Else():
                m.next = "RX_SEG_DONE"
        with m.State("RX_HDR_DATA"):
            # virtio_net_hdr v1: no flags, no GSO, num_buffers = 1 (section
            # 5.1.6.4; a mergeable frame's count is written when it is known)
            last_dw = dw == _HDR_DWORDS - 1
            m.d.comb += [wr.valid.eq(1), wr.payload.last.eq(last_dw & (seg_len == 0))]
            with m.If(last_dw):
                m.d.comb += wr.payload.data.eq(1 << 16)
            with m.If(wr.ready):
                m.d.sync += dw.eq(dw + 1)
                with m.If(last_dw):
                    with m.If(seg_len == 0):
                        m.next = "RX_SEG_DONE"
                    with m.Else():
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
                m.d.sync += frame_done.eq(1)
                m.d.comb += self.rx_delivered.eq(1)
                m.next = "RX_POP"
            with m.Else():
                m.next = "CHAIN_NEXT"
        with m.State("RX_CHAIN_END"):
            # the chain ends before the frame does
            with m.If(self.mrg_rxbuf):
                m.d.sync += frame_done.eq(0)        # on into the next buffer
                m.next = "WRITE_USED_ELEM"
            with m.Else():
                m.next = "RX_TOO_BIG"
        with m.State("RX_TOO_BIG"):
            # the frame is dropped and the buffer returned empty (Linux
            # counts a length error)
            m.d.sync += [used_len.eq(0), frame_done.eq(1)]
            m.d.comb += self.rx_too_big.eq(1)
            m.next = "RX_POP"
        with m.State("RX_POP"):
            m.d.comb += self.rx_pop.eq(1)
            m.next = "WRITE_USED_ELEM"

        # Mergeable buffers (section 5.1.6.4): the next head carries on the frame.
        with m.State("RX_NEXT_BUFFER"):
            with m.If(frame_bufs == cfg.size):
                # the whole ring would not hold it: drop it, take nothing
                m.d.sync += [starve.eq(0), rewind_drop.eq(1)]
                m.next = "RX_REWIND"
            with m.Elif((taken != cached) & cache_valid):
                m.next = "NEXT_HEAD"
            with m.Elif(cur_seen != next_avail):
                m.next = "PLAN_AVAIL_RING"
            with m.Else():
                m.next = "READ_AVAIL_IDX"
        with m.State("RX_REWIND"):
            # the frame's buffers go back to where they were (never published)
            m.d.sync += [frame_bufs.eq(0), cache_valid.eq(0)]
            with m.If(starve):
                m.d.sync += starved[slot].eq(1)
            with m.If(rewind_drop):
                m.d.comb += [self.rx_too_big.eq(1), self.rx_pop.eq(1)]
            with m.If(nothing_done):
                m.next = "DONE"
            with m.Else():
                m.next = "WRITE_USED_IDX"
        with m.State("WRITE_NUM_BUFFERS"):
            m.d.comb += request(wr_req, address(first_addr, spec.VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET),
                                _NUM_BUFFERS_BYTES)
            with m.If(wr_req.ready):
                m.next = "NUM_BUFFERS_DATA"
        with m.State("NUM_BUFFERS_DATA"):
            m.d.comb += [wr.valid.eq(1), wr.payload.data.eq(num_buffers), wr.payload.last.eq(1)]
            with m.If(wr.ready):
                m.next = "AFTER_CHAIN"

    # The control virtqueue (section 5.1.6.5): the read-only buffers carry
    # the command, the first device-writable one takes the ack byte.
    def _control(self, m, v):
        rd_req, rd, request = v["rd_req"], v["rd"], v["request"]
        wr_req, wr = v["wr_req"], v["wr"]
        d_len, d_addr, d_flags = v["d_len"], v["d_addr"], v["d_flags"]
        frame_bytes, used_len = v["frame_bytes"], v["used_len"]
        ack_addr, have_ack, cmd_bad, ack_value = (v["ack_addr"], v["have_ack"], v["cmd_bad"],
                                                  v["ack_value"])
        tx_read_len, fail = v["tx_read_len"], v["fail"]

        with m.State("CTRL_PLAN"):
            writable = (d_flags & spec.VirtqDescF.WRITE) != 0
            m.d.sync += tx_read_len.eq(d_len)
            with m.If(writable):
                with m.If(~have_ack):
                    m.d.sync += [ack_addr.eq(d_addr), have_ack.eq(1)]
                m.next = "CHAIN_NEXT"
            with m.Elif(have_ack | (frame_bytes + d_len > self.max_command)):
                # out after in (section 5.1.6.5: out, then in), or longer
                # than any command: answered with ERR, the bytes not read
                m.d.sync += cmd_bad.eq(1)
                m.next = "CHAIN_NEXT"
            with m.Else():
                m.d.sync += frame_bytes.eq(frame_bytes + d_len)
                m.next = "CTRL_READ"
        with m.State("CTRL_READ"):
            m.d.comb += request(rd_req, d_addr, tx_read_len)
            with m.If(rd_req.ready):
                m.next = "CTRL_MOVE"
        with m.State("CTRL_MOVE"):
            m.d.comb += _read_into(rd, self.cmd, tx_read_len, 0)
            with m.If(rd.valid & rd.ready & rd.payload.last):
                with m.If(rd.payload.error):
                    m.d.sync += [fail(RingError.DMA), cmd_bad.eq(1)]
                    m.next = "CTRL_ERROR_END"
                with m.Else():
                    m.next = "CHAIN_NEXT"
        with m.State("CTRL_END"):
            with m.If(frame_bytes == 0):
                # nothing to execute: no class, no command
                m.d.sync += ack_value.eq(spec.VIRTIO_NET_ERR)
                m.next = "CTRL_ACK"
            with m.Else():
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.last.eq(1)]
                with m.If(self.cmd.ready):
                    m.next = "CTRL_WAIT"
        with m.State("CTRL_WAIT"):
            m.d.comb += self.ack.ready.eq(1)
            with m.If(self.ack.valid):
                m.d.sync += ack_value.eq(self.ack.payload)
                m.next = "CTRL_ACK"
        with m.State("CTRL_ACK"):
            with m.If(have_ack):
                m.d.comb += request(wr_req, ack_addr, spec.VIRTIO_NET_CTRL_ACK_SIZE)
                with m.If(wr_req.ready):
                    m.d.sync += used_len.eq(spec.VIRTIO_NET_CTRL_ACK_SIZE)
                    m.next = "CTRL_ACK_DATA"
            with m.Else():
                # no writable buffer: nowhere to answer; returned with len 0
                m.d.sync += used_len.eq(0)
                m.next = "WRITE_USED_ELEM"
        with m.State("CTRL_ACK_DATA"):
            m.d.comb += [wr.valid.eq(1), wr.payload.data.eq(ack_value), wr.payload.last.eq(1)]
            with m.If(wr.ready):
                m.next = "WRITE_USED_ELEM"
        with m.State("CTRL_ERROR_END"):
            m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.last.eq(1)]
            with m.If(self.cmd.ready):
                m.next = "CTRL_ERROR_WAIT"
        with m.State("CTRL_ERROR_WAIT"):
            m.d.comb += self.ack.ready.eq(1)
            with m.If(self.ack.valid):
                m.next = "ERROR"
