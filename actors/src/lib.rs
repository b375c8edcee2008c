//! `watchstate-actors`: the actor system and the sync rules of watchstate.
//!
//! It knows nothing about HTTP or sled; the outside world reaches it through traits:
//! - [`event`]: the normalised [`event::WebhookEvent`] every decoder produces;
//! - [`backend`]: [`backend::BackendApi`], what an actor needs from its media server.

pub mod backend;
pub mod event;
