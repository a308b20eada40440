//! The output journal's frame format, shared by every backend.
//!
//! A run's captured output is a journal: a sequence of frames, one per
//! append (a batch of at most about 1 s or 1 MiB of output). A frame is the
//! batch's chunks in the order idem read them, each as a 1-byte stream tag
//! (1 stdout, 2 stderr), a 4-byte little-endian length, and the bytes. A
//! backend stores frames as opaque byte strings in order (SQLite and
//! PostgreSQL rows, a Redis stream) and hands them back to a `Decoder`,
//! which turns them into pieces of chunks a piece at a time, so a reader
//! never holds more than what the backend read at once.

use super::{Chunk, Stream};
use anyhow::{bail, Result};

const HEADER: usize = 5;
/// The largest chunk one header describes; longer ones are split.
const MAX_PIECE: usize = 1 << 30;

fn tag(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

fn pieces<'a>(chunks: &'a [Chunk<'a>]) -> impl Iterator<Item = (Stream, &'a [u8])> {
    chunks
        .iter()
        .flat_map(|c| c.bytes.chunks(MAX_PIECE).map(move |p| (c.stream, p)))
}

/// The size of the frame `write_frame` makes of `chunks`.
pub fn frame_len(chunks: &[Chunk<'_>]) -> usize {
    pieces(chunks).map(|(_, p)| HEADER + p.len()).sum()
}

/// Bytes per stream in `chunks`: (stdout, stderr).
pub fn stream_lens(chunks: &[Chunk<'_>]) -> (i64, i64) {
    let len = |s: Stream| {
        let n: usize = chunks
            .iter()
            .filter(|c| c.stream == s)
            .map(|c| c.bytes.len())
            .sum();
        i64::try_from(n).unwrap_or(i64::MAX)
    };
    (len(Stream::Stdout), len(Stream::Stderr))
}

/// Writes the frame of `chunks` through `out`, a piece at a time (into a
/// blob, or a buffer), without copying the chunks first.
pub fn write_frame<E>(
    chunks: &[Chunk<'_>],
    out: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    for (stream, piece) in pieces(chunks) {
        let len = u32::try_from(piece.len()).unwrap_or(u32::MAX).to_le_bytes();
        out(&[tag(stream), len[0], len[1], len[2], len[3]])?;
        out(piece)?;
    }
    Ok(())
}

/// The frame of `chunks` in memory (at most one batch: about 1 MiB).
pub fn frame(chunks: &[Chunk<'_>]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(frame_len(chunks));
    let _ = write_frame(chunks, &mut |piece| {
        bytes.extend_from_slice(piece);
        Ok::<(), ()>(())
    });
    bytes
}

/// Turns frames, fed in pieces of any size, back into tagged bytes.
#[derive(Default)]
pub struct Decoder {
    header: [u8; HEADER],
    /// Bytes of `header` read so far (< HEADER while reading one).
    have: usize,
    /// Bytes of the current chunk still to come.
    left: usize,
    stream: Option<Stream>,
}

impl Decoder {
    /// Feeds the next bytes of a frame; `each` gets each piece of a chunk.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<()> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                let stream = self.stream.unwrap_or(Stream::Stdout);
                each(stream, &data[..n])?;
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER {
                self.have = 0;
                self.stream = Some(match self.header[0] {
                    1 => Stream::Stdout,
                    2 => Stream::Stderr,
                    other => bail!("the stored output is corrupt (chunk tag {other})"),
                });
                let len = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.left = u32::from_le_bytes(len) as usize;
            }
        }
        Ok(())
    }

    /// Checks that the frame ended at a chunk boundary.
    pub fn end(&self) -> Result<()> {
        if self.have != 0 || self.left != 0 {
            bail!("the stored output is corrupt (a frame ends mid-chunk)");
        }
        Ok(())
    }
}

/// Decodes one whole frame held in memory.
pub fn decode(frame: &[u8], each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>) -> Result<()> {
    let mut decoder = Decoder::default();
    decoder.feed(frame, each)?;
    decoder.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_any_pieces() {
        let chunks = [
            Chunk {
                stream: Stream::Stderr,
                bytes: b"e1\n",
            },
            Chunk {
                stream: Stream::Stdout,
                bytes: b"o1\n",
            },
            Chunk {
                stream: Stream::Stdout,
                bytes: b"",
            },
            Chunk {
                stream: Stream::Stderr,
                bytes: b"e2\n",
            },
        ];
        let bytes = frame(&chunks);
        assert_eq!(bytes.len(), frame_len(&chunks));
        assert_eq!(stream_lens(&chunks), (3, 6));
        for step in 1..bytes.len() {
            let mut seen = Vec::new();
            let mut decoder = Decoder::default();
            for piece in bytes.chunks(step) {
                decoder
                    .feed(piece, &mut |s, b| {
                        match seen.last_mut() {
                            Some((last, text)) if *last == s => {
                                let text: &mut Vec<u8> = text;
                                text.extend_from_slice(b);
                            }
                            _ => seen.push((s, b.to_vec())),
                        }
                        Ok(())
                    })
                    .unwrap();
            }
            decoder.end().unwrap();
            assert_eq!(
                seen,
                vec![
                    (Stream::Stderr, b"e1\n".to_vec()),
                    (Stream::Stdout, b"o1\n".to_vec()),
                    (Stream::Stderr, b"e2\n".to_vec()),
                ]
            );
        }
    }

    #[test]
    fn a_cut_frame_is_corrupt() {
        let bytes = frame(&[Chunk {
            stream: Stream::Stdout,
            bytes: b"abc",
        }]);
        assert!(decode(&bytes[..bytes.len() - 1], &mut |_, _| Ok(())).is_err());
        assert!(decode(&[9, 0, 0, 0, 0], &mut |_, _| Ok(())).is_err());
    }
}
