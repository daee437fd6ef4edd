//! The delivery side: the ways mail comes in (the [`milter`], the rewrite [`api`]) and the
//! work it leaves for later (the [`spool`] of prefetch jobs, drained by [`prefetch`]).

pub mod api;
pub mod milter;
pub mod prefetch;
pub mod spool;
