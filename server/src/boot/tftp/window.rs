//! The sender's view of a transfer, in absolute block numbers (u64), so that the
//! 16-bit wire numbers may wrap past 65535 to 0 while the state stays unambiguous.
//! Pure: the session does the I/O.

/// What an ACK did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// The client has `n` more blocks; the next window starts after them.
    Progress(u64),
    /// An ACK for what was already acknowledged. In lockstep it is never answered
    /// with data: that is the Sorcerer's Apprentice bug (RFC 1123 4.2.3.1); only a
    /// timeout retransmits.
    Duplicate,
    /// With a window, a duplicate ACK is the client saying the window's first block
    /// was lost (RFC 7440): the window is resent at once, but once per window sent, so
    /// duplicates can never multiply the traffic.
    Resend,
    /// Not for any block in flight (stale or bogus).
    Ignored,
}

#[derive(Debug, Clone)]
pub struct Window {
    size: u64,
    /// Highest block the client acknowledged (0: none yet).
    acked: u64,
    /// Next block to send.
    next: u64,
    /// The final block, once the end of the file is known.
    last: Option<u64>,
    /// Whether a duplicate ACK may still trigger a resend of the window just sent.
    resend_armed: bool,
}

/// The 16-bit number a block carries on the wire: 65536 is sent as 0.
pub fn wire(block: u64) -> u16 {
    (block & 0xffff) as u16
}

