//! The serving JSON format: examples as objects `{feature: value | [values]}`
//! in, embeddings out as one object or one concatenated vector per example.
//!
//! - [`read`]: the request's examples, read straight into a batch;
//! - [`write`](mod@write): the looked-up embeddings, written per example.

pub mod read;
pub mod write;

pub use read::{ExampleReader, Examples};
pub use write::{check_concatenable, concatenated, PerExample};

/// A feature of `value_type` and `pooling` with one chunk, for the tests.
#[cfg(test)]
pub(crate) fn feature(
    name: &str,
    value_type: featmux_engine::schema::ValueType,
    pooling: featmux_engine::pooling::Pooling,
) -> featmux_engine::registry::Feature {
    featmux_engine::registry::Feature {
        name: name.into(),
        salt: 0,
        chunks: 1,
        value_type,
        pooling,
        placement: featmux_engine::schema::Placement::Shared,
    }
}
