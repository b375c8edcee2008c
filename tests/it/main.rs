//! The integration tests: one binary (fast to link), one module per area.

mod fakes;
mod harness;
mod support;

mod backend_clients;
mod contract;
mod decode_fixtures;
mod decode_props;
mod decode_route;
mod e2e_push;
mod e2e_schedule;
mod e2e_world;
mod foundation;
mod webhook_http;

mod reliability_backend_faults;
mod reliability_common;
mod reliability_crash;
mod reliability_hostile;
mod reliability_security;
mod reliability_soak;
mod reliability_storage;
