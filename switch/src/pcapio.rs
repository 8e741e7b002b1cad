//! Reading Ethernet frames from pcap or pcapng files and writing pcap files.
//!
//! Design: the whole input is read into memory up front (replay inputs are captures, not live
//! traffic), so errors surface before any output is written. The format is detected from the
//! file's magic number. Plain functions; no shared state.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, TsResolution};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Capture timestamp since the epoch.
    pub ts: Duration,
    /// The captured bytes.
    pub data: Vec<u8>,
    /// True if the capture cut the frame short (snaplen).
    pub truncated: bool,
}

/// Errors reading or writing capture files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a pcap or pcapng file, or a corrupt one.
    #[error("{path}: not a readable pcap/pcapng file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A link type other than Ethernet.
    #[error(
        "{path}: link type {linktype} is not Ethernet; capture on the interface itself (not 'any')"
    )]
    LinkType {
        /// The file.
        path: PathBuf,
        /// The link type found.
        linktype: String,
    },
}

fn format_err(path: &Path, e: impl std::fmt::Display) -> PcapError {
    PcapError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads every frame of a pcap or pcapng file; the link type must be Ethernet.
pub fn read_frames(path: &Path) -> Result<Vec<Frame>, PcapError> {
    let io = |source| PcapError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(|_| format_err(path, "file shorter than a pcap header"))?;
    let f = File::open(path).map_err(io)?;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        read_pcapng(path, f)
    } else {
        read_pcap(path, f)
    }
}

fn read_pcap(path: &Path, f: File) -> Result<Vec<Frame>, PcapError> {
    let mut r = PcapReader::new(BufReader::new(f)).map_err(|e| format_err(path, e))?;
    let dl = r.header().datalink;
    if dl != DataLink::ETHERNET {
        return Err(PcapError::LinkType {
            path: path.to_path_buf(),
            linktype: format!("{dl:?}"),
        });
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.map_err(|e| format_err(path, e))?;
        out.push(Frame {
            ts: p.timestamp,
            truncated: p.orig_len as usize > p.data.len(),
            data: p.data.into_owned(),
        });
    }
    Ok(out)
}

/// Converts a pcapng timestamp in interface units (`if_tsresol`: 10^-n s, or 2^-n s with the
/// high bit set; microseconds by default) to a duration.
pub fn rescale(raw: u64, tsresol: u8) -> Duration {
    let raw = u128::from(raw);
    let nanos = if tsresol & 0x80 == 0 {
        let exp = u32::from(tsresol);
        if exp <= 9 {
            raw * 10u128.pow(9 - exp)
        } else {
            raw / 10u128.pow((exp - 9).min(38))
        }
    } else {
        let exp = u32::from(tsresol & 0x7f).min(127);
        (raw * 1_000_000_000) >> exp
    };
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn read_pcapng(path: &Path, f: File) -> Result<Vec<Frame>, PcapError> {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    let mut r = PcapNgReader::new(BufReader::new(f)).map_err(|e| format_err(path, e))?;
    let mut out: Vec<Frame> = Vec::new();
    // if_tsresol per interface, in the order the interfaces were described.
    let mut tsresol: Vec<u8> = Vec::new();
    while let Some(b) = r.next_block() {
        let b = b.map_err(|e| format_err(path, e))?;
        match b {
            Block::InterfaceDescription(i) => {
                if i.linktype != DataLink::ETHERNET {
                    return Err(PcapError::LinkType {
                        path: path.to_path_buf(),
                        linktype: format!("{:?}", i.linktype),
                    });
                }
                let res = i
                    .options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                        _ => None,
                    })
                    .unwrap_or(6);
                tsresol.push(res);
            }
            Block::EnhancedPacket(p) => {
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds; apply the
                // interface's real resolution.
                let raw = u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX);
                let res = tsresol.get(p.interface_id as usize).copied().unwrap_or(6);
                out.push(Frame {
                    ts: rescale(raw, res),
                    truncated: p.original_len as usize > p.data.len(),
                    data: p.data.into_owned(),
                })
            }
            Block::SimplePacket(p) => {
                // No timestamp: keep it in file order after the previous frame.
                let ts = out.last().map_or(Duration::ZERO, |f| f.ts);
                let mut data = p.data.into_owned();
                let truncated = p.original_len as usize > data.len();
                data.truncate(p.original_len as usize);
                out.push(Frame {
                    ts,
                    truncated,
                    data,
                })
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A pcap file being written: Ethernet link type, microsecond timestamps, snaplen 65535.
pub struct Writer {
    path: PathBuf,
    w: PcapWriter<BufWriter<File>>,
    /// Frames written so far.
    pub frames: u64,
}

impl Writer {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<Writer, PcapError> {
        let f = File::create(path).map_err(|source| PcapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: 65535,
            ts_resolution: TsResolution::MicroSecond,
            ..PcapHeader::default()
        };
        let w =
            PcapWriter::with_header(BufWriter::new(f), header).map_err(|e| format_err(path, e))?;
        Ok(Writer {
            path: path.to_path_buf(),
            w,
            frames: 0,
        })
    }

    /// Appends one frame.
    pub fn write(&mut self, ts: Duration, data: &[u8]) -> Result<(), PcapError> {
        // Timestamps are written with microsecond resolution; round down so no field overflows.
        let ts = Duration::new(ts.as_secs(), ts.subsec_micros() * 1000);
        self.w
            .write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .map_err(|e| format_err(&self.path, e))?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes the file to disk.
    pub fn finish(self) -> Result<(), PcapError> {
        let path = self.path;
        let mut inner = self.w.into_writer();
        std::io::Write::flush(&mut inner).map_err(|source| PcapError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_resolutions() {
        assert_eq!(
            rescale(1_700_000_000_123_456, 6),
            Duration::new(1_700_000_000, 123_456_000)
        );
        assert_eq!(rescale(5, 9), Duration::from_nanos(5));
        assert_eq!(rescale(3, 0), Duration::from_secs(3));
        assert_eq!(rescale(1 << 10, 0x80 | 10), Duration::from_secs(1));
        assert_eq!(rescale(12_345, 12), Duration::from_nanos(12));
        assert_eq!(rescale(u64::MAX, 0), Duration::from_nanos(u64::MAX));
    }
}
