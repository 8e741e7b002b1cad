//! `switchctl capture`: a port's frames as pcapng, for tshark and Wireshark.
//!
//! Design: one section, one interface description block per port (Ethernet, nanosecond
//! timestamps, named), written as the port first appears (the ports the capture took when it
//! opened come first); each frame an enhanced packet block with its direction flag. The file
//! is flushed after every message so that a reader on a pipe sees frames as they come. Stops
//! at the count, the duration, Ctrl-C or when the output closes; says on stderr how many
//! frames it wrote and how many the switch lost because this reader was behind.

use crate::{client, Cli, Failure};
use control::pb;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The pcapng `epb_flags` direction bits.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

/// What to capture and where to write it.
pub struct Args<'a> {
    /// Ports (empty: all).
    pub ports: &'a [String],
    /// rx, tx or both.
    pub point: &'a str,
    /// The filter's words.
    pub filter: &'a [String],
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Output file, or `-`.
    pub write: &'a Path,
}

/// A pcapng writer that adds an interface block the first time a port appears.
struct Out<W: Write> {
    w: PcapNgWriter<W>,
    ids: HashMap<String, u32>,
}

fn write_err(e: impl std::fmt::Display, what: &str) -> Failure {
    Failure {
        code: 1,
        msg: format!("{what}: {e}"),
    }
}

impl<W: Write> Out<W> {
    fn new(w: W) -> Result<Out<W>, pcap_file::PcapError> {
        let shb = SectionHeaderBlock {
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "switchctl {} (nodeswitch)",
                env!("CARGO_PKG_VERSION")
            )))],
            ..SectionHeaderBlock::default()
        };
        Ok(Out {
            w: PcapNgWriter::with_section_header(w, shb)?,
            ids: HashMap::new(),
        })
    }

    fn interface(&mut self, port: &str) -> Result<u32, pcap_file::PcapError> {
        if let Some(&id) = self.ids.get(port) {
            return Ok(id);
        }
        let id = self.ids.len() as u32;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: flowtable::tap::BUFFER_BYTES as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(port.to_string())),
                InterfaceDescriptionOption::IfDescription(Cow::Borrowed("nodeswitch port")),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.w.write_pcapng_block(idb)?;
        self.ids.insert(port.to_string(), id);
        Ok(id)
    }

    fn frame(&mut self, f: &pb::CapturedFrame) -> Result<(), pcap_file::PcapError> {
        let id = self.interface(&f.port)?;
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(f.time_ns),
            original_len: f.original_length.max(f.data.len() as u32),
            data: Cow::Borrowed(&f.data),
            options: vec![EnhancedPacketOption::Flags(if f.sent {
                OUTBOUND
            } else {
                INBOUND
            })],
        };
        self.w.write_pcapng_block(epb)?;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.get_mut().flush()
    }
}

/// Runs `switchctl capture`.
pub async fn run(cli: &Cli, a: Args<'_>) -> Result<(), Failure> {
    let out: Box<dyn Write> = if a.write == Path::new("-") {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let f = std::fs::File::create(a.write)
            .map_err(|e| write_err(e, &a.write.display().to_string()))?;
        Box::new(std::io::BufWriter::new(f))
    };
    let mut c = client(cli).await?;
    let mut stream = c
        .capture(pb::CaptureRequest {
            ports: a.ports.to_vec(),
            point: a.point.to_string(),
            filter: a.filter.join(" "),
        })
        .await?
        .into_inner();
    let mut out = Out::new(out).map_err(|e| write_err(e, "output"))?;
    let (mut written, mut lost) = (0u64, 0u64);
    let sleep = crate::after(a.duration);
    tokio::pin!(sleep);
    let ended = loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = &mut sleep => break "the duration passed",
            _ = tokio::signal::ctrl_c() => break "interrupted",
        };
        let Some(msg) = msg else {
            break "switchd ended the capture";
        };
        for p in &msg.ports {
            out.interface(p).map_err(|e| write_err(e, "output"))?;
        }
        lost = msg.lost;
        let mut done = false;
        for f in &msg.frames {
            if a.count.is_some_and(|n| written >= n) {
                done = true;
                break;
            }
            if out.frame(f).is_err() {
                return finish(written, lost, "the output closed");
            }
            written += 1;
        }
        if out.flush().is_err() {
            return finish(written, lost, "the output closed");
        }
        if done || a.count.is_some_and(|n| written >= n) {
            break "the count was reached";
        }
    };
    let _ = out.flush();
    finish(written, lost, ended)
}

fn finish(written: u64, lost: u64, why: &str) -> Result<(), Failure> {
    eprintln!(
        "switchctl: {written} frames captured, {lost} lost{}; {why}",
        if lost > 0 {
            " (the switch's capture ring was full: this reader was behind)"
        } else {
            ""
        }
    );
    Ok(())
}
