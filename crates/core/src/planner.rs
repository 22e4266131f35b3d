//! The planner: phases from references between streams, and write groups
//! packed into HTTP request bundles within a server profile's limits.
//!
//! - A stream that references a resource type another stream writes runs in
//!   a later phase; a cycle is an error naming the streams.
//! - Single writes are packed into `batch` bundles bounded by entries and
//!   bytes; two writes to the same identifier never share a bundle (Medplum
//!   refuses the second with 400 "Resource ID did not match resolved ID").
//! - Atomic groups become `transaction` bundles, sent alone or packed as
//!   `POST /` entries of a batch where the profile allows it.
//!
//! Bundle bodies are built as bytes once: what is measured is what is sent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::group::{Identity, Method, Operation, WriteGroup, stable_hash128};
use crate::pos::Pos;
use crate::profile::ServerProfile;
use crate::record::Provenance;

/// What the planner knows of a stream to order it.
#[derive(Debug, Clone)]
pub struct StreamDeps {
    pub name: String,
    pub emitted_types: BTreeSet<String>,
    pub referenced_types: BTreeSet<String>,
    /// Explicit `after:` streams.
    pub after: Vec<(String, Pos)>,
    /// Where the stream is written, for errors.
    pub pos: Option<Pos>,
}

/// Streams that may run together; every request of a phase is answered
/// before the next phase starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub number: usize,
    pub streams: Vec<String>,
}

