//! What both HTTP endpoints share (the image endpoint of [`crate::proxy`] and the rewrite
//! API of [`crate::delivery::api`]): the accept loop with its connection bound, TLS and
//! graceful drain ([`serve`]), the response body type and the short plain responses that
//! carry the security headers ([`plain`]), and loading a TLS certificate ([`load_tls`]).
//!
//! Routing is each endpoint's own; this module never looks at a request's path.

mod listener;
mod response;
mod tls;

pub use listener::{serve, ListenerConfig};
pub(crate) use response::add_security_headers;
pub use response::{plain, Body};
pub use tls::{load_tls, TlsError};