impl Window {
    pub fn new(size: u16) -> Self {
        Self {
            size: u64::from(size.max(1)),
            acked: 0,
            next: 1,
            last: None,
            resend_armed: false,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn set_last(&mut self, last: u64) {
        self.last = Some(last);
    }

    pub fn is_done(&self) -> bool {
        self.last == Some(self.acked)
    }

    /// The next block to send now, if the window has room.
    pub fn to_send(&self) -> Option<u64> {
        let room = self.next <= self.acked + self.size;
        let exists = self.last.is_none_or(|l| self.next <= l);
        (room && exists).then_some(self.next)
    }

    pub fn mark_sent(&mut self) {
        self.next += 1;
        self.resend_armed = true;
    }

    /// RFC 7440: an ACK for any block in flight moves the window to just after it,
    /// so a partial ACK (the client saw a gap) restarts sending from the gap.
    pub fn on_ack(&mut self, block: u16) -> AckEffect {
        let in_flight = self.next - 1 - self.acked;
        let ahead = u64::from(block.wrapping_sub(wire(self.acked)));
        if ahead == 0 {
            if self.size > 1 && self.resend_armed && in_flight > 0 {
                self.resend_armed = false;
                self.next = self.acked + 1;
                AckEffect::Resend
            } else {
                AckEffect::Duplicate
            }
        } else if ahead > in_flight {
            AckEffect::Ignored
        } else {
            self.acked += ahead;
            self.next = self.acked + 1;
            AckEffect::Progress(ahead)
        }
    }

    /// No ACK in time: send the whole window again.
    pub fn on_timeout(&mut self) {
        self.next = self.acked + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_all(w: &mut Window) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(b) = w.to_send() {
            sent.push(b);
            w.mark_sent();
        }
        sent
    }

    #[test]
    fn lockstep_transfer_past_the_rollover() {
        // 70000 blocks: wire numbers go 1..=65535, 0, 1, ...
        let total = 70_000u64;
        let mut w = Window::new(1);
        w.set_last(total);
        let mut wires = Vec::new();
        while !w.is_done() {
            let sent = send_all(&mut w);
            assert_eq!(sent.len(), 1);
            let b = wire(sent[0]);
            wires.push(b);
            // A duplicate of the previous ACK changes nothing.
            assert_eq!(w.on_ack(b.wrapping_sub(1)), AckEffect::Duplicate);
            assert_eq!(w.to_send(), None);
            assert_eq!(w.on_ack(b), AckEffect::Progress(1));
        }
        assert_eq!(wires.len() as u64, total);
        assert_eq!(wires[65534], 65535);
        assert_eq!(wires[65535], 0);
        assert_eq!(wires[65536], 1);
        assert_eq!(*wires.last().unwrap(), wire(total));
    }

    #[test]
    fn windowed_transfer_across_the_rollover_with_a_gap() {
        let mut w = Window::new(8);
        w.acked = 65530;
        w.next = 65531;
        let sent = send_all(&mut w);
        assert_eq!(sent, (65531..=65538).collect::<Vec<_>>());
        let wires: Vec<u16> = sent.iter().map(|&b| wire(b)).collect();
        assert_eq!(wires, vec![65531, 65532, 65533, 65534, 65535, 0, 1, 2]);
        // The client lost wire 0 (block 65536) and acknowledges 65535.
        assert_eq!(w.on_ack(65535), AckEffect::Progress(5));
        assert_eq!(send_all(&mut w), (65536..=65543).collect::<Vec<_>>());
        // A late ACK from before is stale, one from the future bogus.
        assert_eq!(w.on_ack(65534), AckEffect::Ignored);
        assert_eq!(w.on_ack(100), AckEffect::Ignored);
        assert_eq!(w.on_ack(wire(65543)), AckEffect::Progress(8));
        assert_eq!(w.acked(), 65543);
    }

    #[test]
    fn timeout_resends_the_window_and_the_end_is_bounded() {
        let mut w = Window::new(4);
        w.set_last(6);
        assert_eq!(send_all(&mut w), vec![1, 2, 3, 4]);
        w.on_timeout();
        assert_eq!(send_all(&mut w), vec![1, 2, 3, 4]);
        assert_eq!(w.on_ack(4), AckEffect::Progress(4));
        assert_eq!(send_all(&mut w), vec![5, 6]);
        assert!(!w.is_done());
        assert_eq!(w.on_ack(6), AckEffect::Progress(2));
        assert!(w.is_done());
        assert_eq!(w.to_send(), None);
    }

    #[test]
    fn a_duplicate_ack_resends_a_window_once() {
        let mut w = Window::new(4);
        assert_eq!(send_all(&mut w), vec![1, 2, 3, 4]);
        assert_eq!(w.on_ack(4), AckEffect::Progress(4));
        assert_eq!(send_all(&mut w), vec![5, 6, 7, 8]);
        // Block 5 was lost: the client acknowledges 4 again, several times.
        assert_eq!(w.on_ack(4), AckEffect::Resend);
        assert_eq!(w.on_ack(4), AckEffect::Duplicate);
        assert_eq!(send_all(&mut w), vec![5, 6, 7, 8]);
        assert_eq!(w.on_ack(4), AckEffect::Resend);
        assert_eq!(send_all(&mut w), vec![5, 6, 7, 8]);
        assert_eq!(w.on_ack(4), AckEffect::Resend);
        assert_eq!(w.on_ack(4), AckEffect::Duplicate);
        assert_eq!(w.on_ack(4), AckEffect::Duplicate);
        // One resend for all those duplicates, then nothing until an ACK or a timeout.
        assert_eq!(send_all(&mut w), vec![5, 6, 7, 8]);
        assert!(send_all(&mut w).is_empty());
        // In lockstep a duplicate never resends.
        let mut w = Window::new(1);
        send_all(&mut w);
        assert_eq!(w.on_ack(0), AckEffect::Duplicate);
    }

    #[test]
    fn duplicate_acks_never_trigger_sends() {
        let mut w = Window::new(1);
        send_all(&mut w);
        assert_eq!(w.on_ack(1), AckEffect::Progress(1));
        assert_eq!(send_all(&mut w), vec![2]);
        for _ in 0..10 {
            assert_eq!(w.on_ack(1), AckEffect::Duplicate);
            assert!(send_all(&mut w).is_empty());
        }
    }
}
