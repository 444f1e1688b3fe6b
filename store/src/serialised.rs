//! Acts that read, then record, about one person or one request id, serialised across every
//! broker of a store: two brokers handed the same consent grant (a retry sent elsewhere) must
//! not both find nothing and both record. One broker serialises its own acts with a lock of its
//! own; what the store adds is the hold across brokers (on PostgreSQL, advisory locks).

/// A hold across brokers. Released ([`Serialised::release`]) once the act's appends were
/// answered, it ends at once. Dropped instead (the act failed, or its caller went away midway),
/// its appends may still be committing: the hold ends once the store has their outcome, so that
/// no other broker's act reads before a record it could not yet see.
#[must_use = "the hold ends when this is dropped"]
pub struct Serialised {
    held: Option<Box<dyn Held>>,
}

/// What a backend holds, and how it lets go.
#[async_trait::async_trait]
pub trait Held: Send {
    /// Ends the hold now, the act's appends answered, and keeps what can serve the next one.
    /// Dropped instead, the hold ends once every append queued before has its outcome.
    async fn release(self: Box<Self>);

    /// What the act's appends carry to the backend's writer ([`Serialised::during`]), for a
    /// hold that can end on its own before the act does (on PostgreSQL, a database session
    /// that ends takes its locks with it): the writer commits them only while it stands.
    fn token(&self) -> Option<HoldToken> {
        None
    }
}

/// A hold as the act's appends carry it: the backend's own description, opaque elsewhere.
pub type HoldToken = std::sync::Arc<dyn std::any::Any + Send + Sync>;

tokio::task_local! {
    /// The hold of the act this task runs, while [`Serialised::during`] runs it.
    static ACTING: HoldToken;
}

/// The hold of the act the calling task runs, if any: what its appends carry.
pub(crate) fn acting() -> Option<HoldToken> {
    ACTING.try_with(HoldToken::clone).ok()
}

impl Serialised {
    /// Nothing to hold beyond the broker's own lock: a store with one broker.
    pub fn alone() -> Serialised {
        Serialised { held: None }
    }

    /// A backend's hold.
    pub fn held(held: Box<dyn Held>) -> Serialised {
        Serialised { held: Some(held) }
    }

    /// Runs `act` under this hold: every append it makes (from its own task) carries the hold,
    /// and is not committed once the hold has ended, even if the act has not noticed: another
    /// broker may then be reading what it would change.
    pub fn during<F: std::future::Future>(
        &self,
        act: F,
    ) -> impl std::future::Future<Output = F::Output> + use<F> {
        let token = self.held.as_ref().and_then(|h| h.token());
        async move {
            match token {
                Some(token) => ACTING.scope(token, act).await,
                None => act.await,
            }
        }
    }

    /// Ends the hold, the act's appends answered (committed or refused, not timed out).
    pub async fn release(mut self) {
        if let Some(held) = self.held.take() {
            held.release().await;
        }
    }
}
