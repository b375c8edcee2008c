//! `watchstate`: the outside world of the service — CLI, config, HTTP (warp), webhook decoders,
//! the sled store and the media servers' HTTP clients. The actor system lives in
//! `watchstate-actors` (`actors/`).
pub mod backend;
