//! How the client commands reach a server: one set of global flags (and
//! environment variables) shared by every command that talks gRPC.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use featmux_client::ClientOptions;

/// How to reach the server (shared by every client command).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server gRPC endpoint: `http://host:port`, `https://host:port`, or
    /// `unix:///path` (the server's `grpc_unix_socket`).
    #[arg(
        long,
        global = true,
        env = "FEATMUX_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token (admin token for admin commands).
    #[arg(long, global = true, env = "FEATMUX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate for an https endpoint with a private CA.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    /// The client options these flags describe (the CA certificate read).
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let mut options = ClientOptions::new(self.addr.clone());
        options.token = self.token.clone();
        if let Some(path) = &self.ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
            options.ca_cert = Some(pem);
        }
        Ok(options)
    }
}
