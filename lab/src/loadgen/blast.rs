//! The loopback ceiling of `featmux bench`: a plain TCP request/response
//! exchange with the same byte counts as a gRPC lookup (request: the encoded
//! LookupRequest's size; response: the embeddings' size), no protocol and
//! no work. Whatever featmux spends beyond this is framing, HTTP/2,
//! protobuf and the engine.
//!
//! The responder runs on plain threads in the bench process (one per
//! connection), so client and responder share the machine the way the bench
//! client and `featmux serve` do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts the responder on an ephemeral loopback port. Each request is a
/// 16-byte header (request bytes, response bytes; u64 LE) and the request
/// bytes; the answer is the response bytes.
pub fn start_responder() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || respond(stream));
        }
    });
    Ok(addr)
}

fn respond(mut stream: std::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut header = [0u8; 16];
    let mut request = Vec::new();
    let mut response = Vec::new();
    while stream.read_exact(&mut header).is_ok() {
        let (req, resp) = header.split_at(8);
        let req = u64::from_le_bytes(req.try_into().expect("8 bytes")) as usize;
        let resp = u64::from_le_bytes(resp.try_into().expect("8 bytes")) as usize;
        request.resize(req, 0);
        response.resize(resp, 0);
        if stream.read_exact(&mut request).is_err() || stream.write_all(&response).is_err() {
            return;
        }
    }
}

/// One client connection to the responder.
pub struct BlastConnection {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl BlastConnection {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(BlastConnection {
            stream,
            request: Vec::new(),
            response: Vec::new(),
        })
    }

    /// Sends `request_bytes`, receives `response_bytes`; returns the latter.
    pub async fn exchange(
        &mut self,
        request_bytes: usize,
        response_bytes: usize,
    ) -> anyhow::Result<u64> {
        self.request.clear();
        self.request
            .extend_from_slice(&(request_bytes as u64).to_le_bytes());
        self.request
            .extend_from_slice(&(response_bytes as u64).to_le_bytes());
        self.request.resize(16 + request_bytes, 0);
        self.stream.write_all(&self.request).await?;
        self.response.resize(response_bytes, 0);
        self.stream.read_exact(&mut self.response).await?;
        Ok(response_bytes as u64)
    }
}
