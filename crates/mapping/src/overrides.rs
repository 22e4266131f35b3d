//! A built-in map with a user's `emit:` entries on top.
//!
//! When a stream has both `map:` and `emit:`, each record goes through both.
//! A resource the user's entries emit replaces the built-in resources of the
//! same type in that record (references inside the record follow it to the
//! user's resource, the n-th built-in one to the n-th of the user's);
//! resources of other types are added. A record the
//! built-in map skips (a message type it does not cover) is written by the
//! user's entries alone, when they emit anything.

use std::collections::BTreeSet;

use crate::StreamMapper;
use fhirlift_core::group::ResourceJson;
use fhirlift_core::mapper::{MapError, Mapped, MapperShape, ResourceMapper};
use fhirlift_core::record::Record;

pub struct WithOverrides {
    builtin: Box<dyn ResourceMapper>,
    user: StreamMapper,
    user_types: BTreeSet<String>,
    transaction: bool,
}

impl WithOverrides {
    pub fn new(builtin: Box<dyn ResourceMapper>, user: StreamMapper) -> WithOverrides {
        WithOverrides {
            transaction: builtin.shape().transaction,
            user_types: user.emitted_types.clone(),
            builtin,
            user,
        }
    }
}

impl ResourceMapper for WithOverrides {
    fn stream(&self) -> &str {
        self.builtin.stream()
    }

    fn shape(&self) -> MapperShape {
        let mut shape = self.builtin.shape();
        shape
            .emitted_types
            .extend(self.user.emitted_types.iter().cloned());
        shape
            .referenced_types
            .extend(self.user.referenced_types.iter().cloned());
        shape.most_emitted = None;
        shape
    }

    fn map(&self, record: Record) -> Result<Mapped, MapError> {
        let builtin = self.builtin.map(record.clone())?;
        let user = self.user.map(record)?;
        Ok(match (builtin, user) {
            (Mapped::Group(mut base), Mapped::Group(user)) => {
                // the n-th built-in resource of a type hands its references
                // to the n-th user resource of that type (the first when the
                // user emits fewer)
                let mut redirects: Vec<(String, String)> = Vec::new();
                let mut seen: std::collections::HashMap<String, usize> = Default::default();
                base.operations.retain(|op| {
                    if !self.user_types.contains(&op.resource_type) {
                        return true;
                    }
                    let same: Vec<&fhirlift_core::group::Operation> = user
                        .operations
                        .iter()
                        .filter(|u| u.resource_type == op.resource_type)
                        .collect();
                    if same.is_empty() {
                        // the user's entry was skipped here: keep the built-in one
                        return true;
                    }
                    let n = seen.entry(op.resource_type.clone()).or_default();
                    let replacement = same.get(*n).unwrap_or(&same[0]);
                    *n += 1;
                    if let (Some(from), Some(to)) = (&op.full_url, &replacement.full_url) {
                        redirects.push((format!("\"{from}\""), format!("\"{to}\"")));
                    }
                    false
                });
                for op in &mut base.operations {
                    for (from, to) in &redirects {
                        if op.resource.as_str().contains(from.as_str()) {
                            op.resource =
                                ResourceJson::from_rendered(op.resource.as_str().replace(from, to));
                        }
                    }
                }
                base.operations.extend(user.operations);
                base.atomic = self.transaction && base.operations.len() > 1;
                Mapped::Group(base)
            }
            (Mapped::Group(base), Mapped::Skipped(_)) => Mapped::Group(base),
            (Mapped::Skipped(_), Mapped::Group(user)) => Mapped::Group(user),
            (Mapped::Skipped(reason), Mapped::Skipped(_)) => Mapped::Skipped(reason),
        })
    }
}
