//! How the commands print tables: text for people, the HTTP API's JSON
//! shape with `--json`.

use featmux_client::pb;
use featmux_server::api::TableInfo;

use crate::wire::table_info_from_pb;

/// Prints a table's description.
pub fn print_table(info: &TableInfo, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(info).expect("serialisable")
        );
        return;
    }
    let c = &info.config;
    println!(
        "{}: {} rows × {} dims, optimizer {}, {} bytes in memory, {} dirty rows",
        c.name,
        c.rows,
        c.chunk_dim,
        c.optimizer.name(),
        info.bytes_in_memory,
        info.dirty_rows
    );
    for f in &info.features {
        println!(
            "  {}: {} chunk(s), width {}, {:?}, {:?} pooling, {:?}, salt {}",
            f.spec.name,
            f.spec.chunks,
            f.width,
            f.spec.value_type,
            f.spec.pooling,
            f.spec.placement,
            f.salt
        );
    }
}

/// Decodes a table description from the server, then prints it.
pub fn print_table_pb(info: pb::TableInfo, json: bool) -> anyhow::Result<()> {
    print_table(&table_info_from_pb(info)?, json);
    Ok(())
}
