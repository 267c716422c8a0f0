//! Session bookkeeping for both HTTP transports: how many are open, when
//! each was last used, and the limit. Streamable HTTP sessions live in
//! rmcp's [`LocalSessionManager`], wrapped here by [`Sessions`] so that
//! idle ones expire and a full house is refused; the SSE transport
//! registers its sessions in the same [`Ledger`].

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::ServerSseMessage;
use rmcp::transport::streamable_http_server::{RestoreOutcome, SessionId, SessionManager};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open sessions of both transports, by id, with their last activity.
#[derive(Debug)]
pub struct Ledger {
    max: usize,
    idle: Duration,
    /// A std mutex: bookkeeping only, never held across `.await`.
    open: Mutex<HashMap<String, Instant>>,
}

/// The limit on open sessions was reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("too many open sessions: {open} of {max} (server.max_sessions); close one (DELETE /mcp with its Mcp-Session-Id, or end the SSE stream) or wait for idle ones to expire after {idle_secs} s (server.session_idle_secs)")]
pub struct Full {
    pub open: usize,
    pub max: usize,
    pub idle_secs: u64,
}

impl Ledger {
    pub fn new(max: usize, idle: Duration) -> Self {
        Ledger {
            max,
            idle,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Drops sessions idle past the limit; returns their ids.
    fn expire(&self, open: &mut HashMap<String, Instant>) -> Vec<String> {
        let idle = self.idle;
        let gone: Vec<String> = open
            .iter()
            .filter(|(_, last)| last.elapsed() > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            open.remove(id);
        }
        gone
    }

    /// Room for one more session?
    ///
    /// # Errors
    ///
    /// [`Full`] when `max` sessions are open and none has expired.
    pub fn check_room(&self) -> Result<(), Full> {
        let mut open = self.open.lock().unwrap();
        self.expire(&mut open);
        self.room(&open)
    }

    fn room(&self, open: &HashMap<String, Instant>) -> Result<(), Full> {
        if open.len() >= self.max {
            return Err(Full {
                open: open.len(),
                max: self.max,
                idle_secs: self.idle.as_secs(),
            });
        }
        Ok(())
    }

    /// Registers a new session, or fails when full. Returns the ids of
    /// sessions that expired meanwhile, for their owners to close.
    ///
    /// # Errors
    ///
    /// [`Full`], as [`Ledger::check_room`].
    pub fn open(&self, id: &str) -> Result<Vec<String>, Full> {
        let mut open = self.open.lock().unwrap();
        let expired = self.expire(&mut open);
        self.room(&open)?;
        open.insert(id.to_string(), Instant::now());
        Ok(expired)
    }

    /// Marks activity; false if the session is unknown or expired.
    pub fn touch(&self, id: &str) -> bool {
        let mut open = self.open.lock().unwrap();
        match open.get_mut(id) {
            Some(last) if last.elapsed() <= self.idle => {
                *last = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Time since the session was last used, if it is open.
    pub fn idle_for(&self, id: &str) -> Option<Duration> {
        self.open.lock().unwrap().get(id).map(|t| t.elapsed())
    }

    pub fn close(&self, id: &str) {
        self.open.lock().unwrap().remove(id);
    }

    pub fn count(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error(transparent)]
    Full(#[from] Full),
    #[error(transparent)]
    Inner(#[from] LocalSessionManagerError),
}

/// rmcp's session manager with the [`Ledger`]'s limit and idle expiry.
pub struct Sessions {
    inner: LocalSessionManager,
    ledger: Arc<Ledger>,
}

impl Sessions {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        let mut inner = LocalSessionManager::default();
        inner.session_config.keep_alive = Some(ledger.idle());
        Sessions { inner, ledger }
    }

    fn touch(&self, id: &SessionId) {
        self.ledger.touch(id);
    }
}

impl SessionManager for Sessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.ledger.check_room()?;
        let (id, transport) = self.inner.create_session().await?;
        match self.ledger.open(&id) {
            Ok(expired) => {
                for old in expired {
                    let _ = self.inner.close_session(&SessionId::from(old)).await;
                }
                Ok((id, transport))
            }
            Err(full) => {
                let _ = self.inner.close_session(&id).await;
                Err(full.into())
            }
        }
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.touch(id);
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        if self
            .ledger
            .idle_for(id)
            .is_none_or(|t| t > self.ledger.idle())
        {
            // Expired (or never ours): close it in rmcp too.
            self.ledger.close(id);
            let _ = self.inner.close_session(id).await;
            return Ok(false);
        }
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.ledger.close(id);
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.touch(id);
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.touch(id);
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.touch(id);
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.touch(id);
        Ok(self.inner.resume(id, last_event_id).await?)
    }

    async fn restore_session(
        &self,
        _id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        Ok(RestoreOutcome::NotSupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_refuses_past_the_limit_and_expires_idle_sessions() {
        let l = Ledger::new(2, Duration::from_millis(50));
        l.open("a").unwrap();
        l.open("b").unwrap();
        let full = l.open("c").unwrap_err();
        assert_eq!((full.open, full.max), (2, 2));
        assert!(full.to_string().contains("server.max_sessions"));
        l.close("a");
        l.open("c").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(!l.touch("b"), "expired sessions are not revived");
        let expired = l.open("d").unwrap();
        assert!(expired.contains(&"c".to_string()));
        assert_eq!(l.count(), 1);
    }
}
