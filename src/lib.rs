//! `watchstate`: the outside world of the service. The actor system and the sync rules live in
//! the `watchstate-actors` crate (`actors/`); this crate turns bytes into its events and
//! implements its traits.
//!
//! - [`cli`]: the `watchstate` command (serve, check-config, check-servers, apikey);
//! - [`check`]: `check-servers`, which asks every configured backend who it is;
//! - [`config`]: `config.toml`, typed and validated once;
//! - [`logging`]: tracing set-up (text or JSON lines);
//! - [`http`]: the warp server, authentication, request ids, JSON errors, the webhook intake
//!   and the status API;
//! - [`webhook`]: the pure decoders (one per sender) and routing;
//! - [`ingest`]: the [`ingest::EventSink`] the webhook handler hands routed events to;
//! - [`journal`]: the durable, group-committed journal behind that sink;
//! - [`store`]: the sled implementation of the actors' store;
//! - [`backend`]: the media servers' HTTP clients (one per server);
//! - [`app`]: wires everything together for `serve`, tests and benchmarks.

pub mod app;
pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod json_repair;
pub mod logging;
pub mod store;
pub mod webhook;
