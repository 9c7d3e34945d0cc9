//! An image onto a disk: HTTP -> (zstd) -> 4 MiB writes -> flush -> read back.
//!
//! The download runs on the async side and hands its pieces over a small bounded channel to
//! a blocking thread that unpacks and writes, so memory stays at a few MiB whatever the
//! image's size, and a slow disk slows the download instead of filling memory.
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha512};
use tokio::sync::mpsc;

use super::{check_sha, download, hex, Compression, Ctx, ImagePlan, InstallError, Meter};
use crate::wipe::disk::AlignedBuf;
use crate::wipe::{Disk, DiskOpener, DiskRequest};

const CHUNK: usize = 4 << 20;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub disk: String,
    /// Bytes downloaded (compressed, when the image is).
    pub downloaded: u64,
    /// Bytes of the unpacked image written to the disk.
    pub written: u64,
    /// SHA-512 of the unpacked image, as read back from the disk.
    pub sha512: String,
    pub write_time: Duration,
    pub verify_time: Duration,
}

enum Piece {
    Data(Bytes),
    End,
}

pub(super) async fn write(
    plan: &ImagePlan,
    opener: Arc<dyn DiskOpener>,
    ctx: &Ctx,
) -> Result<ImageSummary, InstallError> {
    let started = Instant::now();
    // Open first: a refused disk fails the command before anything is downloaded.
    let req = DiskRequest::named(&plan.disk);
    let disk = tokio::task::spawn_blocking(move || opener.open(&req))
        .await
        .map_err(|_| InstallError::Died)??;
    let mut resp = download::get(&plan.image, ctx).await?;
    tracing::info!(disk = %plan.disk, url = %plan.image.url, "writing image");

    let (tx, rx) = mpsc::channel::<Piece>(8);
    let compression = plan.compression;
    let writer =
        tokio::task::spawn_blocking(move || write_stream(disk, ChunkReader::new(rx), compression));
    let mut hasher = Sha512::new();
    let mut meter = Meter::new("image", resp.content_length().unwrap_or(0), ctx);
    let downloaded = async {
        let mut n = 0u64;
        while let Some(chunk) = download::next(&mut resp, &plan.image, ctx).await? {
            hasher.update(&chunk);
            n += chunk.len() as u64;
            meter.add(chunk.len() as u64);
            if tx.send(Piece::Data(chunk)).await.is_err() {
                // The writer gave up; its error says why.
                return Ok(n);
            }
        }
        let _ = tx.send(Piece::End).await;
        Ok::<u64, InstallError>(n)
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(|_| InstallError::Died)?;
    let downloaded = downloaded?;
    let (disk, written) = written?;
    meter.finish();
    check_sha(
        "image",
        plan.image.sha512.as_deref(),
        &hex(&hasher.finalize()),
    )?;
    check_sha(
        "unpacked image",
        plan.unpacked_sha512.as_deref(),
        &written.sha512,
    )?;
    let write_time = started.elapsed();

    let verify_started = Instant::now();
    let mut meter = Meter::new("image verify", written.bytes, ctx);
    let len = written.bytes;
    let read = tokio::task::spawn_blocking(move || read_back(disk.as_ref(), len, &mut meter))
        .await
        .map_err(|_| InstallError::Died)??;
    check_sha(
        &format!("image read back from {}", plan.disk),
        Some(&written.sha512),
        &read,
    )?;
    Ok(ImageSummary {
        disk: plan.disk.clone(),
        downloaded,
        written: written.bytes,
        sha512: read,
        write_time,
        verify_time: verify_started.elapsed(),
    })
}

struct Written {
    bytes: u64,
    sha512: String,
}

/// Unpacks and writes everything `src` yields, from offset 0, then flushes.
fn write_stream(
    mut disk: Box<dyn Disk>,
    src: ChunkReader,
    compression: Compression,
) -> Result<(Box<dyn Disk>, Written), InstallError> {
    let mut reader: Box<dyn Read> = match compression {
        Compression::Raw => Box::new(src),
        Compression::Zstd => Box::new(ZstdFrames::new(BufReader::with_capacity(1 << 20, src))),
    };
    let name = disk.name().to_string();
    let size = disk.size();
    let block = disk.logical_block_size().max(1) as usize;
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut hasher = Sha512::new();
    let mut offset = 0u64;
    loop {
        let n = fill(reader.as_mut(), buf.as_mut_slice()).map_err(InstallError::Unpack)?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > size {
            return Err(InstallError::TooLarge { disk: name, size });
        }
        hasher.update(&buf.as_slice()[..n]);
        // The last piece is padded with zeros to a whole block (O_DIRECT writes whole
        // blocks); the padding is past the image's end, and not part of what is verified.
        let padded = n.div_ceil(block) * block;
        buf.as_mut_slice()[n..padded].fill(0);
        let len = if offset + padded as u64 <= size {
            padded
        } else {
            n
        };
        disk.write_at(offset, &buf.as_slice()[..len])
            .map_err(|source| InstallError::Write {
                disk: name.clone(),
                offset,
                source,
            })?;
        offset += n as u64;
        if n < CHUNK {
            break;
        }
    }
    disk.flush().map_err(|source| InstallError::Flush {
        disk: name.clone(),
        source,
    })?;
    if let Err(e) = disk.reread_partitions() {
        tracing::warn!(disk = %name, error = %e, "the kernel did not re-read the partition table");
    }
    tracing::info!(disk = %name, bytes = offset, "image written and flushed");
    let written = Written {
        bytes: offset,
        sha512: hex(&hasher.finalize()),
    };
    Ok((disk, written))
}

/// Reads until `buf` is full or the source ends; the count read.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// SHA-512 of the first `len` bytes of the disk.
fn read_back(disk: &dyn Disk, len: u64, meter: &mut Meter) -> Result<String, InstallError> {
    let mut hasher = Sha512::new();
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        let piece = &mut buf.as_mut_slice()[..n];
        disk.read_at(offset, piece)
            .map_err(|source| InstallError::ReadBack {
                disk: disk.name().to_string(),
                offset,
                source,
            })?;
        hasher.update(&*piece);
        offset += n as u64;
        meter.add(n as u64);
    }
    meter.finish();
    Ok(hex(&hasher.finalize()))
}

