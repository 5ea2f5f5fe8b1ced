//! The region socket, beside the gRPC Unix socket (`PATH.regions`, the
//! same mode): where a trainer takes the descriptor of the shared-memory
//! region its Train stream opened. `OpenRegion` answers this socket's
//! path and a one-time token. A descriptor can only cross a Unix socket
//! as `SCM_RIGHTS` ancillary data, which the gRPC connection's HTTP/2
//! stream has no way to carry: hence a socket of its own.
//!
//! The exchange: the client sends the 16-byte token; the server answers
//! one byte, 1 with the descriptor attached or 0 for a token that is not
//! (or no longer) on offer, and closes the connection.

use std::fs::File;
use std::future::Future;
use std::io::{ErrorKind, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::shared_region::{Offers, Token};

/// How long a connection may take to send its token.
const TOKEN_WAIT: Duration = Duration::from_secs(5);

/// The region socket's path beside the gRPC socket at `grpc_socket`.
pub fn socket_path(grpc_socket: &Path) -> PathBuf {
    let mut path = grpc_socket.as_os_str().to_owned();
    path.push(".regions");
    PathBuf::from(path)
}

/// Answers connections until `stop` resolves.
pub async fn serve(listener: UnixListener, offers: Arc<Offers>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let connection = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return,
        };
        match connection {
            Ok((connection, _)) => {
                let offers = offers.clone();
                tokio::spawn(async move {
                    if let Err(e) = hand_over(connection, &offers).await {
                        tracing::debug!(error = %e, "a region socket connection failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot accept on the region socket"),
        }
    }
}

/// Reads one token and answers it.
async fn hand_over(mut connection: UnixStream, offers: &Offers) -> std::io::Result<()> {
    let mut token: Token = [0; 16];
    tokio::time::timeout(TOKEN_WAIT, connection.read_exact(&mut token))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "no token in time"))??;
    let offered = offers.take(&token);
    loop {
        connection.writable().await?;
        match connection.try_io(Interest::WRITABLE, || {
            send(connection.as_fd(), offered.as_ref())
        }) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            sent => return sent.map(drop),
        }
    }
}

/// Sends the answer byte, with `file`'s descriptor when there is one.
fn send(socket: BorrowedFd<'_>, file: Option<&File>) -> std::io::Result<usize> {
    let fds: Vec<BorrowedFd<'_>> = file.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let answer = [u8::from(file.is_some())];
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&answer)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}
