//! One module per page.

pub mod account;
pub mod admin;
pub mod admin_factories;
pub mod admin_orgs;
pub mod admin_programs;
pub mod admin_workers;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod batches;
pub mod compute;
pub mod compute_detail;
pub mod credits;
pub mod dashboard;
pub mod fleet;
pub mod home;
pub mod keys;
pub mod members;
pub mod models;
pub mod not_found;
pub mod playground;
pub mod recovery;
pub mod statements;
pub mod top_up;
pub mod two_factor;
pub mod usage;
