//! `mailveil serve`'s wiring.

pub mod activation;
