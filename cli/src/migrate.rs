//! `featmux migrate`: pending migrations applied to a data directory's
//! database, without starting a server (which also runs them at start-up).

use std::path::Path;

use anyhow::Context;
use featmux_storage::store::{Store, StoreOptions};

/// Applies pending migrations and prints what was done.
pub fn run(data_dir: &Path) -> anyhow::Result<()> {
    let db = data_dir.join("db");
    let (store, applied) =
        Store::open(&db, StoreOptions::default(), featmux_migrations::MIGRATIONS)
            .with_context(|| format!("cannot migrate {}", data_dir.display()))?;
    for step in &applied {
        println!("applied migration {}: {}", step.version, step.description);
    }
    let version = featmux_migrations::MIGRATIONS
        .last()
        .map_or(0, |m| m.version);
    if applied.is_empty() {
        println!(
            "{} is up to date (schema version {version})",
            store.path().display()
        );
    } else {
        println!(
            "{} is now at schema version {version}",
            store.path().display()
        );
    }
    Ok(())
}
