//! Measuring the link between two agents: `tern probe`. The sending agent
//! streams bytes to the other over the same QUIC connection setup a
//! migration uses (mutual TLS, the same windows and buffers), and reports
//! the rate it got. The receiving agent only counts and drops them.

use crate::context::Agent;
use std::time::{Duration, Instant};
use tern_proto::frame::write_frame;
use tern_proto::{ProbeReport, ProbeRequest, Request, Response, MAX_PROBE_BYTES};
use tern_transport::rpc::Session;

const CHUNK: usize = 1 << 20;

/// Sends `req.bytes` bytes to `req.target` and measures it.
pub async fn probe(agent: &Agent, req: ProbeRequest) -> anyhow::Result<ProbeReport> {
    anyhow::ensure!(req.bytes > 0 && req.bytes <= MAX_PROBE_BYTES, "a probe sends 1 byte to {MAX_PROBE_BYTES} bytes, not {}", req.bytes);
    let addr = req.target.address.parse().map_err(|e| anyhow::anyhow!("bad target address {}: {e}", req.target.address))?;
    let session = Session::connect(&agent.endpoint, addr, &req.target.name, &agent.cfg.name).await?;
    let stats0 = session.conn.stats();
    let (mut send, mut recv) = session.open(&Request::Sink { bytes: req.bytes }).await?;
    // Incompressible, though nothing on the path compresses: what a
    // container's memory looks like at worst.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let buf: Vec<u8> = (0..CHUNK)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let t0 = Instant::now();
    let mut left = req.bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    let limit = Duration::from_secs(60) + Duration::from_secs(req.bytes / (1 << 20)); // >= 1 MiB/s
    let reply = session.read::<Response>(&mut recv, limit).await?;
    let ms = t0.elapsed().as_millis() as u64;
    let stats = session.conn.stats();
    session.conn.close(0u32.into(), b"probe done");
    match reply {
        Response::Sunk { bytes, .. } if bytes == req.bytes => {
            if bytes >= 32 << 20 {
                agent.note_link_rate(&req.target.name, bytes as f64 / (ms.max(1) as f64 / 1000.0));
            }
            Ok(ProbeReport {
                from: agent.cfg.name.clone(),
                to: req.target.name,
                bytes,
                ms,
                bytes_on_wire: stats.udp_tx.bytes - stats0.udp_tx.bytes,
                lost_packets: stats.path.lost_packets - stats0.path.lost_packets,
                rtt_us: stats.path.rtt.as_micros() as u64,
            })
        }
        Response::Sunk { bytes, .. } => anyhow::bail!("{} received {bytes} of {} bytes", req.target.name, req.bytes),
        Response::Error(e) => anyhow::bail!("{}: {}", req.target.name, e.message),
        other => anyhow::bail!("{} answered {other:?} to the probe", req.target.name),
    }
}

/// Reads and drops the `bytes` bytes of a probe, then says how many came.
pub async fn sink(bytes: u64, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> anyhow::Result<()> {
    if bytes > MAX_PROBE_BYTES {
        let message = format!("refused: a probe sends at most {MAX_PROBE_BYTES} bytes, not {bytes}");
        write_frame(&mut send, &Response::Error(tern_proto::RemoteError { message })).await?;
        let _ = send.finish();
        return Ok(());
    }
    let t0 = Instant::now();
    let mut got = 0u64;
    let reply = loop {
        match recv.read_chunk(CHUNK, false).await {
            Ok(Some(c)) => {
                got += c.bytes.len() as u64;
                if got > bytes {
                    break Response::Error(tern_proto::RemoteError { message: format!("more than the {bytes} bytes announced") });
                }
            }
            Ok(None) => break Response::Sunk { bytes: got, ms: t0.elapsed().as_millis() as u64 },
            Err(e) => anyhow::bail!("the probe stream broke: {e}"),
        }
    };
    write_frame(&mut send, &reply).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}
