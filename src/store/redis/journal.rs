//! The output journal on Redis: a stream next to each record (`P{KEY}:log`,
//! named by `journal_key`, so it shares the record's hash slot), one entry
//! per frame with the explicit id N-0 for frame number N - 1 (a retried
//! append finds its entry there and writes nothing), and an `end` entry
//! added with the outcome. The stream expires, and is deleted, with its record.
//!
//! A follower blocks in `XREAD BLOCK` on the stream until an entry past its
//! position arrives (the run's output, or its end), at most a second at a
//! time: a waiter costs the server one blocked connection and no work.

use super::conn::TIME_LIMIT;
use super::RedisStore;
use crate::store::journal;
use crate::store::Chunk;
use crate::store::Stream;
use anyhow::Result;
use redis::{from_redis_value, Value};
use std::time::Duration;

/// How much of the journal one round trip carries (at least one frame).
const PAGE_BYTES: usize = 1024 * 1024;

impl RedisStore {
    pub(super) fn append(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool> {
        let (rkey, jkey) = (self.record_key(key), self.journal_key(key));
        let (out, err) = journal::stream_lens(chunks);
        let frame = journal::frame(chunks);
        // Retried once on a new connection: a try whose reply was lost left
        // its entry, which the next one finds.
        self.exec("cannot store the output", true, |c, s| {
            s.append
                .key(&rkey)
                .key(&jkey)
                .arg(token)
                .arg(out)
                .arg(err)
                .arg(&frame)
                .arg(seq)
                .invoke::<i64>(c.like())
        })
        .map(|ours| ours == 1)
    }

    pub(super) fn read(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let (rkey, jkey) = (self.record_key(key), self.journal_key(key));
        let mut at = from;
        let mut first = true;
        loop {
            let reply: Option<Vec<Value>> = self.exec("cannot read the output", true, |c, s| {
                s.journal
                    .key(&rkey)
                    .key(&jkey)
                    .arg(token)
                    .arg(at)
                    .arg(PAGE_BYTES)
                    .invoke(c.like())
            })?;
            let Some(reply) = reply else {
                if first {
                    return Ok(None);
                }
                return self
                    .target
                    .fail("the record was purged or taken over while its output was read");
            };
            let mut values = reply.into_iter();
            let mut int =
                || -> Result<i64> { Ok(from_redis_value(values.next().unwrap_or(Value::Nil))?) };
            let (last, more, out_len, err_len) = (int()?, int()?, int()?, int()?);
            if first && from == 0 {
                for (stream, len) in [(Stream::Stdout, out_len), (Stream::Stderr, err_len)] {
                    if len > 0 {
                        self.read_legacy(&rkey, token, stream, each)?;
                    }
                }
            }
            first = false;
            for value in values {
                let frame: Vec<u8> = from_redis_value(value)?;
                journal::decode(&frame, each)?;
            }
            at = u64::try_from(last).unwrap_or(0);
            if more == 0 {
                return Ok(Some(at));
            }
        }
    }

    /// A stream of a record written before journals (a hash field, read
    /// whole as it was stored).
    fn read_legacy(
        &mut self,
        rkey: &str,
        token: i64,
        stream: Stream,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let field = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let bytes: Option<Vec<u8>> = self.exec("cannot read the output", true, |c, s| {
            s.output.key(rkey).arg(token).arg(field).invoke(c.like())
        })?;
        match bytes {
            Some(bytes) => each(stream, &bytes),
            None => self
                .target
                .fail("the record was purged or taken over while its output was read"),
        }
    }

    /// Blocks on the journal until an entry past `from` arrives, or
    /// `timeout` passes.
    pub(super) fn await_entry(&mut self, key: &str, from: u64, timeout: Duration) -> Result<()> {
        let jkey = self.journal_key(key);
        let block = u64::try_from(timeout.as_millis()).unwrap_or(1000).max(1);
        self.within(timeout + TIME_LIMIT, |store| {
            store.exec("cannot wait for the output", true, |c, _| {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block)
                    .arg("STREAMS")
                    .arg(&jkey)
                    .arg(format!("{from}-0"))
                    .query::<Value>(c.like())
            })
        })?;
        Ok(())
    }
}
