//! Acts that read, then record, about one person or one request id, serialised across every
//! broker of a store: two brokers handed the same consent grant (a retry sent elsewhere) must
//! not both find nothing and both record. One broker serialises its own acts with a lock of its
//! own; what the store adds is the hold across brokers (on PostgreSQL, advisory locks).

/// A hold across brokers, released when this is released or dropped.
#[must_use = "the hold ends when this is dropped"]
pub struct Serialised {
    held: Option<Box<dyn Held>>,
}

/// What a backend holds, and how it lets go.
#[async_trait::async_trait]
pub trait Held: Send {
    /// Ends the hold and keeps what can serve the next one. Dropped instead, the hold ends too
    /// (on PostgreSQL, with its connection).
    async fn release(self: Box<Self>);
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

    /// Ends the hold.
    pub async fn release(mut self) {
        if let Some(held) = self.held.take() {
            held.release().await;
        }
    }
}
