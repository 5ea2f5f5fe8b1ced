//! `featmux-report performance`: turns one run of `scripts/bench-peers.sh`
//! (a folder of `featmux bench` JSON reports, iperf3's JSON and a machine
//! description) into `docs/results/performance.md` and its scaling plot.
//!
//! Every ratio divides two figures of the same run; with `--before`, the
//! same figures of an earlier run (before an optimization) are shown beside
//! them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plot::{self, Panel, Series};

/// One run's results, by file stem (`lookup`, `redis-mget`, …).
pub struct Results {
    runs: BTreeMap<String, Value>,
    machine: String,
}

impl Results {
    /// Reads every `*.json` of `dir` and its `machine.txt`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut runs = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
                let stem = path
                    .file_stem()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned();
                runs.insert(stem, value);
            }
        }
        if runs.is_empty() {
            return Err(format!("{}: no JSON results", dir.display()));
        }
        let machine = std::fs::read_to_string(dir.join("machine.txt")).unwrap_or_default();
        Ok(Results { runs, machine })
    }

    fn run(&self, name: &str) -> Result<&Value, String> {
        self.runs
            .get(name)
            .ok_or_else(|| format!("missing result `{name}.json`"))
    }

    /// Run `name` and its repeats `name-1`, `name-2`, ….
    fn repeats(&self, name: &str) -> Vec<&Value> {
        let prefix = format!("{name}-");
        self.runs
            .iter()
            .filter(|(n, _)| {
                *n == name
                    || n.strip_prefix(&prefix)
                        .is_some_and(|i| i.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(_, run)| run)
            .collect()
    }

    /// The median of `field` over run `name` and its repeats.
    fn median(&self, name: &str, field: &str) -> Result<f64, String> {
        let mut values = self
            .repeats(name)
            .iter()
            .map(|run| run.pointer(field).and_then(Value::as_f64))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| format!("a run of `{name}` has no number at `{field}`"))?;
        if values.is_empty() {
            return Err(format!("missing result `{name}.json`"));
        }
        Ok(median(&mut values))
    }

    /// Rounds `name-1`, `name-2`, … of `field`, up to the first missing.
    fn rounds(&self, name: &str, field: &str) -> Result<Vec<f64>, String> {
        (1..)
            .map(|k| format!("{name}-{k}"))
            .take_while(|round| self.runs.contains_key(round))
            .map(|round| self.get(&round, field))
            .collect()
    }

    /// A number of run `name` at JSON pointer `field` (e.g. `/floats_per_s`).
    fn get(&self, name: &str, field: &str) -> Result<f64, String> {
        self.run(name)?
            .pointer(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`{name}.json` has no number at `{field}`"))
    }
}

/// The median of `values` (not empty); sorts them.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// iperf3's received bandwidth, in bits/s.
const IPERF3_BITS: (&str, &str) = ("iperf3", "/end/sum_received/bits_per_second");

/// A row of the ratio table: `featmux` ÷ `peer`, both of one run.
struct Ratio {
    what: &'static str,
    target: &'static str,
    featmux: (&'static str, &'static str),
    peer: (&'static str, &'static str),
    /// Converts the peer's figure to the unit of featmux's (bits → MB).
    peer_scale: f64,
    unit: &'static str,
}

const RATIOS: &[Ratio] = &[
    Ratio {
        what: "gRPC lookup vs Redis, one MGET per batch (floats/s; 4096 ex × 26 single-valued features × 16 dims, 8 clients)",
        target: "≥ 2×",
        featmux: ("lookup", "/floats_per_s"),
        peer: ("redis-mget", "/floats_per_s"),
        peer_scale: 1.0,
        unit: "floats/s",
    },
    Ratio {
        what: "… vs Redis, pipelined MGETs of 1,000 keys",
        target: "≥ 2×",
        featmux: ("lookup", "/floats_per_s"),
        peer: ("redis-mget-pipelined", "/floats_per_s"),
        peer_scale: 1.0,
        unit: "floats/s",
    },
    Ratio {
        what: "gRPC lookup payload vs plain TCP exchange of the same sizes",
        target: "",
        featmux: ("lookup", "/payload_mb_per_s"),
        peer: ("tcp-blast", "/payload_mb_per_s"),
        peer_scale: 1.0,
        unit: "MB/s",
    },
    Ratio {
        what: "gRPC lookup payload vs iperf3 over loopback, one stream",
        target: "≥ 60%",
        featmux: ("lookup", "/payload_mb_per_s"),
        peer: IPERF3_BITS,
        peer_scale: 1.0 / 8e6,
        unit: "MB/s",
    },
    Ratio {
        what: "bags of 20, sum pooling: gRPC lookup vs Redis MGET + client pooling (values/s; 512 ex × 26 features)",
        target: "≥ 10×",
        featmux: ("bags-lookup", "/values_per_s"),
        peer: ("bags-redis-mget", "/values_per_s"),
        peer_scale: 1.0,
        unit: "values/s",
    },
    Ratio {
        what: "… vs Redis, pipelined MGETs of 1,000 keys",
        target: "≥ 10×",
        featmux: ("bags-lookup", "/values_per_s"),
        peer: ("bags-redis-mget-pipelined", "/values_per_s"),
        peer_scale: 1.0,
        unit: "values/s",
    },
    Ratio {
        what: "lookup: service vs in-process engine (examples/s)",
        target: "≥ 70%",
        featmux: ("lookup", "/examples_per_s"),
        peer: ("engine-lookup", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… the same lookups answered in bf16 (`--precision bf16`: half the bytes, each value rounded; not the in-process output)",
        target: "",
        featmux: ("lookup-bf16", "/examples_per_s"),
        peer: ("engine-lookup", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "push, row-wise Adagrad: service vs in-process engine (examples/s)",
        target: "≥ 85%",
        featmux: ("push-rowwise-adagrad", "/examples_per_s"),
        peer: ("engine-push-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… the same pushes with bf16 gradients (`--push-precision bf16`: half the bytes, each gradient rounded)",
        target: "",
        featmux: ("push-rowwise-adagrad-bf16", "/examples_per_s"),
        peer: ("engine-push-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "train stream (lookup with ticket + push), row-wise Adagrad: service vs in-process lookup + push",
        target: "≥ 70%",
        featmux: ("train-rowwise-adagrad", "/examples_per_s"),
        peer: ("engine-train-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… the same train stream in bf16 both ways (answers and gradients)",
        target: "",
        featmux: ("train-rowwise-adagrad-bf16", "/examples_per_s"),
        peer: ("engine-train-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… the same three over the server's Unix socket (a trainer on the server's machine): lookup",
        target: "≥ 70%",
        featmux: ("lookup-unix", "/examples_per_s"),
        peer: ("engine-lookup", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… push over the Unix socket",
        target: "≥ 85%",
        featmux: ("push-rowwise-adagrad-unix", "/examples_per_s"),
        peer: ("engine-push-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… train stream over the Unix socket",
        target: "≥ 70%",
        featmux: ("train-rowwise-adagrad-unix", "/examples_per_s"),
        peer: ("engine-train-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… on the Unix socket with a shared-memory region (embeddings and gradients through memory, `--shared-region`): lookup",
        target: "≥ 70%",
        featmux: ("lookup-region", "/examples_per_s"),
        peer: ("engine-lookup", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… push with a shared-memory region (gradients and batch through memory)",
        target: "≥ 85%",
        featmux: ("push-rowwise-adagrad-region", "/examples_per_s"),
        peer: ("engine-push-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… train stream with a shared-memory region",
        target: "≥ 70%",
        featmux: ("train-rowwise-adagrad-region", "/examples_per_s"),
        peer: ("engine-train-rowwise-adagrad", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "one trainer (`--concurrency 1`; the server shares each request with its idle bulk threads, the in-process engine with its helper threads): lookup over TCP vs in-process (examples/s)",
        target: "",
        featmux: ("lookup-c1", "/examples_per_s"),
        peer: ("engine-lookup-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… one trainer: lookup over a shared-memory region",
        target: "",
        featmux: ("lookup-region-c1", "/examples_per_s"),
        peer: ("engine-lookup-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… one trainer: push, row-wise Adagrad over TCP",
        target: "",
        featmux: ("push-c1", "/examples_per_s"),
        peer: ("engine-push-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… one trainer: push, row-wise Adagrad over a shared-memory region",
        target: "",
        featmux: ("push-region-c1", "/examples_per_s"),
        peer: ("engine-push-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… one trainer: train stream, row-wise Adagrad over TCP",
        target: "",
        featmux: ("train-c1", "/examples_per_s"),
        peer: ("engine-train-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… one trainer: train stream, row-wise Adagrad over a shared-memory region",
        target: "",
        featmux: ("train-region-c1", "/examples_per_s"),
        peer: ("engine-train-c1", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "split cores (the server and the in-process engine on the first half of the CPUs, the trainer on the rest: a trainer with cores of its own): lookup over TCP vs in-process (examples/s)",
        target: "",
        featmux: ("split-lookup", "/examples_per_s"),
        peer: ("split-engine-lookup", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… split cores: push, row-wise Adagrad over TCP",
        target: "",
        featmux: ("split-push", "/examples_per_s"),
        peer: ("split-engine-push", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "… split cores: train stream, row-wise Adagrad over TCP",
        target: "",
        featmux: ("split-train", "/examples_per_s"),
        peer: ("split-engine-train", "/examples_per_s"),
        peer_scale: 1.0,
        unit: "examples/s",
    },
    Ratio {
        what: "in-process lookup vs PyTorch nn.EmbeddingBag forward (rows/s; int64 ids, 4096 ex × 26 single-valued, d = 16)",
        target: "≥ 100%",
        featmux: ("engine-lookup-ids", "/rows_per_s"),
        peer: ("torch-single-d16-embedding-bag", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
    Ratio {
        what: "… single-valued, d = 64",
        target: "≥ 100%",
        featmux: ("engine-lookup-ids-d64", "/rows_per_s"),
        peer: ("torch-single-d64-embedding-bag", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
    Ratio {
        what: "… bags of 20 (512 ex × 26 features), d = 16",
        target: "≥ 100%",
        featmux: ("bags-engine-lookup", "/rows_per_s"),
        peer: ("torch-bags-d16-embedding-bag", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
    Ratio {
        what: "… bags of 20, d = 64",
        target: "≥ 100%",
        featmux: ("bags-engine-lookup-d64", "/rows_per_s"),
        peer: ("torch-bags-d64-embedding-bag", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
    Ratio {
        what: "in-process lookup vs FBGEMM TBE forward on the CPU (TorchRec's kernel; single-valued, d = 16)",
        target: "",
        featmux: ("engine-lookup-ids", "/rows_per_s"),
        peer: ("torch-single-d16-tbe", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
    Ratio {
        what: "in-process lookup + push (int64 ids), row-wise Adagrad vs FBGEMM TBE forward + backward + fused row-wise Adagrad",
        target: "≥ 100%",
        featmux: ("engine-train-rowwise-adagrad-ids", "/rows_per_s"),
        peer: ("torch-single-d16-tbe-train", "/rows_per_s"),
        peer_scale: 1.0,
        unit: "rows/s",
    },
];

/// A service path and the in-process run that does the same engine work.
struct ServicePath {
    what: &'static str,
    service: &'static str,
    engine: &'static str,
}

const SERVICE_PATHS: &[ServicePath] = &[
    ServicePath {
        what: "lookup",
        service: "lookup",
        engine: "engine-lookup",
    },
    ServicePath {
        what: "push, row-wise Adagrad",
        service: "push-rowwise-adagrad",
        engine: "engine-push-rowwise-adagrad",
    },
    ServicePath {
        what: "train stream, row-wise Adagrad",
        service: "train-rowwise-adagrad",
        engine: "engine-train-rowwise-adagrad",
    },
];

/// The most a service path can reach of the in-process rate when client,
/// server and engine share the machine's cores: each call costs the
/// engine's work (E MB/s of payload in-process) plus moving the same
/// payload through loopback TCP (T MB/s, the plain exchange), so at most
/// 1 / (1 + E/T) = T / (E + T).
fn shared_core_ceiling(engine_mb_per_s: f64, tcp_mb_per_s: f64) -> f64 {
    tcp_mb_per_s / (engine_mb_per_s + tcp_mb_per_s)
}

fn write_ceilings(w: &mut String, results: &Results) -> Result<(), String> {
    writeln!(w, "\n## What sharing the cores allows\n").unwrap();
    writeln!(
        w,
        "A call through the service does at least the in-process engine's work plus moving \
         its payload through loopback TCP, on the cores the client uses too. With E the \
         in-process payload rate and T the plain TCP exchange's (`tcp-blast`), the service \
         reaches at most T / (E + T) of the in-process rate. An estimate: it takes TCP's cost \
         per byte to be the same both ways; the in-process runs do the server's durability \
         work (its flusher) too. E and T are the medians of their rounds; *reached* is the \
         median of the rounds' shares.\n"
    )
    .unwrap();
    writeln!(
        w,
        "| path | in-process payload MB/s | TCP exchange MB/s | ceiling | reached | share of the ceiling |"
    )
    .unwrap();
    writeln!(w, "|---|---:|---:|---:|---:|---:|").unwrap();
    // Medians over the rounds where the runs were repeated; the share
    // reached is the median of the rounds' own shares, as in the ratios.
    let tcp = results.median("tcp-blast", "/payload_mb_per_s")?;
    for path in SERVICE_PATHS {
        let engine = results.median(path.engine, "/payload_mb_per_s")?;
        let ceiling = shared_core_ceiling(engine, tcp);
        let reached = paired_figures(
            results,
            (path.service, "/examples_per_s"),
            (path.engine, "/examples_per_s"),
            1.0,
        )?
        .ratio;
        writeln!(
            w,
            "| {} | {engine:.0} | {tcp:.0} | {:.0}% | {:.0}% | {:.0}% |",
            path.what,
            ceiling * 100.0,
            reached * 100.0,
            reached / ceiling * 100.0
        )
        .unwrap();
    }
    Ok(())
}

fn fmt_num(v: f64) -> String {
    plot::si(v)
}

/// One comparison's figures in one run.
struct RatioFigures {
    featmux: f64,
    peer: f64,
    /// featmux ÷ peer: with rounds, the median of the rounds' ratios.
    ratio: f64,
    /// Each round's ratio, in round order (none for a single pair of runs).
    rounds: Vec<f64>,
}

/// A comparison's figures. Where both sides ran in alternating rounds
/// (`NAME-1`, `NAME-2`, … on each side, each round featmux's run and then
/// the peer's), each round's ratio divides two runs made back to back, so
/// the host's drift between rounds hits both alike; the ratio is their
/// median, and featmux's and the peer's figures are the medians of their
/// own runs. Where only one side ran in rounds (a service run against a
/// one-off Redis run), that side's median is divided by the other's run.
fn ratio_figures(results: &Results, r: &Ratio) -> Result<RatioFigures, String> {
    paired_figures(results, r.featmux, r.peer, r.peer_scale)
}

/// [`ratio_figures`] of `featmux` ÷ `peer` (run name, JSON pointer), the
/// peer's figures scaled by `peer_scale`.
fn paired_figures(
    results: &Results,
    featmux: (&str, &str),
    peer: (&str, &str),
    peer_scale: f64,
) -> Result<RatioFigures, String> {
    let mut featmux_rounds = results.rounds(featmux.0, featmux.1)?;
    let peer_rounds = results.rounds(peer.0, peer.1)?;
    if featmux_rounds.is_empty() || peer_rounds.is_empty() {
        let (f, p) = (
            results.median(featmux.0, featmux.1)?,
            results.median(peer.0, peer.1)? * peer_scale,
        );
        return Ok(RatioFigures {
            featmux: f,
            peer: p,
            ratio: f / p,
            rounds: Vec::new(),
        });
    }
    if featmux_rounds.len() != peer_rounds.len() {
        return Err(format!(
            "`{}` ran {} rounds but `{}` {}: a ratio needs both runs of every round",
            featmux.0,
            featmux_rounds.len(),
            peer.0,
            peer_rounds.len()
        ));
    }
    let mut peer_rounds: Vec<f64> = peer_rounds.iter().map(|p| p * peer_scale).collect();
    // The rounds' ratios before the medians below sort each side.
    let rounds: Vec<f64> = featmux_rounds
        .iter()
        .zip(&peer_rounds)
        .map(|(f, p)| f / p)
        .collect();
    Ok(RatioFigures {
        featmux: median(&mut featmux_rounds),
        peer: median(&mut peer_rounds),
        ratio: median(&mut rounds.clone()),
        rounds,
    })
}

/// A ratio as the table shows it: a percentage below 1, a multiple above.
fn fmt_ratio(x: f64) -> String {
    if x < 1.0 {
        format!("{:.0}%", x * 100.0)
    } else {
        format!("{x:.2}×")
    }
}

/// The markdown report.
pub fn markdown(
    results: &Results,
    before: Option<&Results>,
    plot_name: &str,
) -> Result<String, String> {
    let mut md = String::new();
    let w = &mut md;
    writeln!(
        w,
        "# featmux performance: side by side with Redis and the loopback limit\n"
    )
    .unwrap();
    writeln!(
        w,
        "Generated by `scripts/bench-peers.sh` (which ran every command below in one run, \
         then `featmux-report performance`). Client and server share the same machine, so \
         every figure includes the client's own cost. Ratios divide two figures of the same \
         run. Where a comparison ran in rounds (each round its two sides back to back: the \
         in-process run and then the service's, or featmux's run and then the peer's), its \
         ratio is the median of the rounds' ratios, each listed: the host's drift between \
         runs (a fifth or more here) then hits both sides of a round alike. A figure of \
         runs repeated in rounds is their median.{}\n",
        if before.is_some() {
            " *Before* columns are the same figures from the run before the optimizations \
             listed in [profile.md](profile.md)."
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(w, "## Machine\n\n```\n{}```\n", results.machine).unwrap();
    // Absolute before → after figures only compare on the same hardware.
    let cpu = |machine: &str| {
        machine
            .lines()
            .find(|l| l.starts_with("cpu:"))
            .map(str::to_owned)
    };
    if let Some(before) = before.filter(|b| cpu(&b.machine) != cpu(&results.machine)) {
        writeln!(
            w,
            "The *before* run was on other hardware, so its absolute figures do not compare \
             with this run's; its ratios do:\n\n```\n{}```\n",
            before.machine
        )
        .unwrap();
    }

    writeln!(w, "## Ratios\n").unwrap();
    if before.is_some() {
        writeln!(
            w,
            "| comparison | featmux | peer | ratio | before: featmux | before: ratio | target |"
        )
        .unwrap();
        writeln!(w, "|---|---:|---:|---:|---:|---:|---|").unwrap();
    } else {
        writeln!(w, "| comparison | featmux | peer | ratio | target |").unwrap();
        writeln!(w, "|---|---:|---:|---:|---|").unwrap();
    }
    for r in RATIOS {
        let now = ratio_figures(results, r)?;
        // A comparison added since the earlier run has no before figures.
        let old = before.and_then(|b| ratio_figures(b, r).ok());
        let (what, unit, target) = (r.what, r.unit, r.target);
        let (f, p) = (fmt_num(now.featmux), fmt_num(now.peer));
        let mut ratio = format!("**{}**", fmt_ratio(now.ratio));
        if !now.rounds.is_empty() {
            let each: Vec<String> = now.rounds.iter().map(|&x| fmt_ratio(x)).collect();
            write!(ratio, " (rounds: {})", each.join(", ")).unwrap();
        }
        match old {
            Some(old) => writeln!(
                w,
                "| {what} | {f} {unit} | {p} | {ratio} | {} | {} | {target} |",
                fmt_num(old.featmux),
                fmt_ratio(old.ratio)
            ),
            None if before.is_none() => {
                writeln!(w, "| {what} | {f} {unit} | {p} | {ratio} | {target} |")
            }
            None => writeln!(
                w,
                "| {what} | {f} {unit} | {p} | {ratio} | – | – | {target} |"
            ),
        }
        .unwrap();
    }

    write_ceilings(w, results)?;

    writeln!(
        w,
        "\n## HTTP single-example lookup (26 features), open loop\n"
    )
    .unwrap();
    writeln!(w, "Latency counted from each request's scheduled time (no coordinated omission). Targets: p99 < 1 ms at 1,000 req/s, < 2 ms at 5,000 req/s. Where a rate ran several times, each figure is the median of the runs, and every run's p99 is listed so host noise is visible.\n").unwrap();
    writeln!(
        w,
        "| rate (req/s) | achieved | p50 µs | p90 µs | p99 µs | max µs | p99 of each run |{}",
        if before.is_some() {
            " before: p50 | before: p99 |"
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(
        w,
        "|---:|---:|---:|---:|---:|---:|---|{}",
        if before.is_some() { "---:|---:|" } else { "" }
    )
    .unwrap();
    for rate in [100, 1000, 5000] {
        let p = |r: &Results, q: &str| r.median(&format!("http-{rate}"), q);
        let old = match before {
            Some(b) => format!(
                " {:.0} | {:.0} |",
                p(b, "/latency_us/p50")?,
                p(b, "/latency_us/p99")?
            ),
            None => String::new(),
        };
        let each: Vec<String> = results
            .repeats(&format!("http-{rate}"))
            .iter()
            .filter_map(|run| run.pointer("/latency_us/p99").and_then(Value::as_f64))
            .map(|v| format!("{v:.0}"))
            .collect();
        writeln!(
            w,
            "| {rate} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |{old}",
            p(results, "/requests_per_s")?,
            p(results, "/latency_us/p50")?,
            p(results, "/latency_us/p90")?,
            p(results, "/latency_us/p99")?,
            p(results, "/latency_us/max")?,
            each.join(", "),
        )
        .unwrap();
    }

    writeln!(
        w,
        "\n## Scaling\n\n![throughput vs batch size, table rows and features]({plot_name})\n"
    )
    .unwrap();
    writeln!(w, "Rows/s of gRPC lookups through the service and of the same lookups in-process, 8 clients; single-valued features, 16 dims. Left: 26 features, 10^6 rows, varying examples per batch. Middle: 4,096 × 26, varying table rows (uniform keys over a vocabulary of 10× the rows, so larger tables miss the CPU caches). Right: 4,096 examples, 10^6 rows, varying features.\n").unwrap();

    writeln!(w, "## Every run\n").unwrap();
    writeln!(w, "| run | workload | examples × features × values | clients | req/s | examples/s | rows/s | MB/s | p50 ms | p99 ms |").unwrap();
    writeln!(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for (name, run) in &results.runs {
        if name == "iperf3" {
            continue;
        }
        // `featmux bench` runs and the PyTorch peers (which report a peer
        // name, torch threads and rows/s only); "–" where a run has no
        // such figure.
        let n = |f: &str| run.pointer(f).and_then(Value::as_f64);
        let cell = |f: &str, show: &dyn Fn(f64) -> String| n(f).map_or("–".to_owned(), show);
        let fixed = |digits: usize, scale: f64| move |v: f64| format!("{:.*}", digits, v / scale);
        let workload = run["workload"]
            .as_str()
            .or(run["peer"].as_str())
            .unwrap_or("?");
        let clients = n("/concurrency")
            .or(n("/threads"))
            .map_or("–".to_owned(), |c| c.to_string());
        writeln!(
            w,
            "| {name} | {workload} | {} × {} × {} | {clients} | {} | {} | {} | {} | {} | {} |",
            cell("/examples", &fixed(0, 1.0)),
            cell("/features", &fixed(0, 1.0)),
            cell("/values", &fixed(0, 1.0)),
            cell("/requests_per_s", &fixed(0, 1.0)),
            cell("/examples_per_s", &fmt_num),
            cell("/rows_per_s", &fmt_num),
            cell("/payload_mb_per_s", &fixed(0, 1.0)),
            cell("/latency_us/p50", &fixed(2, 1e3)),
            cell("/latency_us/p99", &fixed(2, 1e3)),
        )
        .unwrap();
    }
    writeln!(
        w,
        "\nLoopback (iperf3, one stream, 5 s): {:.0} MB/s.\n",
        results.get(IPERF3_BITS.0, IPERF3_BITS.1)? / 8e6
    )
    .unwrap();
    writeln!(w, "### Commands\n\n```sh").unwrap();
    for (name, run) in &results.runs {
        if let Some(command) = run["command"].as_str() {
            writeln!(w, "# {name}\n{command}").unwrap();
        }
    }
    writeln!(w, "```").unwrap();
    Ok(md)
}

/// Series of `scale-<axis>-…` runs: x from `field`, y = rows/s, one series
/// per workload.
fn scaling_panel(results: &Results, axis: &str, field: &str, title: &str, x_label: &str) -> Panel {
    let mut by_workload: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let prefix = format!("scale-{axis}-");
    for (name, run) in &results.runs {
        if !name.starts_with(&prefix) {
            continue;
        }
        let (Some(x), Some(y)) = (run[field].as_f64(), run["rows_per_s"].as_f64()) else {
            continue;
        };
        let workload = match run["workload"].as_str() {
            Some("lookup") => "gRPC lookup (service)",
            Some("engine-lookup") => "in-process engine",
            Some(other) => other,
            None => "?",
        };
        by_workload
            .entry(workload.to_owned())
            .or_default()
            .push((x, y));
    }
    Panel {
        title: title.to_owned(),
        x_label: x_label.to_owned(),
        y_label: "rows/s".to_owned(),
        y_from_zero: true,
        legend_at_bottom: false,
        series: by_workload
            .into_iter()
            .map(|(name, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series { name, points }
            })
            .collect(),
    }
}

/// Writes the report and its plot.
pub fn write(
    dir: &Path,
    before: Option<&Path>,
    out: &Path,
    plot_path: &Path,
) -> Result<(), String> {
    let results = Results::load(dir)?;
    let before = before.map(Results::load).transpose()?;
    let plot_name = plot_path
        .file_name()
        .ok_or("--plot needs a file name")?
        .to_string_lossy()
        .into_owned();
    let md = markdown(&results, before.as_ref(), &plot_name)?;
    std::fs::write(out, md).map_err(|e| format!("{}: {e}", out.display()))?;
    let panels = [
        scaling_panel(
            &results,
            "batch",
            "examples",
            "Batch size",
            "examples per request",
        ),
        scaling_panel(&results, "rows", "rows", "Table rows", "table rows"),
        scaling_panel(
            &results,
            "features",
            "features",
            "Features",
            "features per example",
        ),
    ];
    plot::draw(plot_path, &panels)
}

/// The default font: DejaVu Sans from Debian's fonts-dejavu-core.
pub fn default_font() -> PathBuf {
    PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(workload: &str, figure: f64) -> Value {
        json!({
            "workload": workload, "command": format!("featmux bench --workload {workload}"),
            "examples": 4096, "features": 26, "values": 1, "concurrency": 8, "rows": 1_000_000,
            "requests_per_s": 10.0, "examples_per_s": figure, "rows_per_s": figure * 26.0,
            "values_per_s": figure, "floats_per_s": figure, "payload_mb_per_s": figure / 1e6,
            "latency_us": {"p50": 100, "p90": 200, "p99": 300, "max": 400},
        })
    }

    fn write_run(dir: &Path, name: &str, value: &Value) {
        std::fs::write(dir.join(format!("{name}.json")), value.to_string()).unwrap();
    }

    fn complete_run(dir: &Path, featmux: f64) {
        for (name, workload, figure) in [
            ("lookup", "lookup", featmux),
            ("redis-mget", "redis-mget", 1e6),
            ("redis-mget-pipelined", "redis-mget", 2e6),
            ("tcp-blast", "tcp-blast", 8e6),
            ("bags-lookup", "lookup", 30e6),
            ("bags-redis-mget", "redis-mget", 1e6),
            ("bags-redis-mget-pipelined", "redis-mget", 1.5e6),
            ("engine-lookup", "engine-lookup", 5e6),
            ("push-rowwise-adagrad", "push", 3e6),
            ("engine-push-rowwise-adagrad", "engine-push", 4e6),
            ("train-rowwise-adagrad", "train", 1e6),
            ("lookup-unix", "lookup", 4.5e6),
            ("lookup-bf16", "lookup", 3.5e6),
            ("push-rowwise-adagrad-bf16", "push", 3.3e6),
            ("train-rowwise-adagrad-bf16", "train", 1.1e6),
            ("push-rowwise-adagrad-unix", "push", 3.2e6),
            ("train-rowwise-adagrad-unix", "train", 1.2e6),
            ("lookup-region", "lookup", 4.8e6),
            ("push-rowwise-adagrad-region", "push", 3.5e6),
            ("train-rowwise-adagrad-region", "train", 1.4e6),
            ("engine-train-rowwise-adagrad", "engine-train", 2e6),
            ("lookup-c1", "lookup", 1.5e6),
            ("split-lookup", "lookup", 1e6),
            ("split-engine-lookup", "engine-lookup", 3e6),
            ("split-push", "push", 2.8e5),
            ("split-engine-push", "engine-push", 4e5),
            ("split-train", "train", 2e5),
            ("split-engine-train", "engine-train", 3.3e5),
            ("lookup-region-c1", "lookup", 3e6),
            ("engine-lookup-c1", "engine-lookup", 2.5e6),
            ("push-c1", "push", 2e5),
            ("push-region-c1", "push", 3e5),
            ("engine-push-c1", "engine-push", 4e5),
            ("train-c1", "train", 1.5e5),
            ("train-region-c1", "train", 2.5e5),
            ("engine-train-c1", "engine-train", 3e5),
            ("engine-lookup-ids", "engine-lookup", 5e6),
            ("engine-train-rowwise-adagrad-ids", "engine-train", 2e6),
            ("engine-lookup-ids-d64", "engine-lookup", 3e6),
            ("bags-engine-lookup", "engine-lookup", 2e6),
            ("bags-engine-lookup-d64", "engine-lookup", 1e6),
            ("http-100", "http-lookup", 1.0),
            ("http-1000", "http-lookup", 1.0),
            ("http-5000", "http-lookup", 1.0),
        ] {
            write_run(dir, name, &run(workload, figure));
        }
        for (i, n) in [64.0, 4096.0].into_iter().enumerate() {
            let mut r = run("lookup", 1e6 * (i + 1) as f64);
            r["examples"] = json!(n);
            write_run(dir, &format!("scale-batch-{n}"), &r);
        }
        // The PyTorch peers' lines (python/benchmarks/peers.py).
        for (name, rows_per_s) in [
            ("single-d16-embedding-bag", 260e6),
            ("single-d64-embedding-bag", 52e6),
            ("bags-d16-embedding-bag", 52e6),
            ("bags-d64-embedding-bag", 26e6),
            ("single-d16-tbe", 130e6),
            ("single-d16-tbe-train", 26e6),
        ] {
            write_run(
                dir,
                &format!("torch-{name}"),
                &json!({"peer": name, "rows_per_s": rows_per_s}),
            );
        }
        write_run(
            dir,
            "iperf3",
            &json!({"end": {"sum_received": {"bits_per_second": 16e6}}}),
        );
        std::fs::write(dir.join("machine.txt"), "cpu: test\n").unwrap();
    }

    #[test]
    fn ratios_divide_figures_of_the_same_run() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        let results = Results::load(dir.path()).unwrap();
        let md = markdown(&results, None, "p.png").unwrap();
        // 4 M floats/s against Redis's 1 M and 2 M.
        assert!(
            md.contains("| 4.0M floats/s | 1.0M | **4.00×** | ≥ 2× |"),
            "{md}"
        );
        assert!(
            md.contains("| 4.0M floats/s | 2.0M | **2.00×** | ≥ 2× |"),
            "{md}"
        );
        // 4 MB/s of payload against iperf3's 16 Mbit/s = 2 MB/s.
        assert!(md.contains("| 4 MB/s | 2 | **2.00×** | ≥ 60% |"), "{md}");
        // Service push 3 M vs in-process 4 M examples/s.
        assert!(
            md.contains("| 3.0M examples/s | 4.0M | **75%** | ≥ 85% |"),
            "{md}"
        );
        // Over the Unix socket: 4.5 M of the engine's 5 M lookups.
        assert!(
            md.contains("Unix socket (a trainer on the server's machine): lookup | 4.5M examples/s | 5.0M | **90%** | ≥ 70% |"),
            "{md}"
        );
        // In-process 5 M examples × 26 = 130 M rows/s against
        // nn.EmbeddingBag's 260 M; a step of 2 M × 26 against TBE's fused
        // training step at 26 M rows/s.
        assert!(
            md.contains("| 130.0M rows/s | 260.0M | **50%** | ≥ 100% |"),
            "{md}"
        );
        assert!(
            md.contains("| 52.0M rows/s | 26.0M | **2.00×** | ≥ 100% |"),
            "{md}"
        );
        // E = 5 MB/s in-process, T = 8 MB/s: at most 8/13 = 62 %; the
        // service's 4 M of the engine's 5 M examples/s is 80 %.
        assert!(md.contains("| lookup | 5 | 8 | 62% | 80% | 130% |"), "{md}");
        assert!(md.contains("cpu: test"));
        assert!(md.contains("featmux bench --workload redis-mget"));
        assert!(
            md.contains("| 1000 | 10 | 100 | 200 | 300 | 400 | 300 |"),
            "{md}"
        );

        let before = tempfile::tempdir().unwrap();
        complete_run(before.path(), 1e6);
        let old = Results::load(before.path()).unwrap();
        let md = markdown(&results, Some(&old), "p.png").unwrap();
        assert!(
            md.contains("| 4.0M floats/s | 1.0M | **4.00×** | 1.0M | 1.00× | ≥ 2× |"),
            "{md}"
        );
        // A comparison the earlier run did not have shows no before figure.
        std::fs::remove_file(before.path().join("torch-single-d16-tbe-train.json")).unwrap();
        let old = Results::load(before.path()).unwrap();
        let md = markdown(&results, Some(&old), "p.png").unwrap();
        assert!(
            md.contains("| 52.0M rows/s | 26.0M | **2.00×** | – | – | ≥ 100% |"),
            "{md}"
        );
        assert!(!md.contains("other hardware"), "{md}");
        // Absolute figures from other hardware are flagged.
        std::fs::write(before.path().join("machine.txt"), "cpu: older\n").unwrap();
        let old = Results::load(before.path()).unwrap();
        let md = markdown(&results, Some(&old), "p.png").unwrap();
        assert!(
            md.contains("other hardware") && md.contains("cpu: older"),
            "{md}"
        );
    }

    #[test]
    fn rounds_give_the_median_of_each_rounds_ratio() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        // Rounds of the single-valued d16 comparison; the one-off runs of
        // the same names stay for the comparisons without rounds.
        // featmux 130, 104, 156 M rows/s against 260, 100, 300 M: the
        // rounds' ratios 50 %, 104 %, 52 %, median 52 % (the medians'
        // ratio, 130 / 260, would be 50 %).
        for (k, (featmux, peer)) in [(5e6, 260e6), (4e6, 100e6), (6e6, 300e6)]
            .into_iter()
            .enumerate()
        {
            write_run(
                dir.path(),
                &format!("engine-lookup-ids-{}", k + 1),
                &run("engine-lookup", featmux),
            );
            write_run(
                dir.path(),
                &format!("torch-single-d16-embedding-bag-{}", k + 1),
                &json!({"peer": "embedding-bag", "rows_per_s": peer}),
            );
        }
        let results = Results::load(dir.path()).unwrap();
        let md = markdown(&results, None, "p.png").unwrap();
        assert!(
            md.contains(
                "d = 16) | 130.0M rows/s | 260.0M | **52%** (rounds: 50%, 1.04×, 52%) | ≥ 100% |"
            ),
            "{md}"
        );
        // The service's ratios keep the one-off in-process run (5 M examples/s).
        assert!(
            md.contains("lookup | 4.5M examples/s | 5.0M | **90%** | ≥ 70% |"),
            "{md}"
        );

        // A round with one side missing is refused, not paired off by position.
        std::fs::remove_file(dir.path().join("torch-single-d16-embedding-bag-3.json")).unwrap();
        let results = Results::load(dir.path()).unwrap();
        let err = markdown(&results, None, "p.png").unwrap_err();
        assert!(err.contains("ran 3 rounds but"), "{err}");
    }

    #[test]
    fn service_shares_pair_each_round_with_its_in_process_run() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        for name in ["lookup", "engine-lookup", "tcp-blast"] {
            std::fs::remove_file(dir.path().join(format!("{name}.json"))).unwrap();
        }
        // Service 1, 2, 3 M examples/s against in-process 2, 8, 4 M: the
        // rounds' shares 50 %, 25 %, 75 %, median 50 % (the medians'
        // ratio, 2 / 4, is also 50 %; the rounds differ in order). TCP
        // 6, 8, 10 MB/s.
        for (k, (service, engine, tcp)) in [(1e6, 2e6, 6e6), (2e6, 8e6, 8e6), (3e6, 4e6, 10e6)]
            .into_iter()
            .enumerate()
        {
            let k = k + 1;
            write_run(dir.path(), &format!("lookup-{k}"), &run("lookup", service));
            write_run(
                dir.path(),
                &format!("engine-lookup-{k}"),
                &run("engine-lookup", engine),
            );
            write_run(
                dir.path(),
                &format!("tcp-blast-{k}"),
                &run("tcp-blast", tcp),
            );
        }
        let results = Results::load(dir.path()).unwrap();
        let md = markdown(&results, None, "p.png").unwrap();
        assert!(
            md.contains(
                "in-process engine (examples/s) | 2.0M examples/s | 4.0M | **50%** (rounds: 50%, 25%, 75%) | ≥ 70% |"
            ),
            "{md}"
        );
        // Against a one-off Redis run (1 M floats/s): the rounds' median, 2 M.
        assert!(
            md.contains("| 2.0M floats/s | 1.0M | **2.00×** | ≥ 2× |"),
            "{md}"
        );
        // E = 4 MB/s, T = 8 MB/s (medians): at most 8/12 = 67 %; reached
        // 50 %, the rounds' median: 75 % of the ceiling.
        assert!(md.contains("| lookup | 4 | 8 | 67% | 50% | 75% |"), "{md}");
    }

    #[test]
    fn repeated_http_runs_show_their_median_and_each_p99() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        std::fs::remove_file(dir.path().join("http-5000.json")).unwrap();
        for (i, p99) in [900, 5000, 1200].into_iter().enumerate() {
            let mut r = run("http-lookup", 1.0);
            r["latency_us"]["p99"] = json!(p99);
            write_run(dir.path(), &format!("http-5000-{}", i + 1), &r);
        }
        // Not a repeat of http-5000: another rate's name.
        write_run(dir.path(), "http-50000", &run("http-lookup", 9.0));
        let results = Results::load(dir.path()).unwrap();
        let md = markdown(&results, None, "p.png").unwrap();
        assert!(
            md.contains("| 5000 | 10 | 100 | 200 | 1200 | 400 | 900, 5000, 1200 |"),
            "{md}"
        );
    }

    #[test]
    fn a_missing_run_is_named() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        std::fs::remove_file(dir.path().join("engine-lookup.json")).unwrap();
        let results = Results::load(dir.path()).unwrap();
        let err = markdown(&results, None, "p.png").unwrap_err();
        assert_eq!(err, "missing result `engine-lookup.json`");
    }

    #[test]
    fn the_plot_is_a_png_with_one_series_per_workload() {
        let dir = tempfile::tempdir().unwrap();
        complete_run(dir.path(), 4e6);
        let results = Results::load(dir.path()).unwrap();
        let panel = scaling_panel(&results, "batch", "examples", "Batch size", "examples");
        assert_eq!(panel.series.len(), 1);
        assert_eq!(panel.series[0].points, vec![(64.0, 26e6), (4096.0, 52e6)]);
        plot::load_font(&default_font()).unwrap();
        let png = dir.path().join("p.png");
        plot::draw(&png, &[panel]).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
