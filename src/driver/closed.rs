//! The channels the broker has closed, so that what it still sends on them never reaches
//! amiquip.
//!
//! amiquip forgets a channel as soon as it has answered the broker's `channel.close`, and any
//! later frame for that channel ends the whole connection ("received message for nonexistent
//! channel"). The broker may well send more: RabbitMQ 3.10 checks consumer timeouts on every
//! channel tick, also while the channel waits for our `close-ok`, and closes it again each time
//! (a `close-ok` delayed past one tick by a busy machine or network is enough); and what its
//! queues handed the channel before the close still goes out. So from the broker's
//! `channel.close` on, frames for that channel are dropped here, until the broker opens it
//! again for amiquip (`channel.open-ok`).

use crate::driver::handshake::METHOD_FRAME;

/// `channel.close` (class 20, method 40).
const CHANNEL_CLOSE: (u16, u16) = (20, 40);

/// `channel.open-ok` (class 20, method 11).
const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);

/// What to do with one inbound frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
}

/// Channels the broker has closed and not yet opened again.
#[derive(Debug, Default)]
pub(crate) struct ClosedChannels {
    /// Few at any time (a channel stays here only until amiquip reuses its number, which it
    /// does only once every other number is used), so a list beats a set.
    ids: Vec<u16>,
}

impl ClosedChannels {
    /// True if a frame of `kind` on `channel` is judged by its class and method ids, which
    /// follow the frame header.
    pub fn wants_method(kind: u8, channel: u16) -> bool {
        kind == METHOD_FRAME && channel != 0
    }

    /// Judges one inbound frame of `kind` on `channel`; `method` is its (class, method) ids
    /// when [`wants_method`](Self::wants_method) said so.
    pub fn judge(&mut self, kind: u8, channel: u16, method: Option<(u16, u16)>) -> Verdict {
        if channel == 0 {
            return Verdict::Pass;
        }
        let Some(at) = self.ids.iter().position(|&id| id == channel) else {
            if kind == METHOD_FRAME && method == Some(CHANNEL_CLOSE) {
                self.ids.push(channel);
            }
            return Verdict::Pass;
        };
        match method {
            Some(CHANNEL_OPEN_OK) => {
                self.ids.swap_remove(at);
                Verdict::Pass
            }
            Some(CHANNEL_CLOSE) => {
                log::info!(
                    "the broker closed channel {channel} again (RabbitMQ repeats a close until \
                     it has our close-ok): ignored, as the channel is already closed"
                );
                Verdict::Drop
            }
            _ => {
                log::debug!("a frame for channel {channel}, which the broker closed: dropped");
                Verdict::Drop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::frames::HEADER_FRAME;

    const BODY_FRAME: u8 = 3;
    const DELIVER: (u16, u16) = (60, 60);

    #[test]
    fn after_a_close_the_channel_hears_nothing_until_it_is_opened_again() {
        let mut closed = ClosedChannels::default();
        assert_eq!(
            closed.judge(METHOD_FRAME, 3, Some(CHANNEL_CLOSE)),
            Verdict::Pass
        );
        for (kind, method) in [
            (METHOD_FRAME, Some(CHANNEL_CLOSE)),
            (METHOD_FRAME, Some(DELIVER)),
            (HEADER_FRAME, None),
            (BODY_FRAME, None),
        ] {
            assert_eq!(closed.judge(kind, 3, method), Verdict::Drop, "{kind}");
        }
        assert_eq!(
            closed.judge(METHOD_FRAME, 3, Some(CHANNEL_OPEN_OK)),
            Verdict::Pass
        );
        assert_eq!(closed.judge(METHOD_FRAME, 3, Some(DELIVER)), Verdict::Pass);
        assert_eq!(
            closed.judge(METHOD_FRAME, 3, Some(CHANNEL_CLOSE)),
            Verdict::Pass,
            "the reopened channel's own close reaches amiquip"
        );
    }

    #[test]
    fn other_channels_and_the_connection_go_on_as_before() {
        let mut closed = ClosedChannels::default();
        closed.judge(METHOD_FRAME, 3, Some(CHANNEL_CLOSE));
        assert_eq!(closed.judge(METHOD_FRAME, 4, Some(DELIVER)), Verdict::Pass);
        assert_eq!(closed.judge(HEADER_FRAME, 4, None), Verdict::Pass);
        assert_eq!(closed.judge(METHOD_FRAME, 0, None), Verdict::Pass);
        assert_eq!(closed.judge(8, 0, None), Verdict::Pass);
        assert!(ClosedChannels::wants_method(METHOD_FRAME, 3));
        assert!(!ClosedChannels::wants_method(METHOD_FRAME, 0));
        assert!(!ClosedChannels::wants_method(HEADER_FRAME, 3));
    }

    #[test]
    fn an_open_ok_for_a_channel_never_closed_changes_nothing() {
        let mut closed = ClosedChannels::default();
        assert_eq!(
            closed.judge(METHOD_FRAME, 5, Some(CHANNEL_OPEN_OK)),
            Verdict::Pass
        );
        assert!(closed.ids.is_empty());
    }
}
