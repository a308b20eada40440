//! The CLI tests: one binary, one module per feature.

mod support;

mod crash;
mod disk;
mod inspect;
mod purge;
mod run;
mod shipped;
mod store;
