//! The remote: how mountd talks to a relayfile server.
pub mod error;
pub mod export;
pub mod http;
pub mod retry;
pub mod types;

pub use error::RemoteError;
pub use http::{ClientConfig, RemoteClient};
