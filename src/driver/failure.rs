//! The driver's failures as the crate's [`Error`]; here rather than in error.rs, so that the
//! error type needs nothing of the driver.

use super::DriverError;
use crate::error::Error;

impl Error {
    /// `operation` failed in the driver; a broker's reply code, if it sent one, decides the
    /// error's kind.
    pub(crate) fn broker(operation: impl Into<String>, source: DriverError) -> Error {
        let code = match &source {
            DriverError::ServerClosedChannel { code, .. }
            | DriverError::ServerClosedConnection { code, .. } => Some(*code),
            _ => None,
        };
        Error::Broker {
            operation: operation.into(),
            reason: source.to_string(),
            code,
            source: Some(Box::new(source)),
        }
    }
}

impl Error {
    /// The driver's connection died under the operation (its I/O thread ended): the
    /// connection's close then tells why.
    pub(crate) fn is_connection_gone(&self) -> bool {
        let source = std::error::Error::source(self);
        source
            .and_then(|source| source.downcast_ref::<DriverError>())
            .is_some_and(|driver| matches!(driver, DriverError::EventLoopDropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::error::Error as _;

    #[test]
    fn driver_errors_are_kept_as_the_source() {
        let error = Error::broker("declaring queue q", DriverError::EventLoopDropped);
        assert!(error.source().is_some());
        assert!(error.to_string().contains("declaring queue q"));
    }

    #[test]
    fn only_a_dead_io_loop_is_a_connection_gone() {
        assert!(Error::broker("consuming q", DriverError::EventLoopDropped).is_connection_gone());
        let refused = DriverError::ServerClosedChannel {
            channel_id: 1,
            code: 403,
            message: "no read permission".into(),
        };
        assert!(!Error::broker("consuming q", refused).is_connection_gone());
        assert!(!Error::ConnectionLost("cut".into()).is_connection_gone());
    }

    #[test]
    fn the_kind_comes_from_the_brokers_reply_code() {
        let refused = Error::broker(
            "declaring queue q",
            DriverError::ServerClosedChannel {
                channel_id: 1,
                code: 403,
                message: "no configure permission".into(),
            },
        );
        assert_eq!(refused.kind(), ErrorKind::AccessRefused);
        assert!(refused.is_access_refused() && !refused.is_retryable());
    }
}
