//! What every request handler shares.

use store::Storage;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;

#[derive(Debug)]
pub struct AppState {
    pub storage: Storage,
    pub tokens: Tokens,
    /// Cancelled on shutdown: long-running responses (watches) end with it so connections
    /// can drain.
    pub shutdown: CancellationToken,
}
