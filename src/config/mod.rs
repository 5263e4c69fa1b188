//! Settings for clients and servers, each with documented defaults.

mod client;
mod connection;
mod server;

pub use client::{ClientConfig, ReplyMode};
pub(crate) use connection::redacted;
pub use connection::{ConnectionConfig, TlsOptions};
pub use server::{QueueType, ServerConfig};

/// The broker a fresh RabbitMQ install answers on: `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// RabbitMQ 4's default `max_message_size`: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The request queue of RabbitMQ tutorial 6: `rpc_queue`.
pub const DEFAULT_QUEUE: &str = "rpc_queue";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        for (url, shown) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://u:p%40ss@h/v?heartbeat=5",
                "amqp://u:***@h/v?heartbeat=5",
            ),
            ("amqp://user@h/", "amqp://user@h/"),
            ("amqp://h:5672/?x=a:b@c", "amqp://h:5672/?x=a:b@c"),
            ("not a url", "not a url"),
            // Found by the fuzz target connection_url: a password with an `@` of its own, and
            // its percent-encoded spelling elsewhere in the URL by chance; the URL parser
            // takes the last `@`, and so does the redaction.
            (
                "amqp://u:@gues|@h%40gues%7C/%2f",
                "amqp://u:***@h%40gues%7C/%2f",
            ),
        ] {
            assert_eq!(redacted(url), shown);
        }
        let config = ClientConfig::new("amqp://app:s3cret@broker/%2f");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn parsing_checks_the_url_at_once() {
        assert!("amqp://broker:5673/%2f".parse::<ConnectionConfig>().is_ok());
        let error = "http://broker".parse::<ConnectionConfig>().unwrap_err();
        assert!(error.is_config(), "{error}");
    }
}