/// The download, as a blocking reader. Ends cleanly only after `Piece::End`: a sender
/// dropped before that is a download that stopped.
struct ChunkReader {
    rx: mpsc::Receiver<Piece>,
    cur: Bytes,
    ended: bool,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Piece>) -> Self {
        ChunkReader {
            rx,
            cur: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.cur = b,
                Some(Piece::End) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download stopped",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A zstd stream of one or more frames (concatenated files, skippable frames), unpacked.
/// ruzstd's own StreamingDecoder stops after the first frame.
struct ZstdFrames<R: BufRead> {
    src: R,
    dec: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(src: R) -> Self {
        ZstdFrames {
            src,
            dec: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.src.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.dec.reset(&mut self.src) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.src).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped < u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd: truncated skippable frame",
                            ));
                        }
                        continue;
                    }
                    Err(e) => return Err(io::Error::other(format!("zstd: {e}"))),
                }
            }
            let dec = &mut self.dec;
            if dec.is_finished() && dec.can_collect() == 0 {
                self.in_frame = false;
                continue;
            }
            while dec.can_collect() < buf.len() && !dec.is_finished() {
                let want = buf.len() - dec.can_collect();
                dec.decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want))
                    .map_err(|e| io::Error::other(format!("zstd: {e}")))?;
            }
            let n = dec.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdFrames::new(BufReader::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn zstd_frames_are_all_unpacked_and_skippable_frames_skipped() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let a = pattern(3 << 20, 1);
        let b = pattern(100_000, 7);
        let mut packed = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame between the two: magic 0x184D2A50, length 4, payload.
        packed.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        packed.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut want = a.clone();
        want.extend(&b);
        assert_eq!(unpack(&packed).unwrap(), want);
        assert!(unpack(&[]).unwrap().is_empty());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        assert!(unpack(b"not zstd at all").is_err());
        let packed = compress_to_vec(&pattern(1 << 20, 3)[..], CompressionLevel::Fastest);
        assert!(unpack(&packed[..packed.len() / 2]).is_err());
    }
}
