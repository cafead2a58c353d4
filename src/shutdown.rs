//! The signals that stop a process: the first SIGINT or SIGTERM starts a graceful stop,
//! a second one asks to exit at once.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM listeners, installed once so no signal between two waits is lost.
pub struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    pub fn install() -> Signals {
        Signals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves at the next SIGINT or SIGTERM with the signal's name.
    pub async fn next(&mut self) -> &'static str {
        let interrupt = async {
            match self.interrupt.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let terminate = async {
            match self.terminate.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => "SIGINT",
            _ = terminate => "SIGTERM",
        }
    }
}
