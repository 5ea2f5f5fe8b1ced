//! The gRPC listener on a Unix domain socket, for trainers on the server's
//! own machine: the same services, tokens and limits as over TCP, without
//! the TCP/IP stack on either end, whose cost a co-located client and
//! server both pay on the same cores (docs/DESIGN.md, "Same-machine
//! clients", has the measurements).
//!
//! Binding never deletes anything but a stale socket: a path that is not a
//! socket, or a socket some process still answers on, is refused with an
//! error that says so. The file is removed again when the server stops.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Owner and group may connect; the socket file is the access control a
/// local transport has (tokens still apply on top).
const SOCKET_MODE: u32 = 0o660;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the Unix socket {}: {reason}", path.display())]
pub struct LocalSocketError {
    pub path: PathBuf,
    pub reason: String,
}

/// A bound socket: its listener and the file that names it.
pub struct LocalSocket {
    pub listener: UnixListener,
    pub file: SocketFile,
}

/// The socket's file, removed when this is dropped (after serving ends).
pub struct SocketFile(PathBuf);

impl LocalSocket {
    /// Binds `path`, first removing a socket file no process answers on (a
    /// server that crashed leaves one behind).
    pub async fn bind(path: &Path) -> Result<LocalSocket, LocalSocketError> {
        let refuse = |reason: String| LocalSocketError {
            path: path.to_owned(),
            reason,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(refuse(
                    "the path exists and is not a socket; not removing it".into(),
                ))
            }
            Ok(_) => match UnixStream::connect(path).await {
                Ok(_) => return Err(refuse("another process is listening on it".into())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| refuse(format!("cannot remove the stale socket: {e}")))?;
                }
                Err(e) => return Err(refuse(format!("cannot tell whether it is in use: {e}"))),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(refuse(e.to_string())),
        }
        let listener = UnixListener::bind(path).map_err(|e| refuse(e.to_string()))?;
        // From here on, a failure removes what was created.
        let file = SocketFile(path.to_owned());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| refuse(format!("cannot set its permissions: {e}")))?;
        Ok(LocalSocket { listener, file })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only a socket: if the path was replaced meanwhile, leave it.
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_removes_a_stale_socket_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        // A stale socket: bound, then its listener closed without unlinking.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());

        let socket = LocalSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        drop(socket);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[tokio::test]
    async fn refuses_a_live_socket_and_a_plain_file_without_touching_them() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _first = LocalSocket::bind(&live).await.unwrap();
        let err = LocalSocket::bind(&live).await.err().unwrap();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        assert!(UnixStream::connect(&live).await.is_ok(), "still served");

        let file = dir.path().join("data.bin");
        std::fs::write(&file, b"keep me").unwrap();
        let err = LocalSocket::bind(&file).await.err().unwrap();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
