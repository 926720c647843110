//! One module per page.

pub mod account;
pub mod admin;
pub mod auth;
pub mod credits;
pub mod dashboard;
pub mod home;
pub mod members;
pub mod not_found;
