//! `watchstate-actors`: the actor system and the sync rules of watchstate.
//!
//! It knows nothing about HTTP or sled; the outside world reaches it through traits:
//! - [`event`]: the normalised [`event::WebhookEvent`] every decoder produces;
//! - [`backend`]: [`backend::BackendApi`], what an actor needs from its media server.
//! - [`store`]: [`store::Store`], named key-value trees with atomic batches (sled in `src/`).

pub mod backend;
pub mod event;
pub mod store;
