//! The features registered in one table: names, immutable salts, and the
//! slices owned by partitioned features.
//!
//! Features are append-only (docs/DESIGN.md): registering one never changes another
//! feature's salt or slice, so no trained row ever moves. Salts come from a
//! counter that only grows, so a salt is never reused even if the persistence
//! layer later allows retiring a feature.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::hashing::RowSpan;
use crate::pooling::Pooling;
use crate::schema::{FeatureSpec, Placement, ValueType};

/// A registered feature: its spec with a resolved placement and its salt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    /// Assigned at registration, never changed, never reused in this table.
    pub salt: u32,
    pub chunks: u32,
    pub value_type: ValueType,
    pub pooling: Pooling,
    /// Always `Shared` or `Partitioned { offset: Some(_), .. }` once registered.
    pub placement: Placement,
}

impl Feature {
    /// The rows this feature's values hash into.
    pub fn span(&self, table_rows: u64) -> RowSpan {
        match self.placement {
            Placement::Shared => RowSpan {
                offset: 0,
                rows: table_rows,
            },
            Placement::Partitioned { offset, rows } => RowSpan {
                offset: offset.expect("registered partitions have an offset"),
                rows,
            },
        }
    }

    /// Floats per output row: `chunks * chunk_dim`.
    pub fn width(&self, chunk_dim: usize) -> usize {
        self.chunks as usize * chunk_dim
    }

    /// The configuration it was registered with (slice resolved).
    pub fn spec(&self) -> FeatureSpec {
        FeatureSpec {
            name: self.name.clone(),
            chunks: self.chunks,
            value_type: self.value_type,
            pooling: self.pooling,
            placement: self.placement,
        }
    }
}

/// All features of one table, in registration order.
#[derive(Debug, Clone, Default)]
pub struct FeatureRegistry {
    /// Shared with the requests that hold a [`Self::snapshot`]; registering
    /// a feature meanwhile copies the list (rare) instead of every request
    /// copying it (every HTTP lookup reads it).
    features: Arc<Vec<Feature>>,
    by_name: HashMap<String, usize>,
    next_salt: u32,
}

impl FeatureRegistry {
    /// Features in registration order (the order a serving model concatenates).
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// [`Self::features`] as a snapshot that outlives the registry's lock,
    /// without copying them.
    pub fn snapshot(&self) -> Arc<Vec<Feature>> {
        self.features.clone()
    }

    /// The salt the next registered feature will get (persisted, so salts
    /// are never reused across restarts).
    pub fn next_salt(&self) -> u32 {
        self.next_salt
    }

    /// Rebuilds a registry from persisted parts, checking that they could
    /// have come from [`FeatureRegistry::register`]: unique names, distinct
    /// salts below `next_salt`, resolved, non-overlapping partitions.
    pub fn restore(
        features: Vec<Feature>,
        next_salt: u32,
        table_rows: u64,
    ) -> Result<Self, EngineError> {
        let mut registry = FeatureRegistry::default();
        let mut salts = std::collections::HashSet::new();
        for feature in features {
            let corrupt =
                |reason: String| EngineError::invalid(format!("features.{}", feature.name), reason);
            if feature.salt >= next_salt || !salts.insert(feature.salt) {
                return Err(corrupt(format!(
                    "salt {} is reused or not below {next_salt}",
                    feature.salt
                )));
            }
            let spec = FeatureSpec {
                name: feature.name.clone(),
                chunks: feature.chunks,
                value_type: feature.value_type,
                pooling: feature.pooling,
                placement: feature.placement,
            };
            spec.validate(table_rows)?;
            if registry.by_name.contains_key(&feature.name) {
                return Err(EngineError::FeatureExists(feature.name));
            }
            if let Placement::Partitioned { offset, rows } = feature.placement {
                let offset =
                    offset.ok_or_else(|| corrupt("a stored partition has no offset".into()))?;
                registry.check_free(&feature.name, offset, rows)?;
            }
            registry
                .by_name
                .insert(feature.name.clone(), registry.features.len());
            Arc::make_mut(&mut registry.features).push(feature);
        }
        registry.next_salt = next_salt;
        Ok(registry)
    }

