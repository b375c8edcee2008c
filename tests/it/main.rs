//! The one integration test binary: real servers on 127.0.0.1:0, fake media servers.

mod backend_clients;
mod contract;
mod fakes;
