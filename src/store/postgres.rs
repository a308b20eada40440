//! The postgres backend (not built yet: see its issue).

use super::{Mode, Store};
use crate::exit::{fail, Code};
use anyhow::Result;

pub fn open(_url: &str, _mode: Mode) -> Result<Option<Box<dyn Store>>> {
    fail(
        Code::Internal,
        "this build of idem has no postgres support yet",
    )
}
