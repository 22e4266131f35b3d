//! Server profiles: what differs between FHIR servers that the planner must
//! respect, and how fhirlift writes to each (the write strategy).

/// How resources are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStrategy {
    /// Every write a conditional PUT on its identifier, references
    /// conditional: the FHIR guides' way, one request per batch.
    Conditional,
    /// Identifiers are resolved first with one search per batch and type;
    /// then plain POST creates, `PUT Type/id` with `If-Match` updates, and
    /// no request at all for resources stored unchanged. References become
    /// `Type/id`. Several times faster on Medplum, where every conditional
    /// write is a serializable transaction.
    Resolve,
}

impl WriteStrategy {
    pub fn parse(name: &str) -> Option<WriteStrategy> {
        match name {
            "conditional" => Some(WriteStrategy::Conditional),
            "resolve" => Some(WriteStrategy::Resolve),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WriteStrategy::Conditional => "conditional",
            WriteStrategy::Resolve => "resolve",
        }
    }
}

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
    /// Most bytes in an async batch (`Prefer: respond-async`; Medplum: 50 MB).
    pub max_async_body_bytes: usize,
    /// Whether transactions are known to be all-or-nothing. Medplum's are
    /// only with the project's `transaction-bundles` feature, so fhirlift
    /// checks every transaction-response for mixed statuses.
    pub atomic_transactions: bool,
    /// Whether the server resolves conditional references
    /// (`Patient?identifier=…`) in batches and plain writes, not only in
    /// transactions as FHIR R4 requires. When it does not, the conditional
    /// strategy resolves references itself before sending.
    pub conditional_references_outside_transactions: bool,
    /// How fhirlift writes (the profile's default, or the run's choice).
    pub strategy: WriteStrategy,
    /// Batches go as async jobs.
    pub asynchronous: bool,
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
                max_async_body_bytes: 5 * 1024 * 1024,
                atomic_transactions: true,
                conditional_references_outside_transactions: false,
                strategy: WriteStrategy::Conditional,
                asynchronous: false,
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
                max_async_body_bytes: 50_000_000,
                atomic_transactions: false,
                conditional_references_outside_transactions: true,
                strategy: WriteStrategy::Resolve,
                asynchronous: false,
            },
            "hapi" => ServerProfile {
                name: name.into(),
                max_batch_entries: 100,
                max_body_bytes: 10 * 1024 * 1024,
                max_transaction_entries: 100,
                max_conditional_transaction_entries: 100,
                max_transaction_updates: 100,
                batch_may_hold_transactions: false,
                max_async_body_bytes: 10 * 1024 * 1024,
                atomic_transactions: true,
                conditional_references_outside_transactions: false,
                strategy: WriteStrategy::Conditional,
                asynchronous: false,
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

    /// Whether the sender must resolve conditional references itself
    /// (while writes stay conditional).
    pub fn resolves_references_itself(&self) -> bool {
        self.strategy == WriteStrategy::Conditional
            && !self.conditional_references_outside_transactions
    }

    /// Whether transactions carry conditional writes as planned (they do
    /// not once the resolve strategy has turned them into writes by id).
    pub fn transactions_are_conditional(&self) -> bool {
        self.strategy == WriteStrategy::Conditional
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
