//! Pieces shared by several pages.

pub mod copy;
pub mod form;
pub mod partner_options;
pub mod request_form;
pub mod request_id;
pub mod shell;
pub mod stream;
