//! Connections to Redis: parsed URLs shown without passwords, bounded
//! connect and response times, and the backoff between reconnections.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult};
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply; blocking reads block for
/// less than this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a blocking stream read waits before its caller looks around.
pub const BLOCK_MS: usize = 500;

#[derive(Debug, thiserror::Error)]
#[error(
    "--redis {url:?} is not a Redis URL: {reason} (expected redis://[:password@]host:port[/db])"
)]
pub struct BadUrl {
    pub url: String,
    pub reason: String,
}

/// A Redis client and its URL with any password masked, for messages.
#[derive(Clone)]
pub struct Redis {
    pub client: Client,
    pub shown: String,
}

impl Redis {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`BadUrl`] naming the URL (password masked) and the reason.
    pub fn open(url: &str) -> Result<Self, BadUrl> {
        let shown = mask_password(url);
        let client = Client::open(url).map_err(|e| BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        Ok(Redis { client, shown })
    }

    /// A new multiplexed connection with bounded connect and reply times.
    ///
    /// # Errors
    ///
    /// Redis's error when it cannot be reached.
    pub async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }
}

/// `redis://user:secret@host` as `redis://user:***@host`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Exponential backoff: `min`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay before the next try.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Whether `e` means the connection is gone (reconnect) rather than a
/// command's own failure.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            mask_password("redis://:hunter2@box:6379"),
            "redis://:***@box:6379"
        );
        assert_eq!(mask_password("redis://me:pw@box/2"), "redis://me:***@box/2");
        assert_eq!(mask_password("redis://box:6379"), "redis://box:6379");
        assert_eq!(mask_password("box"), "box");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.delay().as_millis(), 100);
    }

    #[test]
    fn bad_urls_are_named() {
        let e = Redis::open("http://x").err().unwrap().to_string();
        assert!(e.contains("\"http://x\""), "{e}");
    }
}
