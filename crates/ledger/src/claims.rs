//! Claims: which record of this run wrote each identity and used each key.
//!
//! Two records writing one identity with different content is either an
//! update in source order (an ADT feed) or a duplicate in the source (a
//! table with repeated ids); two records with one key in a stream make the
//! ledger's per-key state and resume point ambiguous. The pipeline asks
//! [`Claims`] before it writes anything, so each is counted and named.
//!
//! # Invariants
//!
//! - **Flat memory.** Claims live in a private temporary SQLite database
//!   (on disk, deleted when the run ends); only the claims since the last
//!   flush ([`FLUSH_EVERY`]) are held in memory.
//! - **One run.** A new [`Claims`] knows nothing: a re-run claims afresh.
//! - A claim for an identity is replaced by the later record under the
//!   later-wins policy ([`Claims::identity`] with `replace`), and kept
//!   (the first record stays named) when collisions are rejected.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

/// Claims held in memory before they go to the temporary database.
const FLUSH_EVERY: usize = 8_192;

/// A record that claimed an identity or a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub stream: String,
    pub key: String,
    /// Where the record is in the source: its provenance, as JSON.
    pub at: String,
    /// The content hash of what it wrote (0 for a key claim).
    pub hash: u128,
}

#[derive(Debug, thiserror::Error)]
#[error("the run's claims (a temporary database): {0}")]
pub struct ClaimsError(String);

impl From<rusqlite::Error> for ClaimsError {
    fn from(e: rusqlite::Error) -> Self {
        ClaimsError(e.to_string())
    }
}

/// The claims of one run.
pub struct Claims {
    conn: Connection,
    /// Not yet flushed, by [`Claims::slot`] name.
    queue: HashMap<String, Claim>,
}

impl Claims {
    /// An empty set of claims, in a temporary database of its own.
    pub fn open() -> Result<Claims, ClaimsError> {
        // "" is a private temporary database, on disk, removed on close
        let conn = Connection::open("")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA cache_size = -8192;
             CREATE TABLE claims(
                 slot TEXT PRIMARY KEY,
                 stream TEXT NOT NULL,
                 key TEXT NOT NULL,
                 at TEXT NOT NULL,
                 hash BLOB NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Claims {
            conn,
            queue: HashMap::new(),
        })
    }

    /// The earlier claim on `slot`, if any.
    fn get(&self, slot: &str) -> Result<Option<Claim>, ClaimsError> {
        if let Some(c) = self.queue.get(slot) {
            return Ok(Some(c.clone()));
        }
        let found = self
            .conn
            .prepare_cached("SELECT stream, key, at, hash FROM claims WHERE slot = ?1")?
            .query_row([slot], |r| {
                let blob: Vec<u8> = r.get(3)?;
                Ok(Claim {
                    stream: r.get(0)?,
                    key: r.get(1)?,
                    at: r.get(2)?,
                    hash: blob.try_into().map(u128::from_be_bytes).unwrap_or_default(),
                })
            })
            .optional()?;
        Ok(found)
    }

    fn put(&mut self, slot: String, claim: Claim) -> Result<(), ClaimsError> {
        self.queue.insert(slot, claim);
        if self.queue.len() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the claims held in memory to the temporary database.
    pub fn flush(&mut self) -> Result<(), ClaimsError> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO claims(slot, stream, key, at, hash) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(slot) DO UPDATE SET stream = excluded.stream, key = excluded.key, \
                 at = excluded.at, hash = excluded.hash",
            )?;
            for (slot, c) in self.queue.drain() {
                upsert.execute(params![slot, c.stream, c.key, c.at, c.hash.to_be_bytes()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Claims `identity` (`Type|system|value`, any unambiguous text) for a
    /// record. Returns the earlier claim when another record claimed it
    /// with other content; `replace` makes this record the one named next
    /// time (later wins), otherwise the first claim stays.
    pub fn identity(
        &mut self,
        identity: &fhirlift_core::group::Identity,
        claim: Claim,
        replace: bool,
    ) -> Result<Option<Claim>, ClaimsError> {
        let slot = format!(
            "i{}:{}{}:{}{}",
            identity.resource_type.len(),
            identity.resource_type,
            identity.system.len(),
            identity.system,
            identity.value
        );
        match self.get(&slot)? {
            None => {
                self.put(slot, claim)?;
                Ok(None)
            }
            // the same content again (an archive repeating itself), or the
            // same record (a resent retry): no collision
            Some(first)
                if first.hash == claim.hash
                    || (first.stream == claim.stream
                        && first.key == claim.key
                        && first.at == claim.at) =>
            {
                Ok(None)
            }
            Some(first) => {
                if replace {
                    self.put(slot, claim)?;
                }
                Ok(Some(first))
            }
        }
    }

    /// Claims a record's key in its stream; returns the record that used
    /// it first, if any.
    pub fn key(&mut self, claim: Claim) -> Result<Option<Claim>, ClaimsError> {
        let slot = format!("k{}:{}{}", claim.stream.len(), claim.stream, claim.key);
        match self.get(&slot)? {
            None => {
                self.put(slot, claim)?;
                Ok(None)
            }
            Some(first) => Ok(Some(first)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlift_core::group::Identity;

    fn claim(key: &str, hash: u128) -> Claim {
        Claim {
            stream: "s".into(),
            key: key.into(),
            at: format!("f.csv:{key}"),
            hash,
        }
    }

    fn patient(value: &str) -> Identity {
        Identity {
            resource_type: "Patient".into(),
            system: "sys".into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_second_record_on_one_identity_is_named_across_flushes() {
        let mut claims = Claims::open().unwrap();
        for i in 0..(FLUSH_EVERY as u128 + 10) {
            let id = patient(&i.to_string());
            assert_eq!(
                claims
                    .identity(&id, claim(&i.to_string(), i), true)
                    .unwrap(),
                None
            );
        }
        // flushed to disk by now: the first claim is still found
        let earlier = claims
            .identity(&patient("0"), claim("other", 99), true)
            .unwrap();
        assert_eq!(earlier, Some(claim("0", 0)));
        // later wins: the next one is named against "other"
        let earlier = claims
            .identity(&patient("0"), claim("third", 98), false)
            .unwrap();
        assert_eq!(earlier.unwrap().key, "other");
        // same content again: no collision
        assert_eq!(
            claims
                .identity(&patient("0"), claim("fourth", 99), true)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_repeated_key_names_the_first_record() {
        let mut claims = Claims::open().unwrap();
        assert_eq!(claims.key(claim("7", 0)).unwrap(), None);
        assert_eq!(claims.key(claim("8", 0)).unwrap(), None);
        claims.flush().unwrap();
        let mut again = claim("7", 0);
        again.at = "f.csv:9".into();
        assert_eq!(claims.key(again).unwrap(), Some(claim("7", 0)));
    }
}
