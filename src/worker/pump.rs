//! Streaming a message body from one socket to another in bounded buffers, in either direction:
//! request bodies client → upstream, response bodies upstream → client. The source framing is
//! decoded (Content-Length, chunked, or until EOF) and the body re-framed for the sink (raw or
//! chunked), so a body is never held whole and never forwarded with framing kedge did not check.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::timer;
use crate::http::{self, ChunkEvent, ChunkedDecoder, Framing};

/// Flush the output buffer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Read this much at a time at least.
const READ_CHUNK: usize = 16 * 1024;
/// Largest read of a body passed through unchanged: a 100 MiB body takes 400 reads and writes,
/// not 6,400. The buffer goes back to the worker's pool only up to 64 KiB (`bufs.rs`), so a body
/// larger than that costs one allocation.
const PASS_READ: usize = 256 * 1024;

/// Why a body could not be moved. The side tells the caller what to answer.
#[derive(Debug)]
pub enum PumpError {
    /// The source went quiet for longer than its read timeout.
    SourceTimeout,
    /// The source closed or failed before the body was complete.
    SourceIo,
    /// The source's body framing was invalid (bad chunk line etc.).
    SourceFraming(http::HttpError),
    /// More body than the limit allows.
    TooLarge,
    /// The sink failed or stalled while we wrote to it.
    Sink,
}

/// Timeouts and limits for one pump.
pub struct PumpLimits {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Most body bytes to accept; `u64::MAX` for no limit.
    pub max: u64,
}

/// Moves one body. `buf` holds bytes already read from `src` (the body's start, and possibly
/// what follows it); on success it holds exactly what follows the body. `out` may hold bytes
/// (a head) to be written before the body; it is flushed and empty on success. Returns the
/// number of body bytes moved.
pub async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    framing: Framing,
    chunked_out: bool,
    limits: &PumpLimits,
) -> Result<u64, PumpError>
where
    R: AsyncReadRent,
    W: AsyncWriteRent,
{
    let mut moved: u64 = 0;
    match framing {
        Framing::None => {}
        Framing::Length(mut remaining) => {
            if remaining > limits.max {
                return Err(PumpError::TooLarge);
            }
            loop {
                let k = (remaining.min(buf.len() as u64)) as usize;
                if k > 0 {
                    emit(out, &buf[..k], chunked_out);
                    buf.drain(..k);
                    remaining -= k as u64;
                    moved += k as u64;
                }
                if remaining == 0 {
                    break;
                }
                flush(dst, out, limits.write_timeout).await?;
                if !chunked_out {
                    // All that was buffered went with the head; the rest passes through as is.
                    return Ok(moved + pass_through(src, dst, buf, remaining, limits).await?);
                }
                if read_more(src, buf, limits.read_timeout).await? == 0 {
                    return Err(PumpError::SourceIo);
                }
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut pos = 0;
            loop {
                let (used, event) = decoder.step(&buf[pos..]).map_err(PumpError::SourceFraming)?;
                match event {
                    ChunkEvent::Data(r) => {
                        let len = r.len() as u64;
                        moved += len;
                        if moved > limits.max {
                            return Err(PumpError::TooLarge);
                        }
                        let data = &buf[pos + r.start..pos + r.end];
                        emit(out, data, chunked_out);
                        pos += used;
                        if out.len() >= FLUSH_AT {
                            flush(dst, out, limits.write_timeout).await?;
                        }
                    }
                    ChunkEvent::End { trailers } => {
                        if chunked_out {
                            http::write_last_chunk(out, &buf[pos + trailers.start..pos + trailers.end]);
                        }
                        pos += used;
                        buf.drain(..pos);
                        flush(dst, out, limits.write_timeout).await?;
                        return Ok(moved);
                    }
                    ChunkEvent::NeedMore => {
                        pos += used;
                        buf.drain(..pos);
                        pos = 0;
                        flush(dst, out, limits.write_timeout).await?;
                        if read_more(src, buf, limits.read_timeout).await? == 0 {
                            return Err(PumpError::SourceIo);
                        }
                    }
                }
            }
        }
        Framing::CloseDelimited => loop {
            if !buf.is_empty() {
                moved += buf.len() as u64;
                if moved > limits.max {
                    return Err(PumpError::TooLarge);
                }
                emit(out, buf, chunked_out);
                buf.clear();
            }
            flush(dst, out, limits.write_timeout).await?;
            if read_more(src, buf, limits.read_timeout).await? == 0 {
                if chunked_out {
                    http::write_last_chunk(out, b"");
                }
                break;
            }
        },
    }
    flush(dst, out, limits.write_timeout).await?;
    Ok(moved)
}

/// What [`check_buffered_chunks`] found wrong.
#[derive(Debug)]
pub enum BadChunks {
    Framing(http::HttpError),
    TooLarge,
}

/// Checks the chunked framing of the body bytes already read (those that came with the head),
/// as far as they go, and that they hold no more than `max` body bytes. A message whose
/// framing is broken there can be refused whole, before anything of it is passed on: the other
/// side gets a clear answer instead of a message cut short. Reads and writes nothing.
pub fn check_buffered_chunks(mut body: &[u8], max: u64) -> Result<(), BadChunks> {
    let mut decoder = ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        match decoder.step(body).map_err(BadChunks::Framing)? {
            (used, ChunkEvent::Data(r)) => {
                total += r.len() as u64;
                if total > max {
                    return Err(BadChunks::TooLarge);
                }
                body = &body[used..];
            }
            (_, ChunkEvent::NeedMore | ChunkEvent::End { .. }) => return Ok(()),
        }
    }
}

