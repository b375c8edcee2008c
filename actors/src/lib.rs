//! `watchstate-actors`: the actor system and the sync rules of watchstate.
//!
//! It knows nothing about HTTP or sled; the outside world reaches it through traits and
//! through [`supervisor::SupervisorHandle`], its only entry point:
//! - [`event`]: the normalised [`event::WebhookEvent`] every decoder produces;
//! - [`backend`]: [`backend::BackendApi`], what an actor needs from its media server;
//! - [`store`]: [`store::Store`], named key-value trees with atomic batches (sled in `src/`);
//! - [`config`]: [`config::PairSpec`] and [`config::SyncSettings`], built by the lead;
//! - [`clock`]: the one clock every change time is read from;
//! - [`supervisor`]: spawns, routes to, restarts and stops the pair actors;
//! - [`pair`]: the pair actor, one per (user, backend), owning that backend's state;
//! - [`state`]: compact items, the external-id index, the identity rule;
//! - [`apply`]: webhook events applied to a pair's own state;
//! - [`propagate`]: changes sent to siblings, pending states, conflicts;
//! - [`relay`]: the durable records that carry those changes across a crash;
//! - [`outbox`]: pushes to media servers, retries, dead letters;
//! - [`sync`]: the scheduled sync run;
//! - [`status`]: the serde status objects of the API.

pub mod apply;
pub mod backend;
pub mod clock;
pub mod config;
pub mod event;
pub mod outbox;
pub mod pair;
pub mod propagate;
pub mod relay;
pub mod state;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod sync;

pub use clock::{Clock, SystemClock, TestClock};
pub use config::{PairSpec, SyncSettings};
pub use supervisor::{ActorsError, SupervisorHandle, SyncNowError};
