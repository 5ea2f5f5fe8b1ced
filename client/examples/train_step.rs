//! One training step through the Rust client: look up a batch with a
//! ticket, compute gradients (here of the L2 loss ½‖e‖², i.e. the
//! embeddings themselves, which pulls them toward zero), push them with the
//! ticket, and look up again to show the step landed.
//!
//! Usage: `train_step [ENDPOINT] [TABLE]` (defaults: http://127.0.0.1:50051, ads);
//! the token, if the server needs one, comes from `FEATMUX_TOKEN`.

use featmux_client::{BatchBuilder, Client, ClientError, ClientOptions};

fn norm(values: &[f32]) -> f32 {
    values.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let table = args.next().unwrap_or_else(|| "ads".into());
    let mut options = ClientOptions::new(endpoint);
    options.token = std::env::var("FEATMUX_TOKEN").ok();
    let client = Client::connect(options).await?;

    let mut batch = BatchBuilder::new();
    batch
        .example()
        .add_str("user_id", "u1")
        .add_strs("genres", ["comedy", "drama"]);
    batch
        .example()
        .add_str("user_id", "u2")
        .add_strs("genres", ["horror"]);
    let batch = batch.build()?;

    let looked_up = client.lookup(&table, &batch, true).await?;
    let before = norm(&looked_up.embeddings[0].data);
    let grads: Vec<Vec<f32>> = looked_up
        .embeddings
        .iter()
        .map(|e| e.data.clone())
        .collect();
    let ticket = looked_up.ticket.expect("asked for a ticket");
    // Handed over, so the message carries these vectors as they are (a
    // borrowed `&grads` would be copied into it).
    let pushed = client.push_ticket(&table, ticket, grads).await?;
    let after = norm(&client.lookup(&table, &batch, false).await?.embeddings[0].data);
    println!(
        "pushed version {}: {} rows updated; user_id embedding norm {before:.4} -> {after:.4}",
        pushed.version, pushed.unique_rows
    );
    Ok(())
}