/// Moves the `remaining` bytes of a Content-Length body that goes out unchanged: each read is
/// written from the same buffer (no copy into an output buffer), reads are up to
/// [`PASS_READ`] bytes, and never go past the body's end, so whatever follows it stays in the
/// source. `buf` is empty on entry and on success.
async fn pass_through<R, W>(
    src: &mut R,
    dst: &mut W,
    buf: &mut Vec<u8>,
    mut remaining: u64,
    limits: &PumpLimits,
) -> Result<u64, PumpError>
where
    R: AsyncReadRent,
    W: AsyncWriteRent,
{
    debug_assert!(buf.is_empty());
    let total = remaining;
    let want = remaining.min(PASS_READ as u64) as usize;
    if buf.capacity() < want {
        buf.reserve_exact(want);
    }
    while remaining > 0 {
        let n = remaining.min(buf.capacity() as u64) as usize;
        let b = std::mem::take(buf);
        let n = match timer::timeout(limits.read_timeout, src.read(b.slice_mut(0..n))).await {
            Err(_) => return Err(PumpError::SourceTimeout),
            Ok((res, slice)) => {
                *buf = slice.into_inner();
                match res {
                    Ok(0) | Err(_) => return Err(PumpError::SourceIo),
                    Ok(n) => n,
                }
            }
        };
        remaining -= n as u64;
        flush(dst, buf, limits.write_timeout).await?;
    }
    Ok(total)
}

/// Appends body bytes to `out`, as one chunk when re-framing to chunked.
fn emit(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        http::write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes all of `out` to `dst` and clears it.
pub async fn flush<W: AsyncWriteRent>(dst: &mut W, out: &mut Vec<u8>, timeout: Duration) -> Result<(), PumpError> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, mut b) = write_all(dst, std::mem::take(out), timeout)
        .await
        .map_err(|_| PumpError::Sink)?;
    res.map_err(|_| PumpError::Sink)?;
    b.clear();
    *out = b;
    Ok(())
}

/// `write_all` under a timeout. `Err` means the timeout fired (the buffer is lost with it).
pub async fn write_all<W: AsyncWriteRent, B: IoBuf + 'static>(
    dst: &mut W,
    data: B,
    timeout: Duration,
) -> Result<(io::Result<usize>, B), ()> {
    timer::timeout(timeout, dst.write_all(data)).await.map_err(|_| ())
}

/// Reads more bytes onto the end of `buf`. Returns how many (0 = EOF).
pub async fn read_more<R: AsyncReadRent>(
    src: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, PumpError> {
    match read_with_timeout(src, buf, timeout).await {
        ReadResult::Data(n) => Ok(n),
        ReadResult::Eof => Ok(0),
        ReadResult::Timeout => Err(PumpError::SourceTimeout),
        ReadResult::Error => Err(PumpError::SourceIo),
    }
}

/// Outcome of one read.
pub enum ReadResult {
    Data(usize),
    Eof,
    Timeout,
    Error,
}

/// One read onto the end of `buf` (growing it when full), under a timeout. On timeout the
/// buffer went with the cancelled read and `buf` is left empty: callers close the connection.
pub async fn read_with_timeout<R: AsyncReadRent>(src: &mut R, buf: &mut Vec<u8>, timeout: Duration) -> ReadResult {
    read_with_deadline(src, buf, timer::FirstWait, timeout).await
}

/// The reading half of a lingering close: reads and drops what `src` still sends, into `sink`,
/// until it closes, [`LINGER_READS`] reads, or [`LINGER_TIME`] in all, whichever comes first.
/// The caller has sent its FIN already.
pub async fn drain_lingering<R: AsyncReadRent>(src: &mut R, mut sink: Vec<u8>) {
    let deadline = std::time::Instant::now() + LINGER_TIME;
    for _ in 0..LINGER_READS {
        sink.clear();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !matches!(read_with_timeout(src, &mut sink, left).await, ReadResult::Data(_)) {
            break;
        }
    }
}

/// How long a lingering close reads at most ([`drain_lingering`]).
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// How many reads a lingering close makes at most: a bound on what a client that keeps
/// sending can make kedge read for nothing ([`drain_lingering`]).
pub const LINGER_READS: usize = 64;

/// [`read_with_timeout`] with the timeout counted from `from` ([`timer::Base`]).
pub async fn read_with_deadline<R: AsyncReadRent>(
    src: &mut R,
    buf: &mut Vec<u8>,
    from: impl timer::Base,
    timeout: Duration,
) -> ReadResult {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    let len = buf.len();
    let b = std::mem::take(buf);
    match timer::timeout_from(from, timeout, src.read(b.slice_mut(len..))).await {
        Err(_) => ReadResult::Timeout,
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            match res {
                Ok(0) => ReadResult::Eof,
                Ok(n) => ReadResult::Data(n),
                Err(_) => ReadResult::Error,
            }
        }
    }
}
