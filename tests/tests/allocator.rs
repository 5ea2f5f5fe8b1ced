//! `featmux` restarts itself once, in place, with glibc keeping more freed
//! small chunks per thread (cli/src/allocator.rs): the running server's
//! environment says so, and an operator's own setting of it wins. (How
//! the setting joins other tunables is a unit test there: glibc rewrites a
//! list of several in the memory `/proc/PID/environ` reads.)
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use featmux_tests::server::{ServerSettings, TestServer};

/// `GLIBC_TUNABLES` of a server started with `tunables` in its environment.
fn running_with(dir: &std::path::Path, tunables: Option<&str>) -> String {
    // Safe in this binary's one test: no other thread reads the
    // environment while it changes (the server inherits it at spawn).
    match tunables {
        Some(tunables) => std::env::set_var("GLIBC_TUNABLES", tunables),
        None => std::env::remove_var("GLIBC_TUNABLES"),
    }
    let server = TestServer::start(dir, &ServerSettings::default());
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).expect("environ");
    server.stop();
    environ
        .split(|&b| b == 0)
        .filter_map(|var| var.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .next()
        .unwrap_or_default()
}

#[test]
fn the_server_runs_with_more_freed_chunks_per_thread_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert_eq!(running_with(&data, None), "glibc.malloc.tcache_count=128");
    assert_eq!(
        running_with(&data, Some("glibc.malloc.tcache_count=7")),
        "glibc.malloc.tcache_count=7"
    );
}
