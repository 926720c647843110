//! The integration harness: each test starts the real server on port 0 with a fresh database
//! and talks to it over HTTP, as a browser would.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

mod account_security;
mod accounts;
mod api_keys;
mod audit;
mod batches;
mod completions;
mod compute;
mod faults;
mod fleet;
mod helpers;
mod metrics;
mod openai_client;
mod partner_statements;
mod payments;
mod playground;
mod security;
mod smtp;
mod tools;
mod usage;
mod v1;
