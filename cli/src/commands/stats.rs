//! `featmux stats`: server-wide counters and every table.

use featmux_client::Client;
use featmux_server::api::TableInfo;
use serde_json::json;

use super::output::print_table;
use crate::wire::table_info_from_pb;

pub async fn run(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.stats().await?;
    let tables: Vec<TableInfo> = s
        .tables
        .into_iter()
        .map(table_info_from_pb)
        .collect::<anyhow::Result<_>>()?;
    let lost: Vec<(u64, u64)> = s.lost_versions.iter().map(|r| (r.first, r.last)).collect();
    if json {
        let out = json!({
            "version": s.version,
            "flushed_version": s.flushed_version,
            "flushes": s.flushes,
            "flush_failures": s.flush_failures,
            "rows_flushed": s.rows_flushed,
            "last_flush_unix_ms": s.last_flush_unix_ms,
            "database_bytes": s.database_bytes,
            "live_tickets": s.live_tickets,
            "lost_versions": lost,
            "tables": tables,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialisable")
        );
    } else {
        println!(
            "version {} (flushed {}), {} flushes ({} failed), database {} bytes, {} live tickets",
            s.version,
            s.flushed_version,
            s.flushes,
            s.flush_failures,
            s.database_bytes,
            s.live_tickets
        );
        for (first, last) in &lost {
            println!("lost in a crash (never durable): versions {first}..={last}");
        }
        for t in &tables {
            print_table(t, false);
        }
    }
    Ok(())
}
