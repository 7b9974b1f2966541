"""The device side of every virtqueue: a TX and an RX ring engine working
side by side, sharing the DMA requester.

    doorbell ──┬──> RingEngine(TX) ──> tx (frames to the TX frame buffer)
               │        │            ──> cmd (control commands), <── ack
               │        │ dma_rd, dma_wr
               └──> RingEngine(RX) <── rx_seg (the RX frame buffer's head frame)
                        │ dma_rd, dma_wr
    TX engine's reads ──> dma_rd_tx      RX engine's reads ──> dma_rd
    all writes ──> DmaWriteMux ──> dma_wr

Separate engines, so that transmit and receive overlap (a TX buffer read and
an RX buffer write use the link's two directions at once). Each reads
through a DMA reader of its own: a reader returns data in request order, and
an RX descriptor read queued behind a 1518-byte TX buffer read would wait for
all of it. The TX engine also serves the controlq (its buffers are read like
a transmitq's): a control command takes its turn among the transmitqs and
holds them while the executor acts on it, which is rare and short (Linux
waits for each command's answer anyway). An error in either engine stops
both (the device needs a reset, section 2.1.1).
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ..lib.bytes import ByteStreamSignature
from ..net.packet_fifo import Segment
from ..pcie.dma import DmaReadSignature, DmaWriteSignature
from ..pcie.dma_mux import DmaWriteMux
from .common_cfg import QueueSettingsSignature
from .ring_engine import RingEngine, RingError, Role

__all__ = ["Virtqueues", "ROLES"]

ROLES = (Role.TX, Role.RX)        # the engines, in the order of `settings`

_CLIENT = {Role.TX: 0, Role.RX: 1}     # DMA write mux inputs
CTRL_MAX_COMMAND = 256     # bytes of class, command and data the TX engine passes on


class Virtqueues(wiring.Component):
    """Ports: as `RingEngine`'s, both roles' together, except:
        settings:   Out(QueueSettingsSignature).array(len(ROLES)), the engines'
                    settings reads, in `ROLES` order.
        mrg_rxbuf:  In(1), VIRTIO_NET_F_MRG_RXBUF negotiated.
        tx_queue:   Out(8), the queue the TX pulses (tx_sent, tx_empty) refer to.
        rx_queue:   Out(8), the queue the RX pulses (rx_delivered, rx_too_big) refer to.
        cmd, cmd_bad, ack: the controlq's command stream and answer (TX engine).
        error:      Out(RingError), an engine's error (TX's, else RX's).
        dma_rd_tx:  Out(DmaReadSignature()), the TX engine's reads (its own reader).
        dma_rd:     Out(DmaReadSignature()), the RX engine's reads.
    """

    def __init__(self, *, num_queues, max_tx_frame, initial_idx=0):
        self.num_queues = num_queues
        self.tx_engine = RingEngine(role=Role.TX, num_queues=num_queues,
                                    max_tx_frame=max_tx_frame, max_command=CTRL_MAX_COMMAND,
                                    initial_idx=initial_idx)
        self.rx_engine = RingEngine(role=Role.RX, num_queues=num_queues, initial_idx=initial_idx)
        super().__init__({
            "queue_enable": In(num_queues),
            "settings": Out(QueueSettingsSignature(num_queues)).array(len(ROLES)),
            "run": In(1),
            "event_idx": In(1),
            "indirect": In(1),
            "mrg_rxbuf": In(1),
            "doorbell": In(stream.Signature(16)),
            "used_notify": Out(num_queues),
            "needs_reset": Out(1),
            "error": Out(RingError),
            "dma_rd_tx": Out(DmaReadSignature()),
            "dma_rd": Out(DmaReadSignature()),
            "dma_wr": Out(DmaWriteSignature()),
            "tx": Out(ByteStreamSignature),
            "tx_abort": Out(1),
            "tx_done": In(1),
            "tx_space": In(16),
            "tx_sent": Out(1),
            "tx_empty": Out(1),
            "tx_long": Out(1),
            "tx_queue": Out(8),
            "rx_valid": In(1),
            "rx_length": In(16),
            "rx_pair": In(8),
            "rx_seg_req": Out(stream.Signature(Segment)),
            "rx_seg": In(ByteStreamSignature),
            "rx_pop": Out(1),
            "rx_delivered": Out(1),
            "rx_too_big": Out(1),
            "rx_queue": Out(8),
            "cmd": Out(ByteStreamSignature),
            "cmd_bad": Out(1),
            "ack": In(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx_engine = tx = self.tx_engine
        m.submodules.rx_engine = rx = self.rx_engine
        engines = {Role.TX: tx, Role.RX: rx}
        m.submodules.write_mux = write_mux = DmaWriteMux(len(_CLIENT))

        stopped = Signal()                 # an engine failed: neither starts more work
        any_failed = tx.needs_reset | rx.needs_reset
        with m.If(any_failed):
            m.d.sync += stopped.eq(1)

        for role, engine in engines.items():
            reads = self.dma_rd_tx if role is Role.TX else self.dma_rd
            connect(m, engine.dma_rd, wiring.flipped(reads))
            connect(m, engine.dma_wr, write_mux.clients[_CLIENT[role]])
            m.d.comb += [
                engine.run.eq(self.run & ~stopped),
                engine.event_idx.eq(self.event_idx),
                engine.indirect.eq(self.indirect),
                engine.doorbell.valid.eq(self.doorbell.valid),
                engine.doorbell.payload.eq(self.doorbell.payload),
            ]
            m.d.comb += engine.queue_enable.eq(self.queue_enable)
            connect(m, engine.settings, wiring.flipped(self.settings[ROLES.index(role)]))
        m.d.comb += self.doorbell.ready.eq(1)        # both engines always take a doorbell
        connect(m, write_mux.out, wiring.flipped(self.dma_wr))

        m.d.comb += [
            self.used_notify.eq(tx.used_notify | rx.used_notify),
            self.needs_reset.eq(any_failed),
            self.error.eq(Mux(tx.error != RingError.NONE, tx.error, rx.error)),
            self.cmd_bad.eq(tx.cmd_bad),
            # transmit
            tx.tx_done.eq(self.tx_done),
            tx.tx_space.eq(self.tx_space),
            self.tx_abort.eq(tx.tx_abort),
            self.tx_sent.eq(tx.tx_sent),
            self.tx_empty.eq(tx.tx_empty),
            self.tx_long.eq(tx.tx_long),
            self.tx_queue.eq(tx.queue),
            # receive
            rx.mrg_rxbuf.eq(self.mrg_rxbuf),
            rx.rx_valid.eq(self.rx_valid),
            rx.rx_length.eq(self.rx_length),
            rx.rx_pair.eq(self.rx_pair),
            self.rx_pop.eq(rx.rx_pop),
            self.rx_delivered.eq(rx.rx_delivered),
            self.rx_too_big.eq(rx.rx_too_big),
            self.rx_queue.eq(rx.queue),
        ]
        connect(m, tx.tx, wiring.flipped(self.tx))
        connect(m, tx.cmd, wiring.flipped(self.cmd))
        connect(m, wiring.flipped(self.ack), tx.ack)
        connect(m, rx.rx_seg_req, wiring.flipped(self.rx_seg_req))
        connect(m, wiring.flipped(self.rx_seg), rx.rx_seg)
        return m
