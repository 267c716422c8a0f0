//! Scale-out over Redis Streams: a front end enqueues cascade attempts for
//! remote tiers, workers on other machines answer them.
//!
//! - [`wire`]: key layout, job, events, result and heartbeat formats (pure).
//! - [`conn`]: URLs, connections with bounded timeouts, backoff.
//! - [`front`]: the front end's side of one attempt, and the worker list.
//! - [`worker`]: the worker loop: read, reclaim, run, store once, acknowledge.
//!
//! Per tier one stream `xnai:jobs:<tier>` with the consumer group `workers`.
//! A job is one attempt of the cascade; escalation, confidence and the
//! structured result stay with the front end, so a remote tier's
//! low-confidence answer escalates exactly like a local one.

pub mod conn;
pub mod front;
pub mod wire;
pub mod worker;

pub use conn::Redis;
pub use front::{RemoteError, RemoteStatus, RemoteTiers};
pub use worker::{Worker, WorkerOptions};