    /// The feature called `name`.
    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.by_name.get(name).map(|&i| &self.features[i])
    }

    /// Validates `spec` against the table and the registered features, then
    /// registers it with the next salt. On error nothing changes.
    pub fn register(&mut self, spec: FeatureSpec, table_rows: u64) -> Result<Feature, EngineError> {
        spec.validate(table_rows)?;
        if self.by_name.contains_key(&spec.name) {
            return Err(EngineError::FeatureExists(spec.name));
        }
        let salt = self.next_salt;
        let next_salt = salt
            .checked_add(1)
            .ok_or_else(|| EngineError::invalid("features", "the table has used all 2^32 salts"))?;
        let placement = match spec.placement {
            Placement::Shared => Placement::Shared,
            Placement::Partitioned { offset, rows } => {
                let offset = match offset {
                    Some(offset) => self.check_free(&spec.name, offset, rows)?,
                    None => self.first_free(&spec.name, rows, table_rows)?,
                };
                Placement::Partitioned {
                    offset: Some(offset),
                    rows,
                }
            }
        };
        let feature = Feature {
            name: spec.name,
            salt,
            chunks: spec.chunks,
            value_type: spec.value_type,
            pooling: spec.pooling,
            placement,
        };
        self.next_salt = next_salt;
        self.by_name
            .insert(feature.name.clone(), self.features.len());
        Arc::make_mut(&mut self.features).push(feature.clone());
        Ok(feature)
    }

    /// Partition slices taken so far, sorted by offset.
    fn taken(&self) -> Vec<(u64, u64, &str)> {
        let mut taken: Vec<_> = self
            .features
            .iter()
            .filter_map(|f| match f.placement {
                Placement::Partitioned {
                    offset: Some(offset),
                    rows,
                } => Some((offset, offset + rows, f.name.as_str())),
                _ => None,
            })
            .collect();
        taken.sort_unstable();
        taken
    }

    fn check_free(&self, name: &str, offset: u64, rows: u64) -> Result<u64, EngineError> {
        let end = offset + rows;
        if let Some((s, e, other)) = self
            .taken()
            .into_iter()
            .find(|&(s, e, _)| offset < e && s < end)
        {
            return Err(EngineError::PlacementConflict {
                feature: name.to_owned(),
                reason: format!(
                    "slice [{offset}, {end}) overlaps feature `{other}`'s slice [{s}, {e})"
                ),
            });
        }
        Ok(offset)
    }

    /// First-fit: the lowest offset where `rows` free rows follow.
    fn first_free(&self, name: &str, rows: u64, table_rows: u64) -> Result<u64, EngineError> {
        let mut candidate = 0u64;
        for (start, end, _) in self.taken() {
            if start >= candidate + rows {
                break;
            }
            candidate = candidate.max(end);
        }
        if candidate + rows > table_rows {
            return Err(EngineError::PlacementConflict {
                feature: name.to_owned(),
                reason: format!(
                    "no free slice of {rows} rows is left in the table's {table_rows} rows"
                ),
            });
        }
        Ok(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitioned(name: &str, offset: Option<u64>, rows: u64) -> FeatureSpec {
        FeatureSpec::new(name).placement(Placement::Partitioned { offset, rows })
    }

    #[test]
    fn salts_are_assigned_in_order_and_names_are_unique() {
        let mut reg = FeatureRegistry::default();
        assert_eq!(reg.register(FeatureSpec::new("a"), 100).unwrap().salt, 0);
        assert_eq!(reg.register(FeatureSpec::new("b"), 100).unwrap().salt, 1);
        assert_eq!(
            reg.register(FeatureSpec::new("a"), 100).unwrap_err(),
            EngineError::FeatureExists("a".into())
        );
        // A refused registration does not consume a salt.
        assert_eq!(reg.register(FeatureSpec::new("c"), 100).unwrap().salt, 2);
        assert_eq!(reg.get("b").unwrap().salt, 1);
    }

    #[test]
    fn restore_accepts_what_register_produced_and_rejects_tampering() {
        let mut reg = FeatureRegistry::default();
        reg.register(FeatureSpec::new("a"), 100).unwrap();
        reg.register(partitioned("p", None, 10), 100).unwrap();
        let restored =
            FeatureRegistry::restore(reg.features().to_vec(), reg.next_salt(), 100).unwrap();
        assert_eq!(restored.features(), reg.features());
        assert_eq!(restored.next_salt(), 2);
        // A salt at or above next_salt would be handed out again.
        let err = FeatureRegistry::restore(reg.features().to_vec(), 1, 100).unwrap_err();
        assert!(err.to_string().contains("salt 1"), "{err}");
    }

    #[test]
    fn partitions_are_allocated_first_fit_and_never_overlap() {
        let mut reg = FeatureRegistry::default();
        let pinned = reg
            .register(partitioned("pinned", Some(10), 10), 100)
            .unwrap();
        assert_eq!(
            pinned.span(100),
            RowSpan {
                offset: 10,
                rows: 10
            }
        );
        // Fits in the gap before the pinned slice.
        let small = reg.register(partitioned("small", None, 10), 100).unwrap();
        assert_eq!(small.span(100).offset, 0);
        // Does not fit before 20 any more: goes after the pinned slice.
        let next = reg.register(partitioned("next", None, 5), 100).unwrap();
        assert_eq!(next.span(100).offset, 20);
        let err = reg
            .register(partitioned("clash", Some(22), 5), 100)
            .unwrap_err();
        assert!(err.to_string().contains("overlaps feature `next`"), "{err}");
        let err = reg
            .register(partitioned("huge", None, 80), 100)
            .unwrap_err();
        assert!(err.to_string().contains("no free slice"), "{err}");
        // Shared features still cover the whole table.
        assert_eq!(
            reg.register(FeatureSpec::new("s"), 100).unwrap().span(100),
            RowSpan {
                offset: 0,
                rows: 100
            }
        );
    }
}
