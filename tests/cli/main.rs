//! The CLI tests: one binary, one module per feature.

mod support;

mod crash;
mod disk;
mod guarantees;
mod hostile;
mod hosts;
mod inspect;
mod jobs;
mod lint;
mod liveness;
mod postgres;
mod purge;
mod redis;
mod run;
mod shipped;
mod store;
