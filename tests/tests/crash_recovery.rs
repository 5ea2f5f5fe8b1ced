//! Crash safety, with real processes and a real RocksDB: a worker process
//! pushes continuously and is killed with SIGKILL at random moments; after
//! each kill the database must open with its configuration, every row must be
//! exactly a state some prefix of the acknowledged pushes produced (weights
//! and optimizer state together: nothing torn, nothing invented), and every
//! push acknowledged before the last completed flush must be present.
//! A graceful stop must lose nothing at all.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use featmux_engine::backend::{BackendKind, RowData};
use featmux_engine::table::Table;
use featmux_storage::catalog::{Catalog, CatalogOptions};
use featmux_tests::crash;
use rand::{Rng, SeedableRng};

const WORKER: &str = env!("CARGO_BIN_EXE_crash_worker");

/// What the worker said before it died.
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    ready: Option<u64>,
    last_ack: Option<u64>,
    /// Training version of the last acknowledged push.
    last_version: u64,
    flushed: u64,
    closed: bool,
}

struct Worker {
    child: Child,
    heard: Arc<Mutex<Heard>>,
    reader: JoinHandle<()>,
}

fn start_worker(dir: &Path, round: u64, flush_ms: u64) -> Worker {
    let mut child = Command::new(WORKER)
        .arg(dir)
        .arg(round.to_string())
        .arg(flush_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start crash_worker");
    let heard = Arc::new(Mutex::new(Heard::default()));
    let stdout = child.stdout.take().unwrap();
    let sink = heard.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let mut heard = sink.lock().unwrap();
            match line.split_once(' ') {
                Some(("ready", v)) => heard.ready = Some(v.parse().unwrap()),
                Some(("ack", rest)) => {
                    let (i, version) = rest.split_once(' ').expect("ack <i> <version>");
                    heard.last_ack = Some(i.parse().unwrap());
                    heard.last_version = version.parse().unwrap();
                }
                Some(("flushed", v)) => heard.flushed = v.parse().unwrap(),
                _ if line == "closed" => heard.closed = true,
                _ => panic!("unexpected worker output {line:?}"),
            }
        }
    });
    let worker = Worker {
        child,
        heard,
        reader,
    };
    // Wait until recovery finished so kills land during pushes.
    for _ in 0..3000 {
        if worker.heard.lock().unwrap().ready.is_some() {
            return worker;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("worker never became ready");
}

impl Worker {
    fn kill(mut self) -> Heard {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        let heard = *self.heard.lock().unwrap();
        heard
    }

    fn stop(mut self) -> Heard {
        writeln!(self.child.stdin.as_mut().unwrap(), "stop").unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        assert!(status.success(), "graceful stop exited with {status}");
        let heard = *self.heard.lock().unwrap();
        heard
    }
}

fn all_rows(table: &Table) -> RowData {
    let rows: Vec<u64> = (0..table.spec().rows).collect();
    table.backend().read_rows(&rows).unwrap()
}

/// An in-memory copy of the table holding `data`, to replay pushes on.
fn replica(data: &RowData) -> Table {
    let table = Table::create(crash::table_spec(), BackendKind::Cpu).unwrap();
    table.add_feature(crash::feature_spec()).unwrap();
    let rows: Vec<u64> = (0..table.spec().rows).collect();
    table.backend().write_rows(&rows, data).unwrap();
    table
}

/// A row's weights and optimizer state as bit patterns (compared exactly).
type RowBits = (Vec<u32>, Vec<u32>);

fn row_of(data: &RowData, row: usize, width: usize, state_width: usize) -> RowBits {
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    (
        bits(&data.weights[row * width..(row + 1) * width]),
        bits(&data.state[row * state_width..(row + 1) * state_width]),
    )
}

/// Reopens the database (the real recovery path) and checks it against a
/// replay of this round's pushes on `start` (the state the round began with).
/// Returns the recovered rows, the next round's starting state.
fn verify(dir: &Path, round: u64, heard: Heard, start: &RowData, exact: bool) -> RowData {
    let (catalog, _) =
        Catalog::open(dir, CatalogOptions::default()).expect("database opens after the crash");
    assert_eq!(
        catalog.table_names(),
        [crash::TABLE],
        "table config survived"
    );
    let table = catalog.table(crash::TABLE).unwrap();
    assert_eq!(table.spec(), &crash::table_spec());
    assert_eq!(table.features().len(), 1, "feature config survived");
    let recovered = all_rows(&table);
    drop(catalog);

    let v0 = heard.ready.unwrap();
    let acked = heard.last_ack.map_or(0, |i| i + 1); // pushes 0..acked were acknowledged
    let durable = heard.flushed.saturating_sub(v0).min(acked); // pushes 0..durable are flushed
    let (width, state_width) = (crash::DIM, 1);

    // Replay pushes 0..=acked (the last may have been in flight) and record,
    // per row, every state it went through.
    let replay = replica(start);
    let mut history: HashMap<usize, Vec<RowBits>> = HashMap::new();
    let mut min_touches: HashMap<usize, usize> = HashMap::new();
    for i in 0..=acked {
        let (batch, grads) = crash::push(round, i);
        let plan = replay.plan(&batch).unwrap();
        let mut rows: Vec<u64> = plan.gather.rows.clone();
        rows.sort_unstable();
        rows.dedup();
        replay.push_plan(&plan, &grads).unwrap();
        let after = replay.backend().read_rows(&rows).unwrap();
        for (k, &row) in rows.iter().enumerate() {
            let row = row as usize;
            let states = history
                .entry(row)
                .or_insert_with(|| vec![row_of(start, row, width, state_width)]);
            states.push(row_of(&after, k, width, state_width));
            if i < durable {
                min_touches.insert(row, states.len() - 1);
            }
        }
    }
    for row in 0..crash::table_spec().rows as usize {
        let got = row_of(&recovered, row, width, state_width);
        let Some(states) = history.get(&row) else {
            assert!(
                got == row_of(start, row, width, state_width),
                "round {round}: untouched row {row} changed"
            );
            continue;
        };
        let min = min_touches.get(&row).copied().unwrap_or(0);
        // The push numbered `acked` may have been in flight when killed.
        let max = if exact { min } else { states.len() - 1 };
        let found = states.iter().position(|s| *s == got);
        match found {
            None => panic!("round {round}: row {row} holds a state no prefix of the pushes produced (torn or garbage)"),
            Some(k) => assert!(
                (min..=max).contains(&k),
                "round {round}: row {row} is after {k} of its updates, expected {min}..={max} \
                 (acked {acked}, durable {durable})"
            ),
        }
    }
    recovered
}

fn prepare(dir: &Path) -> RowData {
    let (catalog, _) = Catalog::open(dir, CatalogOptions::default()).unwrap();
    let table = catalog
        .create_table(crash::table_spec(), Vec::new())
        .unwrap();
    catalog
        .add_feature(crash::TABLE, crash::feature_spec())
        .unwrap();
    let start = all_rows(&table);
    catalog.close().unwrap();
    start
}

#[test]
fn sigkill_under_push_load_never_corrupts_and_keeps_every_flushed_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut start = prepare(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut total_acked, mut total_durable) = (0, 0);
    let mut handed_out = 0u64; // the highest version any run acknowledged
    for round in 0..12 {
        let worker = start_worker(dir.path(), round, 20);
        let ready = worker.heard.lock().unwrap().ready.unwrap();
        assert!(
            ready >= handed_out,
            "round {round}: versions restart at {ready} after a kill although {handed_out} \
             was already handed out"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        let heard = worker.kill();
        total_acked += heard.last_ack.map_or(0, |i| i + 1);
        total_durable += heard.flushed.saturating_sub(heard.ready.unwrap());
        handed_out = handed_out.max(heard.last_version);
        // Every acknowledged push the kill lost is reported lost: never
        // "durable" by `flushed_version` later.
        let (catalog, _) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
        let lost = catalog.lost_versions().to_vec();
        let on_disk = catalog
            .flush_stats()
            .flushed_version
            .load(std::sync::atomic::Ordering::Acquire);
        drop(catalog);
        if heard.last_version > on_disk {
            assert!(
                lost.iter()
                    .any(|&(first, last)| first <= on_disk + 1 && heard.last_version <= last),
                "round {round}: versions {}..={} were lost but the catalog reports {lost:?}",
                on_disk + 1,
                heard.last_version
            );
        }
        start = verify(dir.path(), round, heard, &start, false);
    }
    assert!(
        total_acked > 1000,
        "the workers barely pushed ({total_acked} pushes)"
    );
    // The durability bound must have been exercised, not vacuous.
    assert!(
        total_durable > total_acked / 2,
        "only {total_durable} of {total_acked} pushes were flushed before their kill"
    );
    eprintln!(
        "12 kills: {total_acked} pushes acknowledged, {total_durable} flushed before their kill"
    );
}

#[test]
fn graceful_stop_flushes_every_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let start = prepare(dir.path());
    // A flush interval far longer than the run: only the shutdown flush
    // can make the pushes durable.
    let worker = start_worker(dir.path(), 0, 600_000);
    std::thread::sleep(Duration::from_millis(400));
    let heard = worker.stop();
    assert!(heard.closed, "worker did not report a clean close");
    assert!(
        heard.last_ack.is_some_and(|i| i > 10),
        "worker barely pushed"
    );
    // Exact: every acknowledged push, and nothing else, is in the database.
    let heard = Heard {
        flushed: heard.ready.unwrap() + heard.last_ack.unwrap() + 1,
        ..heard
    };
    verify(dir.path(), 0, heard, &start, true);
}
