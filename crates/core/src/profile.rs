//! Server profiles: what differs between FHIR servers that the planner must respect.

use crate::config::TargetConfig;

/// Limits and abilities of one kind of FHIR server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProfile {
    pub name: String,
    /// Most entries in one batch bundle.
    pub max_batch_entries: usize,
    /// Most bytes in one request body.
    pub max_body_bytes: usize,
    /// Most entries in one transaction.
    pub max_transaction_entries: usize,
    /// Most entries in a transaction that holds any conditional write
    /// (Medplum: 8, "Transaction requires strict isolation but has too many entries").
    pub max_conditional_transaction_entries: usize,
    /// Most updates (PUT) in one transaction (Medplum: 50).
    pub max_transaction_updates: usize,
    /// Whether a batch may hold transactions as `POST /` entries.
    pub batch_may_hold_transactions: bool,
}

/// The profile names fhirlift knows.
pub const PROFILES: &[&str] = &["generic", "medplum", "hapi"];

impl ServerProfile {
    /// A built-in profile by name.
    pub fn named(name: &str) -> Option<ServerProfile> {
        let p = match name {
            // Any FHIR R4 server: the spec's batch and transaction, nothing nested.
            "generic" => ServerProfile {
                name: name.into(),
                max_batch_entries: 100,
                max_body_bytes: 5 * 1024 * 1024,
                max_transaction_entries: 100,
                max_conditional_transaction_entries: 100,
                max_transaction_updates: 100,
                batch_may_hold_transactions: false,
            },
            // Measured on Medplum 5 (see the design notes): synchronous bodies
            // up to 1 MB (over it: 400 "File too large"), strict-isolation
            // transactions up to 8 entries, 50 updates a transaction.
            "medplum" => ServerProfile {
                name: name.into(),
                max_batch_entries: 100,
                max_body_bytes: 1_000_000,
                max_transaction_entries: 50,
                max_conditional_transaction_entries: 8,
                max_transaction_updates: 50,
                batch_may_hold_transactions: true,
            },
            "hapi" => ServerProfile {
                name: name.into(),
                max_batch_entries: 100,
                max_body_bytes: 10 * 1024 * 1024,
                max_transaction_entries: 100,
                max_conditional_transaction_entries: 100,
                max_transaction_updates: 100,
                batch_may_hold_transactions: false,
            },
            _ => return None,
        };
        Some(p)
    }

    /// The profile that fits a server, from its CapabilityStatement
    /// (`GET /metadata`): `software.name` medplum or HAPI, else generic.
    pub fn name_for_capability(metadata: &serde_json::Value) -> &'static str {
        let software = metadata["software"]["name"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase();
        if software.contains("medplum") {
            "medplum"
        } else if software.contains("hapi") {
            "hapi"
        } else {
            "generic"
        }
    }

    /// The profile a target names, narrowed by the target's own limits.
    pub fn for_target(target: &TargetConfig) -> Result<ServerProfile, String> {
        let mut p = ServerProfile::named(&target.profile).ok_or_else(|| {
            if target.profile == "auto" {
                format!(
                    "{}: profile auto reads the server's /metadata: give --server URL, or name a profile ({})",
                    target.pos,
                    PROFILES.join(", ")
                )
            } else {
                format!(
                    "{}: unknown server profile {:?}; known profiles: {}, or auto",
                    target.pos,
                    target.profile,
                    PROFILES.join(", ")
                )
            }
        })?;
        if let Some(n) = target.batch_entries {
            p.max_batch_entries = n;
        }
        if let Some(n) = target.body_bytes {
            p.max_body_bytes = n;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_statements_choose_profiles() {
        let medplum = serde_json::json!({ "software": { "name": "medplum", "version": "5.0.10" } });
        assert_eq!(ServerProfile::name_for_capability(&medplum), "medplum");
        let hapi = serde_json::json!({ "software": { "name": "HAPI FHIR Server" } });
        assert_eq!(ServerProfile::name_for_capability(&hapi), "hapi");
        assert_eq!(
            ServerProfile::name_for_capability(&serde_json::json!({})),
            "generic"
        );
    }
}
