//! The Redis peer of `featmux bench`: the "naive embedding store" a team
//! would otherwise reach for. Every (feature, value) embedding is one binary
//! value under its own key; a batch is fetched with MGET (one command for
//! the whole batch, or pipelined commands of `--mget-keys` keys each) and the
//! client pools bags itself, because Redis can only ship rows.
//!
//! Speaks RESP2 directly over a tokio socket: no client library, so the cost
//! measured is Redis's and the wire's, not a driver's.

use std::collections::HashSet;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One connection to a Redis server.
pub struct RedisConnection {
    stream: BufReader<TcpStream>,
    /// Reused command buffer.
    command: Vec<u8>,
    /// Reused line and value buffers for replies.
    line: Vec<u8>,
    value: Vec<u8>,
}

/// A batch's keys in feature-major, example, value order (the KJT order),
/// so key `i` belongs to bag `i / values`.
pub struct RedisBatch {
    pub keys: Vec<String>,
    /// Values per bag.
    pub values: usize,
}

/// The key of one feature value.
pub fn key(feature: usize, value: &str) -> String {
    format!("f{feature}:{value}")
}

fn push_bulk(buf: &mut Vec<u8>, item: &[u8]) {
    buf.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
    buf.extend_from_slice(item);
    buf.extend_from_slice(b"\r\n");
}

fn push_command<'a>(buf: &mut Vec<u8>, name: &[u8], args: impl ExactSizeIterator<Item = &'a [u8]>) {
    buf.extend_from_slice(format!("*{}\r\n", args.len() + 1).as_bytes());
    push_bulk(buf, name);
    for arg in args {
        push_bulk(buf, arg);
    }
}

fn parse_len(line: &[u8], kind: u8) -> anyhow::Result<i64> {
    let text = std::str::from_utf8(line).unwrap_or("?").trim_end();
    match line.first() {
        Some(&b) if b == kind => text[1..]
            .parse()
            .map_err(|_| anyhow::anyhow!("bad RESP length line `{text}`")),
        Some(b'-') => Err(anyhow::anyhow!("redis error: {}", &text[1..])),
        _ => Err(anyhow::anyhow!("unexpected RESP reply `{text}`")),
    }
}

impl RedisConnection {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("redis at {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(RedisConnection {
            stream: BufReader::with_capacity(1 << 16, stream),
            command: Vec::new(),
            line: Vec::new(),
            value: Vec::new(),
        })
    }

    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            return Err(anyhow::anyhow!("redis closed the connection"));
        }
        Ok(())
    }

    async fn send(&mut self) -> anyhow::Result<()> {
        self.stream.get_mut().write_all(&self.command).await?;
        Ok(())
    }

    /// Stores `keys` (each `value` bytes long, contents from `fill`) with
    /// pipelined MSETs of 1,000 keys.
    pub async fn load(
        &mut self,
        keys: &HashSet<String>,
        fill: impl Fn(&str) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let keys: Vec<&String> = keys.iter().collect();
        for group in keys.chunks(1000) {
            let values: Vec<Vec<u8>> = group.iter().map(|k| fill(k)).collect();
            let mut args: Vec<&[u8]> = Vec::with_capacity(group.len() * 2);
            for (k, v) in group.iter().zip(&values) {
                args.push(k.as_bytes());
                args.push(v);
            }
            self.command.clear();
            push_command(&mut self.command, b"MSET", args.into_iter());
            self.send().await?;
            self.read_line().await?;
            if !self.line.starts_with(b"+OK") {
                return Err(anyhow::anyhow!(
                    "MSET answered `{}`",
                    String::from_utf8_lossy(&self.line).trim_end()
                ));
            }
        }
        Ok(())
    }

    /// Fetches every key of `batch` with MGETs of `per_command` keys (0: one
    /// MGET), all written before any reply is read (pipelined), and pools
    /// each bag's `width` floats by summing into `out` (bags × width).
    /// Returns the value bytes received.
    pub async fn fetch_pooled(
        &mut self,
        batch: &RedisBatch,
        per_command: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) -> anyhow::Result<u64> {
        let per_command = if per_command == 0 {
            batch.keys.len()
        } else {
            per_command
        };
        self.command.clear();
        for group in batch.keys.chunks(per_command) {
            push_command(
                &mut self.command,
                b"MGET",
                group.iter().map(|k| k.as_bytes()),
            );
        }
        self.send().await?;
        out.clear();
        out.resize(batch.keys.len() / batch.values * width, 0.0);
        let mut received = 0u64;
        let mut index = 0usize;
        for group in batch.keys.chunks(per_command) {
            self.read_line().await?;
            let n = parse_len(&self.line, b'*')?;
            if n != group.len() as i64 {
                return Err(anyhow::anyhow!("MGET of {} keys answered {n}", group.len()));
            }
            for key in group {
                self.read_line().await?;
                let len = parse_len(&self.line, b'$')?;
                if len != (width * 4) as i64 {
                    return Err(anyhow::anyhow!(
                        "key `{key}`: {len}-byte value, expected {} (not loaded?)",
                        width * 4
                    ));
                }
                self.value.resize(width * 4 + 2, 0);
                self.stream.read_exact(&mut self.value).await?;
                let bag = &mut out[index / batch.values * width..][..width];
                for (acc, b) in bag.iter_mut().zip(self.value.chunks_exact(4)) {
                    *acc += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                received += (width * 4) as u64;
                index += 1;
            }
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut buf = Vec::new();
        push_command(&mut buf, b"MGET", [&b"f0:k1"[..], b"f1:k22"].into_iter());
        assert_eq!(
            buf,
            b"*3\r\n$4\r\nMGET\r\n$5\r\nf0:k1\r\n$6\r\nf1:k22\r\n".to_vec()
        );
    }

    #[test]
    fn reply_lengths_and_errors_are_parsed() {
        assert_eq!(parse_len(b"*26\r\n", b'*').unwrap(), 26);
        assert_eq!(parse_len(b"$-1\r\n", b'$').unwrap(), -1);
        assert_eq!(
            parse_len(b"-ERR wrong number\r\n", b'*')
                .unwrap_err()
                .to_string(),
            "redis error: ERR wrong number"
        );
        assert!(parse_len(b"+OK\r\n", b'$').is_err());
    }
}
