//! Embedding and gradient payloads: a lookup response decoded into float
//! blocks (checked against their shapes), gradients encoded for a push.

use featmux_proto::{payload, precision};

use crate::{pb, ClientError};

/// One decoded output block: `rows × width` floats, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub feature: String,
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// A lookup's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// One block per batch feature, in batch order.
    pub embeddings: Vec<Embedding>,
    /// Set when a ticket was asked for.
    pub ticket: Option<u64>,
}

impl Embedding {
    /// A decoded block, refused unless it holds `rows × width` floats.
    pub(crate) fn checked(
        feature: String,
        rows: u32,
        width: u32,
        data: Vec<f32>,
    ) -> Result<Embedding, ClientError> {
        if data.len() != rows as usize * width as usize {
            return Err(ClientError::Response(format!(
                "`{feature}`: {} floats for {rows}×{width}",
                data.len(),
            )));
        }
        Ok(Embedding {
            feature,
            rows: rows as usize,
            width: width as usize,
            data,
        })
    }
}

/// Decodes a lookup response, each block in the precision it says.
pub fn decode_lookup(response: pb::LookupResponse) -> Result<Lookup, ClientError> {
    let embeddings = response
        .embeddings
        .into_iter()
        .map(|e| {
            let ragged = || ClientError::Response(format!("`{}`: ragged payload", e.feature));
            let data =
                match pb::Precision::from_field(e.precision).map_err(ClientError::Response)? {
                    pb::Precision::F32 => payload::decode(&e.data).ok_or_else(ragged)?,
                    sixteen if e.data.len() % 2 == 0 => {
                        let mut data = Vec::with_capacity(e.data.len() / 2);
                        precision::widen_into(&e.data, sixteen, &mut data);
                        data
                    }
                    _ => return Err(ragged()),
                };
            Embedding::checked(e.feature, e.rows, e.width, data)
        })
        .collect::<Result<_, _>>()?;
    Ok(Lookup {
        embeddings,
        ticket: (response.ticket != 0).then_some(response.ticket),
    })
}

/// Gradient blocks in wire form (names left empty: order is what counts).
pub fn encode_gradients(grads: &[Vec<f32>]) -> Vec<pb::Gradient> {
    grads
        .iter()
        .map(|g| pb::Gradient {
            feature: String::new(),
            data: payload::encode(g),
        })
        .collect()
}