/// Orders streams into phases. Streams keep file order within a phase.
pub fn phases(streams: &[StreamDeps]) -> Result<Vec<Phase>, String> {
    let index: BTreeMap<&str, usize> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // deps[i]: the streams i must follow, with why
    let mut deps: Vec<BTreeMap<usize, String>> = vec![BTreeMap::new(); streams.len()];
    for (i, s) in streams.iter().enumerate() {
        for t in &s.referenced_types {
            for (j, other) in streams.iter().enumerate() {
                if i != j && other.emitted_types.contains(t) {
                    deps[i].insert(j, format!("references {t}"));
                }
            }
        }
        for (name, pos) in &s.after {
            match index.get(name.as_str()) {
                Some(&j) if j != i => {
                    deps[i].insert(j, "after:".into());
                }
                Some(_) => return Err(format!("{pos}: stream {name} cannot come after itself")),
                None => {
                    return Err(format!(
                        "{pos}: after: names {name:?}, which is not a stream; streams: {}",
                        streams
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    let mut phase_of: Vec<Option<usize>> = vec![None; streams.len()];
    let mut placed = 0;
    while placed < streams.len() {
        let mut progressed = false;
        for i in 0..streams.len() {
            if phase_of[i].is_some() {
                continue;
            }
            if deps[i].keys().all(|&j| phase_of[j].is_some()) {
                let p = deps[i]
                    .keys()
                    .map(|&j| phase_of[j].unwrap_or(0) + 1)
                    .max()
                    .unwrap_or(1);
                phase_of[i] = Some(p);
                placed += 1;
                progressed = true;
            }
        }
        if !progressed {
            return Err(describe_cycle(streams, &deps, &phase_of));
        }
    }
    let count = phase_of.iter().flatten().copied().max().unwrap_or(0);
    Ok((1..=count)
        .map(|number| Phase {
            number,
            streams: streams
                .iter()
                .zip(&phase_of)
                .filter(|(_, p)| **p == Some(number))
                .map(|(s, _)| s.name.clone())
                .collect(),
        })
        .collect())
}

fn describe_cycle(
    streams: &[StreamDeps],
    deps: &[BTreeMap<usize, String>],
    phase_of: &[Option<usize>],
) -> String {
    // walk unplaced dependencies until a stream repeats
    let start = phase_of.iter().position(Option::is_none).unwrap_or(0);
    let mut path = vec![start];
    let mut at = start;
    while let Some((&next, _)) = deps[at].iter().find(|(j, _)| phase_of[**j].is_none()) {
        if let Some(pos) = path.iter().position(|&p| p == next) {
            path.drain(..pos);
            path.push(next);
            break;
        }
        path.push(next);
        at = next;
    }
    let steps: Vec<String> = path
        .windows(2)
        .map(|w| {
            let at = streams[w[0]]
                .pos
                .as_ref()
                .map(|p| format!(" (stream {} at {p})", streams[w[0]].name))
                .unwrap_or_default();
            format!(
                "{} {} written by {}{at}",
                streams[w[0]].name, deps[w[0]][&w[1]], streams[w[1]].name
            )
        })
        .collect();
    format!(
        "streams reference each other in a cycle ({}); break it by splitting one stream, or by writing one reference in a later stream",
        steps.join(", ")
    )
}

/// What kind of bundle a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    Batch,
    Transaction,
    /// A batch whose entries are transactions (`POST /`).
    BatchOfTransactions,
}

/// The record behind entries of a request, to account for their outcome.
#[derive(Debug, Clone)]
pub struct GroupRef {
    pub key: String,
    pub provenance: Provenance,
    /// The record's place in its stream ([`WriteGroup::seq`]).
    pub seq: u64,
    /// The resource type of each of the group's operations, in order.
    pub resource_types: Vec<String>,
    /// Each operation's identity and the hash of its content, for the ledger.
    pub identities: Vec<Option<Identity>>,
    pub hashes: Vec<u128>,
    /// Where the ledger says each operation's identity is stored, when the
    /// record changed ([`crate::group::Operation::stored`]).
    pub stored: Vec<Option<crate::group::StoredAt>>,
    /// Which operations amend what is stored ([`crate::group::Operation::amends`]).
    pub amends: Vec<bool>,
}

/// One top-level entry of a request's bundle.
#[derive(Debug, Clone)]
pub struct EntryRef {
    /// Where the entry's JSON sits in the body (the whole body for a
    /// lone transaction).
    pub range: std::ops::Range<usize>,
    /// Its group, an index into [`Request::groups`].
    pub group: usize,
    /// The group's operations it carries: `first_op..first_op + operations`.
    pub first_op: usize,
    pub operations: usize,
}

/// One HTTP request: a bundle body, ready to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub phase: usize,
    pub stream: Arc<str>,
    pub kind: RequestKind,
    /// The bundle, exactly as it will be sent.
    pub body: Vec<u8>,
    pub entries: Vec<EntryRef>,
    pub groups: Vec<GroupRef>,
    /// Hashes of the identities it writes: the sender never has two
    /// requests writing the same identity in flight at once.
    pub identities: Vec<u64>,
}

impl Request {
    /// Resources written by it, nested transactions included.
    pub fn operations(&self) -> usize {
        self.entries.iter().map(|e| e.operations).sum()
    }

    /// A batch of the same kind holding only the given entries: for
    /// resending the entries that failed alone.
    pub fn subset(&self, which: &[usize]) -> Request {
        // a lone transaction is its own only entry
        if self.kind == RequestKind::Transaction {
            return self.clone();
        }
        let mut body = Vec::with_capacity(self.body.len());
        body.extend_from_slice(BATCH_PREFIX);
        let mut entries = Vec::with_capacity(which.len());
        for (n, &i) in which.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            let e = &self.entries[i];
            let start = body.len();
            body.extend_from_slice(&self.body[e.range.clone()]);
            entries.push(EntryRef {
                range: start..body.len(),
                ..e.clone()
            });
        }
        body.extend_from_slice(SUFFIX);
        Request {
            phase: self.phase,
            stream: self.stream.clone(),
            kind: self.kind,
            body,
            entries,
            groups: self.groups.clone(),
            identities: self.identities.clone(),
        }
    }
}

/// A group the planner cannot fit into any request.
#[derive(Debug, Clone)]
pub struct PlanError {
    pub key: String,
    /// The types of the resources that were not planned.
    pub resource_types: Vec<String>,
    pub provenance: Provenance,
    pub message: String,
}

const BATCH_PREFIX: &[u8] = br#"{"resourceType":"Bundle","type":"batch","entry":["#;
const TRANSACTION_PREFIX: &[u8] = br#"{"resourceType":"Bundle","type":"transaction","entry":["#;
const SUFFIX: &[u8] = b"]}";
/// A transaction as an entry of a batch (closed by one `}`).
const NESTED_PREFIX: &[u8] = br#"{"request":{"method":"POST","url":"/"},"resource":"#;

/// Writes one bundle entry: `{"fullUrl":…,"request":{…},"resource":…}`.
fn write_entry(out: &mut Vec<u8>, op: &Operation) {
    out.extend_from_slice(b"{");
    if let Some(full_url) = &op.full_url {
        out.extend_from_slice(b"\"fullUrl\":");
        serde_json::to_writer(&mut *out, full_url).expect("a string serializes");
        out.push(b',');
    }
    out.extend_from_slice(b"\"request\":{\"method\":\"");
    out.extend_from_slice(op.method.as_str().as_bytes());
    out.extend_from_slice(b"\",\"url\":");
    serde_json::to_writer(&mut *out, &op.url).expect("a string serializes");
    out.extend_from_slice(b"},\"resource\":");
    out.extend_from_slice(op.resource.as_str().as_bytes());
    out.push(b'}');
}

/// A 64-bit hash of an identity. A collision only closes a bundle early
/// (or holds a request back until another is answered).
pub fn identity_hash(id: &Identity) -> u64 {
    stable_hash128(&[&id.resource_type, &id.system, &id.value]) as u64
}

/// Orders a group's operations so that each comes after those it refers
/// to by `urn:uuid` (keeping the original order otherwise): cut into parts
/// written one after the other, every reference then points backwards.
/// Operations in a reference cycle keep their order.
fn referenced_first(operations: Vec<Operation>) -> Vec<Operation> {
    let quoted: Vec<Option<String>> = operations
        .iter()
        .map(|o| o.full_url.as_ref().map(|u| format!("\"{u}\"")))
        .collect();
    let needs: Vec<Vec<usize>> = operations
        .iter()
        .enumerate()
        .map(|(i, op)| {
            quoted
                .iter()
                .enumerate()
                .filter(|(j, q)| {
                    *j != i
                        && q.as_ref()
                            .is_some_and(|q| op.resource.as_str().contains(q.as_str()))
                })
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    // Kahn's algorithm, the lowest index first among the ready ones
    let n = operations.len();
    let mut waiting_on: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut wanted_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, targets) in needs.iter().enumerate() {
        for &j in targets {
            wanted_by[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        // in a cycle nothing is ready: the first one left goes next
        let Some(next) = ready.pop_first().or_else(|| (0..n).find(|&i| !placed[i])) else {
            break;
        };
        if placed[next] {
            continue;
        }
        placed[next] = true;
        order.push(next);
        for &i in &wanted_by[next] {
            waiting_on[i] = waiting_on[i].saturating_sub(1);
            if waiting_on[i] == 0 && !placed[i] {
                ready.insert(i);
            }
        }
    }
    let mut slots: Vec<Option<Operation>> = operations.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn group_ref(group: &WriteGroup) -> GroupRef {
    GroupRef {
        key: group.key.clone(),
        provenance: group.provenance.clone(),
        seq: group.seq,
        resource_types: group
            .operations
            .iter()
            .map(|o| o.resource_type.clone())
            .collect(),
        identities: group
            .operations
            .iter()
            .map(|o| o.identity.clone())
            .collect(),
        hashes: group
            .operations
            .iter()
            .map(|o| {
                o.mapped_hash
                    .unwrap_or_else(|| crate::group::content_hash(o.resource.as_str()))
            })
            .collect(),
        stored: group.operations.iter().map(|o| o.stored.clone()).collect(),
        amends: group.operations.iter().map(|o| o.amends).collect(),
    }
}

/// The bundle being filled.
struct OpenBundle {
    kind: RequestKind,
    body: Vec<u8>,
    entries: Vec<EntryRef>,
    /// Hashes of the identities written by this bundle.
    identities: HashSet<u64>,
    groups: Vec<GroupRef>,
}

impl OpenBundle {
    fn new(kind: RequestKind) -> Self {
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(BATCH_PREFIX);
        OpenBundle {
            kind,
            body,
            entries: Vec::new(),
            identities: HashSet::new(),
            groups: Vec::new(),
        }
    }

    /// Body size once closed, with `extra` more entry bytes.
    fn size_with(&self, extra: usize) -> usize {
        self.body.len() + extra + usize::from(!self.entries.is_empty()) + SUFFIX.len()
    }
}

/// Packs one stream's groups into requests.
pub struct Packer {
    profile: ServerProfile,
    phase: usize,
    stream: Arc<str>,
    open: Option<OpenBundle>,
    scratch: Vec<u8>,
}

impl Packer {
    pub fn new(profile: ServerProfile, phase: usize, stream: Arc<str>) -> Packer {
        Packer {
            profile,
            phase,
            stream,
            open: None,
            scratch: Vec::with_capacity(4096),
        }
    }

    fn close(&mut self, out: &mut impl FnMut(Request)) {
        if let Some(mut b) = self.open.take()
            && !b.entries.is_empty()
        {
            b.body.extend_from_slice(SUFFIX);
            out(Request {
                phase: self.phase,
                stream: self.stream.clone(),
                kind: b.kind,
                body: b.body,
                entries: b.entries,
                groups: b.groups,
                identities: b.identities.into_iter().collect(),
            });
        }
    }

    /// Adds one group; full bundles go to `out`. A group that fits no
    /// request under the profile is returned as an error (reject it).
    pub fn push(
        &mut self,
        group: WriteGroup,
        out: &mut impl FnMut(Request),
    ) -> Result<(), PlanError> {
        if group.atomic {
            match self.split_size(&group) {
                Some(size) if group.may_split => self.push_split(group, size, out),
                _ => self.push_transaction(group, &[], out),
            }
        } else {
            self.push_singles(group, out)
        }
    }

    /// Refuses the group's operations from `from` on (the earlier ones are planned).
    fn refuse_from(group: &WriteGroup, from: usize, message: String) -> PlanError {
        PlanError {
            key: group.key.clone(),
            resource_types: group.operations[from..]
                .iter()
                .map(|o| o.resource_type.clone())
                .collect(),
            provenance: group.provenance.clone(),
            message,
        }
    }

    fn refuse(group: &WriteGroup, message: String) -> PlanError {
        Self::refuse_from(group, 0, message)
    }

    /// Places `scratch` (one entry's bytes, carrying operations
    /// `first_op..first_op + operations` of `group`) into a batch of `kind`.
    fn place(
        &mut self,
        kind: RequestKind,
        identities: &[u64],
        group: &WriteGroup,
        first_op: usize,
        operations: usize,
        out: &mut impl FnMut(Request),
    ) {
        let len = self.scratch.len();
        let must_close = match &self.open {
            None => false,
            Some(b) => {
                b.kind != kind
                    || b.entries.len() >= self.profile.max_batch_entries
                    || b.size_with(len) > self.profile.max_body_bytes
                    || identities.iter().any(|id| b.identities.contains(id))
            }
        };
        if must_close {
            self.close(out);
        }
        let b = self.open.get_or_insert_with(|| OpenBundle::new(kind));
        if !b.entries.is_empty() {
            b.body.push(b',');
        }
        let start = b.body.len();
        b.body.extend_from_slice(&self.scratch);
        // a group's entries sit next to each other: reuse its ref
        let same_group = b
            .groups
            .last()
            .is_some_and(|g| g.key == group.key && g.provenance == group.provenance);
        if !same_group {
            b.groups.push(group_ref(group));
        }
        b.entries.push(EntryRef {
            range: start..b.body.len(),
            group: b.groups.len() - 1,
            first_op,
            operations,
        });
        b.identities.extend(identities.iter().copied());
    }

    fn push_singles(
        &mut self,
        group: WriteGroup,
        out: &mut impl FnMut(Request),
    ) -> Result<(), PlanError> {
        let empty = BATCH_PREFIX.len() + SUFFIX.len();
        for (i, op) in group.operations.iter().enumerate() {
            self.scratch.clear();
            write_entry(&mut self.scratch, op);
            if empty + self.scratch.len() > self.profile.max_body_bytes {
                return Err(Self::refuse_from(
                    &group,
                    i,
                    format!(
                        "the {} is {} bytes as a batch entry, over the {} profile's request limit of {} bytes; shorten it (large notes or attachments) or raise target.body_bytes if the server allows",
                        op.resource_type,
                        self.scratch.len(),
                        self.profile.name,
                        self.profile.max_body_bytes
                    ),
                ));
            }
            let ids: Vec<u64> = op.identity.iter().map(identity_hash).collect();
            self.place(RequestKind::Batch, &ids, &group, i, 1, out);
        }
        Ok(())
    }

    /// The largest transaction the profile takes for this group, when the
    /// group is larger.
    fn split_size(&self, group: &WriteGroup) -> Option<usize> {
        let p = &self.profile;
        let n = group.operations.len();
        let mut limit = p.max_transaction_entries;
        if p.transactions_are_conditional() && group.operations.iter().any(|o| o.url.contains('?'))
        {
            limit = limit.min(p.max_conditional_transaction_entries);
        }
        if group.operations.iter().any(|o| o.method == Method::Put) {
            limit = limit.min(p.max_transaction_updates);
        }
        (n > limit).then_some(limit.max(1))
    }

    /// Writes a group too large for one transaction as several, in order:
    /// a reference to a resource in another part becomes a conditional
    /// reference to its identifier, and every part carries one shared
    /// identity, so the sender writes them one after the other.
    fn push_split(
        &mut self,
        group: WriteGroup,
        size: usize,
        out: &mut impl FnMut(Request),
    ) -> Result<(), PlanError> {
        let sequence = crate::group::stable_hash128(&[
            &group.stream,
            &group.key,
            &group.provenance.to_string(),
        ]) as u64;
        // what each urn:uuid stands for outside its own part
        let conditional: Vec<(String, String)> = group
            .operations
            .iter()
            .filter_map(|o| {
                let full_url = o.full_url.as_ref()?;
                o.url.contains('?').then(|| {
                    (
                        serde_json::to_string(full_url).expect("strings serialize"),
                        serde_json::to_string(&o.url).expect("strings serialize"),
                    )
                })
            })
            .collect();
        let WriteGroup {
            stream,
            key,
            provenance,
            operations,
            seq,
            ..
        } = group;
        let mut rest = referenced_first(operations).into_iter().peekable();
        while rest.peek().is_some() {
            let mut part: Vec<Operation> = rest.by_ref().take(size).collect();
            let own: Vec<String> = part
                .iter()
                .filter_map(|o| o.full_url.as_ref())
                .map(|u| serde_json::to_string(u).expect("strings serialize"))
                .collect();
            for op in &mut part {
                let mut text = None::<String>;
                for (from, to) in &conditional {
                    if own.contains(from) {
                        continue;
                    }
                    let current = text.as_deref().unwrap_or(op.resource.as_str());
                    if current.contains(from.as_str()) {
                        text = Some(current.replace(from.as_str(), to));
                    }
                }
                if let Some(t) = text {
                    op.resource = crate::group::ResourceJson::from_rendered(t);
                }
            }
            // every part, even of one resource, carries the shared identity
            let sub = WriteGroup {
                stream: stream.clone(),
                key: key.clone(),
                provenance: provenance.clone(),
                atomic: true,
                may_split: false,
                seq,
                operations: part,
            };
            self.push_transaction(sub, &[sequence], out)?;
        }
        Ok(())
    }

    fn push_transaction(
        &mut self,
        group: WriteGroup,
        sequence: &[u64],
        out: &mut impl FnMut(Request),
    ) -> Result<(), PlanError> {
        let p = &self.profile;
        let n = group.operations.len();
        let conditional = p.transactions_are_conditional()
            && group.operations.iter().any(|o| o.url.contains('?'));
        let updates = group
            .operations
            .iter()
            .filter(|o| o.method == Method::Put)
            .count();
        if n > p.max_transaction_entries {
            return Err(Self::refuse(
                &group,
                format!(
                    "this record emits {n} resources in one transaction; the {} profile allows {}",
                    p.name, p.max_transaction_entries
                ),
            ));
        }
        if conditional && n > p.max_conditional_transaction_entries {
            return Err(Self::refuse(
                &group,
                format!(
                    "this record emits {n} resources in one transaction with conditional writes; the {} profile allows {} (the server runs such transactions in strict isolation)",
                    p.name, p.max_conditional_transaction_entries
                ),
            ));
        }
        if updates > p.max_transaction_updates {
            return Err(Self::refuse(
                &group,
                format!(
                    "this record's transaction holds {updates} updates; the {} profile allows {}",
                    p.name, p.max_transaction_updates
                ),
            ));
        }
        // as a batch entry the transaction is wrapped; alone it is the body
        let nested = self.profile.batch_may_hold_transactions;
        let mut tx = std::mem::take(&mut self.scratch);
        tx.clear();
        if nested {
            tx.extend_from_slice(NESTED_PREFIX);
        }
        let tx_start = tx.len();
        tx.extend_from_slice(TRANSACTION_PREFIX);
        for (i, op) in group.operations.iter().enumerate() {
            if i > 0 {
                tx.push(b',');
            }
            write_entry(&mut tx, op);
        }
        tx.extend_from_slice(SUFFIX);
        let tx_len = tx.len() - tx_start;
        let body_len = if nested {
            tx.push(b'}');
            BATCH_PREFIX.len() + SUFFIX.len() + tx.len()
        } else {
            tx_len
        };
        if body_len > self.profile.max_body_bytes {
            self.scratch = tx;
            return Err(Self::refuse(
                &group,
                format!(
                    "this record's transaction is {tx_len} bytes, over the {} profile's request limit of {} bytes",
                    self.profile.name, self.profile.max_body_bytes
                ),
            ));
        }
        let identities: Vec<u64> = group
            .operations
            .iter()
            .filter_map(|o| o.identity.as_ref())
            .map(identity_hash)
            .chain(sequence.iter().copied())
            .collect();
        if !nested {
            // an earlier record's write of the same identity, still in the
            // open batch, goes first: the requests leave in source order
            if self
                .open
                .as_ref()
                .is_some_and(|b| identities.iter().any(|id| b.identities.contains(id)))
            {
                self.close(out);
            }
            out(Request {
                phase: self.phase,
                stream: self.stream.clone(),
                kind: RequestKind::Transaction,
                entries: vec![EntryRef {
                    range: 0..tx.len(),
                    group: 0,
                    first_op: 0,
                    operations: n,
                }],
                body: tx,
                groups: vec![group_ref(&group)],
                identities,
            });
            return Ok(());
        }
        self.scratch = tx;
        self.place(
            RequestKind::BatchOfTransactions,
            &identities,
            &group,
            0,
            n,
            out,
        );
        Ok(())
    }

    /// Sends what is left in the open bundle.
    pub fn finish(&mut self, out: &mut impl FnMut(Request)) {
        self.close(out);
    }
}

#[cfg(test)]
mod tests;
