//! A real etcd (Debian's `etcd-server`, which `./dev` installs) for the
//! cluster tests: one member or several, on free loopback ports (ones a
//! stopped member can be started again on).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use featmux_cluster::ClusterStore;

use crate::ports::restartable_port;

/// An etcd cluster of `members` members on free loopback ports, each in
/// its own temp dir; killed on drop.
pub struct Etcd {
    members: Vec<Option<Child>>,
    /// Each member's command line, to start it again.
    commands: Vec<Vec<String>>,
    /// `127.0.0.1:port` of each member's client URL.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

fn spawn(args: &[String]) -> Child {
    Command::new("etcd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt install etcd-server; ./dev does)")
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::cluster(1)
    }

    pub fn cluster(members: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| (restartable_port(), restartable_port()))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let commands: Vec<Vec<String>> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let data_dir = dir.path().join(format!("m{i}"));
                [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    data_dir.to_str().unwrap(),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ]
                .map(str::to_owned)
                .to_vec()
            })
            .collect();
        Etcd {
            members: commands.iter().map(|c| Some(spawn(c))).collect(),
            commands,
            endpoints: ports
                .iter()
                .map(|(client, _)| format!("127.0.0.1:{client}"))
                .collect(),
            _dir: dir,
        }
    }

    /// Starts member `i` again on its data (after [`Self::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} is running");
        self.members[i] = Some(spawn(&self.commands[i]));
    }

    /// A store under `prefix` over every member, once etcd answers.
    pub async fn store(&self, prefix: &str) -> ClusterStore {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(store) = ClusterStore::connect(&self.endpoints, prefix).await {
                if store.tables().await.is_ok() {
                    return store;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `i` (as a crash would).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
