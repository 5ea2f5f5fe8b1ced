//! Embedding payloads: a lookup response decoded into float blocks
//! (checked against their shapes).

use featmux_proto::precision;

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
            let precision =
                pb::Precision::from_field(e.precision).map_err(ClientError::Response)?;
            let data = precision::decode(&e.data, precision)
                .ok_or_else(|| ClientError::Response(format!("`{}`: ragged payload", e.feature)))?;
            Embedding::checked(e.feature, e.rows, e.width, data)
        })
        .collect::<Result<_, _>>()?;
    Ok(Lookup {
        embeddings,
        ticket: (response.ticket != 0).then_some(response.ticket),
    })
}
