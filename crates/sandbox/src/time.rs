//! `lastUpdated` timestamps.

/// Now as an RFC 3339 instant with milliseconds, in UTC.
pub fn now_instant() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants_have_milliseconds_and_say_utc() {
        let now = super::now_instant();
        assert_eq!(now.len(), "2024-01-01T00:00:00.000Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[19] == b'.', "{now}");
        assert!(now.parse::<jiff::Timestamp>().is_ok(), "{now}");
    }
}
