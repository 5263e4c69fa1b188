//! Exit codes a script can branch on (sysexits.h where one fits).

use fib_rpc::{Error, ErrorKind};

/// Everything worked.
pub const OK: u8 = 0;
/// The server refused a request (an error reply).
pub const REMOTE: u8 = 1;
/// The command line is wrong (clap's own code).
pub const USAGE: u8 = 2;
/// EX_DATAERR: a reply that the protocol does not allow (a foreign server's, say).
pub const DATA: u8 = 65;
/// EX_UNAVAILABLE: the broker cannot be reached, no server consumes, or no such queue.
pub const UNAVAILABLE: u8 = 69;
/// EX_IOERR: writing the output failed.
pub const IO: u8 = 74;
/// EX_TEMPFAIL: no answer in time (the broker blocking publishing included).
pub const TIMEOUT: u8 = 75;
/// EX_NOPERM: the broker refused the credentials or the user's permissions.
pub const NO_PERMISSION: u8 = 77;
/// EX_SOFTWARE: a failure inside fib-rpc (a thread that could not start, a panic).
pub const SOFTWARE: u8 = 70;
/// EX_CONFIG: a setting is unusable (a bad URL, zero workers, an unknown service).
pub const CONFIG: u8 = 78;
/// Interrupted (Ctrl-C or SIGTERM): 128 + SIGINT, as shells report it.
pub const INTERRUPTED: u8 = 130;

/// The exit code for an error.
pub fn code(error: &Error) -> u8 {
    match error.kind() {
        ErrorKind::Config => CONFIG,
        ErrorKind::Timeout | ErrorKind::Blocked => TIMEOUT,
        ErrorKind::Remote => REMOTE,
        ErrorKind::Protocol | ErrorKind::TooLarge => DATA,
        ErrorKind::AccessRefused => NO_PERMISSION,
        ErrorKind::Internal => SOFTWARE,
        _ => UNAVAILABLE,
    }
}

/// The worse of two exit codes, for a batch that goes on after errors: a refusal is the
/// mildest, then a timeout, a malformed reply, an unavailable service, a bad configuration.
pub fn worst(a: u8, b: u8) -> u8 {
    let rank = |code| match code {
        OK => 0,
        REMOTE => 1,
        TIMEOUT => 2,
        DATA => 3,
        UNAVAILABLE => 4,
        NO_PERMISSION => 5,
        IO => 6,
        SOFTWARE => 7,
        _ => 8,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_kind_of_failure_has_its_code() {
        assert_eq!(code(&Error::Remote("no".into())), REMOTE);
        assert_eq!(code(&Error::Config("bad url".into())), CONFIG);
        assert_eq!(code(&Error::Protocol("abc".into())), DATA);
        assert_eq!(code(&Error::ConnectionLost("gone".into())), UNAVAILABLE);
        let timeout = Error::Timeout {
            queue: "q".into(),
            timeout: Duration::from_secs(1),
            stage: fib_rpc::Stage::Reply,
        };
        assert_eq!(code(&timeout), TIMEOUT);
        let blocked = Error::Blocked {
            queue: "q".into(),
            timeout: Duration::from_secs(1),
            reason: "low on memory".into(),
        };
        assert_eq!(code(&blocked), TIMEOUT);
        let large = Error::TooLarge {
            what: "the request".into(),
            size: 2,
            limit: 1,
        };
        assert_eq!(code(&large), DATA);
        assert_eq!(code(&Error::Internal("panic".into())), SOFTWARE);
    }

    #[test]
    fn the_worst_code_of_a_batch_wins() {
        assert_eq!(worst(OK, REMOTE), REMOTE);
        assert_eq!(worst(TIMEOUT, REMOTE), TIMEOUT);
        assert_eq!(worst(REMOTE, UNAVAILABLE), UNAVAILABLE);
        assert_eq!(worst(CONFIG, DATA), CONFIG);
    }
}
