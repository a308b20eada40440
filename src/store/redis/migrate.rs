//! Schema 5's names for records whose key holds a `{` (keys.rs): schemas
//! 2 and 3 left it unescaped, so two prefixes could share a record. The
//! first `run` or `purge` of this build on such a store moves them.
//!
//! The move is announced first: the schema version becomes `migrating:5`
//! (compare-and-set, so one caller starts it), which older binaries refuse
//! as foreign data (exit 125, nothing run) and callers of this build
//! finish themselves, the moves being idempotent. Each record and its
//! journal are copied to their new names with `DUMP`/`RESTORE` (a Cluster
//! puts them in another hash slot, which `RENAME` cannot reach), keeping
//! their time to live, and the old names are deleted; a new name that is
//! there already was moved by another caller. Then the version becomes 5.
//! Records whose key has no `{` keep their names: most stores move nothing.

use super::keys::{Keys, Layout};
use super::{list, RedisStore};
use anyhow::Result;
use redis::Script;

/// The version a store carries while its records move to schema 5.
pub(super) const MIGRATING: &str = "migrating:5";

/// Sets `KEYS[1]` to `ARGV[2]` if it holds `ARGV[1]`; 1 if it did.
const COMPARE_AND_SET: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";

impl RedisStore {
    /// Moves a store at schema `from` (2 or 3, or one `MIGRATING` already)
    /// to schema `to`'s names; the caller reads the version again after.
    pub(super) fn migrate_names(&mut self, from: &str, to: i64) -> Result<()> {
        let schema = self.keys.schema();
        let swap = Script::new(COMPARE_AND_SET);
        if from != MIGRATING {
            let started: i64 = self.exec("cannot start the schema migration", true, |c, _| {
                swap.key(&schema).arg(from).arg(MIGRATING).invoke(c.like())
            })?;
            if started == 0 {
                // Another caller changed it first: look again.
                return Ok(());
            }
        }
        let layout = self.keys.layout;
        self.keys.layout = Layout::V2;
        let scanned = list::scan_keys(self, "");
        self.keys.layout = layout;
        let old = Keys {
            prefix: self.keys.prefix.clone(),
            layout: Layout::V2,
        };
        let new = Keys {
            prefix: self.keys.prefix.clone(),
            layout: Layout::V3,
        };
        for key in scanned?.into_iter().filter(|k| k.contains('{')) {
            for part in ["rec", "log"] {
                self.move_key(&old.record_part(&key, part), &new.record_part(&key, part))?;
            }
        }
        let to = to.to_string();
        self.exec("cannot finish the schema migration", true, |c, _| {
            swap.key(&schema)
                .arg(MIGRATING)
                .arg(&to)
                .invoke::<i64>(c.like())
        })?;
        Ok(())
    }

    /// Copies `from` to `to` with its time to live, then deletes `from`.
    fn move_key(&mut self, from: &str, to: &str) -> Result<()> {
        let doing = "cannot move a record to its schema 5 name";
        let (dump, ttl): (Option<Vec<u8>>, i64) = self.exec(doing, true, |c, _| {
            let dump = redis::cmd("DUMP").arg(from).query(c.like())?;
            let ttl = redis::cmd("PTTL").arg(from).query(c.like())?;
            Ok((dump, ttl))
        })?;
        // Moved already, never had a journal, or expired meanwhile.
        let (Some(dump), false) = (dump, ttl == -2) else {
            return Ok(());
        };
        let restored = self.exec(doing, true, |c, _| {
            match redis::cmd("RESTORE")
                .arg(to)
                .arg(ttl.max(0))
                .arg(&dump)
                .query::<()>(c.like())
            {
                Err(e) if e.code() == Some("BUSYKEY") => Ok(()),
                other => other,
            }
        });
        restored?;
        self.exec(doing, true, |c, _| {
            redis::cmd("DEL").arg(from).query::<i64>(c.like())
        })?;
        Ok(())
    }
}
