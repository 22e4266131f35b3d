//! The default time zone for v2 times written without an offset.
//!
//! A v2 `DTM` may omit its UTC offset; a FHIR `dateTime` with a time must
//! carry one. The offset then comes from a configured [`Zone`], never from
//! the host running the migration. A zone is written one of two ways:
//!
//! - a fixed offset: `Z`, `UTC`, `+05:30`, `-0500`, `+01`;
//! - an IANA name (`America/New_York`, `Europe/Berlin`), read once from the
//!   system's tz database: the TZif file (RFC 8536) at `$TZDIR/<name>`, or
//!   `/usr/share/zoneinfo/<name>` when `TZDIR` is not set. The offset then
//!   follows the zone's history and daylight-saving rules: its transitions
//!   (the 64-bit block of a version 2+ file, the 32-bit block of a version 1
//!   file) and, after the last of them, the POSIX TZ rule in the file's
//!   footer (`EST5EDT,M3.2.0,M11.1.0`).
//!
//! A wall-clock time that falls in a spring-forward gap takes the offset in
//! force before the gap; one that occurs twice (fall back) takes its first
//! occurrence, the daylight-saving one.

use std::path::{Path, PathBuf};

/// A configured zone: a fixed offset (`Z`, `UTC`, `+05:30`, `-0500`) or an
/// IANA zone read from the tz database (`America/New_York`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    name: String,
    kind: ZoneKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ZoneKind {
    Fixed(i32),
    Tz(TzData),
}

/// A zone setting that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{spec:?} is not a time zone ({why}); write an offset like -05:00 (or Z) or an IANA name like America/New_York"
)]
pub struct ZoneError {
    pub spec: String,
    pub why: String,
}

/// Where the tz database is when `TZDIR` does not say.
const DEFAULT_TZDIR: &str = "/usr/share/zoneinfo";

/// TZif files are a few kilobytes; anything much larger is not one.
const MAX_TZIF_BYTES: u64 = 1 << 20;

/// Offsets of real zones lie within ±26 hours (RFC 8536 bounds `utoff` to
/// -89999..=93599); the UTC instant of a wall-clock time is within this
/// many seconds of that time read as UTC.
const WINDOW: i64 = 2 * 86_400;

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            kind: ZoneKind::Fixed(0),
        }
    }

    /// Reads a zone setting: a fixed offset or an IANA zone name.
    pub fn parse(spec: &str) -> Result<Zone, ZoneError> {
        let dir = match std::env::var_os("TZDIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_TZDIR),
        };
        parse_in(spec, &dir)
    }

    /// The setting as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UTC offset, in seconds east of UTC, of a wall-clock time in this
    /// zone. Out-of-range fields carry over (month 13 is January of the
    /// next year), as `mktime` does.
    pub fn offset_at_local(&self, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i32 {
        match &self.kind {
            ZoneKind::Fixed(seconds) => *seconds,
            ZoneKind::Tz(tz) => {
                let local = days_from_civil(i64::from(y), i64::from(mo), i64::from(d)) * 86_400
                    + i64::from(h) * 3600
                    + i64::from(mi) * 60
                    + i64::from(s);
                tz.offset_at_local(local)
            }
        }
    }
}

/// [`Zone::parse`] with the tz database at `dir` (tests use their own).
fn parse_in(spec: &str, dir: &Path) -> Result<Zone, ZoneError> {
    let bad = |why: String| ZoneError {
        spec: spec.to_owned(),
        why,
    };
    let s = spec.trim();
    if s.is_empty() {
        return Err(bad("the setting is empty".into()));
    }
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Ok(Zone::utc());
    }
    if s.starts_with(['+', '-']) {
        let seconds = parse_offset(s).ok_or_else(|| {
            bad("not an offset: write +HH:MM, +HHMM or +HH, at most 14 hours".into())
        })?;
        return Ok(Zone {
            name: s.to_owned(),
            kind: ZoneKind::Fixed(seconds),
        });
    }
    let tz = load_zone(dir, s).map_err(bad)?;
    Ok(Zone {
        name: s.to_owned(),
        kind: ZoneKind::Tz(tz),
    })
}

/// `+HH:MM`, `+HHMM` or `+HH` (and `-`), as seconds east of UTC.
pub fn parse_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

// ---------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, days since 1970-01-01)

/// Days since 1970-01-01 of a civil date. The month carries over into the
/// year when outside 1..=12, the day into the month when outside it.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = y + (m - 1).div_euclid(12);
    let m = (m - 1).rem_euclid(12) + 1;
    // years start in March, so the leap day is the last of the year
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year a day (since 1970-01-01) falls in.
fn year_of_day(z: i64) -> i64 {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400;
    if mp >= 10 { y + 1 } else { y } // January and February
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// ---------------------------------------------------------------------------
// A zone from the tz database

/// A zone's offsets: transitions (UTC seconds, offset east of UTC from
/// then on), the offset before the first, and the rule after the last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TzData {
    /// Strictly increasing times; consecutive offsets differ.
    transitions: Vec<(i64, i32)>,
    /// In force before the first transition.
    initial: i32,
    /// The footer's POSIX TZ rule, for times after the last transition
    /// (for all times when there are none).
    rule: Option<PosixTz>,
}

impl TzData {
    /// The offset of a wall-clock time given as seconds since the epoch
    /// read as UTC.
    fn offset_at_local(&self, local: i64) -> i32 {
        let lo = local.saturating_sub(WINDOW);
        let hi = local.saturating_add(WINDOW);
        // the periods that can hold `local`: the one in force at `lo`, then
        // those that begin before `hi`; the first has no start
        let mut periods: Vec<(i64, i32)> = Vec::new();
        let last = self.transitions.last().map(|t| t.0);
        let rule = self.rule.as_ref();
        match rule {
            // wholly after the last transition (or there are none): the rule
            Some(rule) if last.is_none_or(|last| last <= lo) => {
                periods.push((i64::MIN, rule.offset_at(lo)));
                periods.extend(rule.transitions_between(lo, hi));
            }
            _ => {
                let a = self.transitions.partition_point(|t| t.0 <= lo);
                let before = match a {
                    0 => self.initial,
                    _ => self.transitions[a - 1].1,
                };
                periods.push((i64::MIN, before));
                periods.extend(self.transitions[a..].iter().take_while(|t| t.0 < hi));
                if let (Some(rule), Some(last)) = (rule, last) {
                    periods.extend(rule.transitions_between(last, hi));
                }
            }
        }
        resolve(&periods, local)
    }
}

/// The offset for a wall-clock time among consecutive periods (start in
/// UTC, offset), the first open to the past: the first period whose span
/// holds `local - offset`; in a gap, the period before the gap.
fn resolve(periods: &[(i64, i32)], local: i64) -> i32 {
    let mut before_gap = periods.first().map_or(0, |p| p.1);
    for (k, &(start, offset)) in periods.iter().enumerate() {
        let end = periods.get(k + 1).map_or(i64::MAX, |p| p.0);
        let utc = local - i64::from(offset);
        if start <= utc && utc < end {
            return offset;
        }
        if start == i64::MIN || start.saturating_add(i64::from(offset)) <= local {
            before_gap = offset;
        }
    }
    before_gap
}

/// Reads zone `name` from the tz database at `dir`; the error says why not.
fn load_zone(dir: &Path, name: &str) -> Result<TzData, String> {
    if name.starts_with('/') || name.contains("..") {
        return Err(format!(
            "{name:?} is not a zone name: a name may not start with / or contain .."
        ));
    }
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+' | b'.');
    if !name.bytes().all(valid) || name.ends_with('/') || name.contains("//") {
        return Err(format!(
            "{name:?} is not a zone name: one is letters, digits and _ - + . between slashes"
        ));
    }
    let path = dir.join(name);
    let bytes = read_capped(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("there is no zone named {name} in {}", dir.display())
        }
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    parse_tzif(&bytes).map_err(|why| format!("{} is not a usable TZif file: {why}", path.display()))
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "a directory",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_TZIF_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TZIF_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than any TZif file",
        ));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// TZif (RFC 8536)

/// A cursor over the file that fails, never panics, at its end.
struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'b [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("the file ends inside its {what}"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&self) -> &'b [u8] {
        &self.bytes[self.at..]
    }
}

/// The counts a TZif header gives.
struct Header {
    version: u8,
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

impl Header {
    fn read(r: &mut Reader) -> Result<Header, String> {
        let head = r.take(20, "header")?;
        if &head[..4] != b"TZif" {
            return Err("it does not start with \"TZif\"".into());
        }
        let version = head[4];
        let mut count = |what| r.u32(what).map(|n| n as usize);
        let h = Header {
            version,
            isutcnt: count("header")?,
            isstdcnt: count("header")?,
            leapcnt: count("header")?,
            timecnt: count("header")?,
            typecnt: count("header")?,
            charcnt: count("header")?,
        };
        if h.typecnt == 0 {
            return Err("it declares no local time types".into());
        }
        if h.isutcnt != 0 && h.isutcnt != h.typecnt {
            return Err("its UT indicator count is neither 0 nor the type count".into());
        }
        if h.isstdcnt != 0 && h.isstdcnt != h.typecnt {
            return Err("its standard indicator count is neither 0 nor the type count".into());
        }
        Ok(h)
    }

    /// The data block's length, with `time` bytes per time value.
    fn block_len(&self, time: usize) -> Result<usize, String> {
        let parts = [
            self.timecnt.checked_mul(time),
            Some(self.timecnt),
            self.typecnt.checked_mul(6),
            Some(self.charcnt),
            self.leapcnt.checked_mul(time + 4),
            Some(self.isstdcnt),
            Some(self.isutcnt),
        ];
        parts
            .iter()
            .try_fold(0usize, |sum, p| p.and_then(|p| sum.checked_add(p)))
            .ok_or_else(|| "its counts are impossibly large".into())
    }
}

/// Reads a TZif file: the 64-bit block and footer of a version 2+ file, the
/// 32-bit block of a version 1 file.
fn parse_tzif(bytes: &[u8]) -> Result<TzData, String> {
    let mut r = Reader { bytes, at: 0 };
    let v1 = Header::read(&mut r)?;
    let (header, time_len) = match v1.version {
        0 => (v1, 4),
        v if v >= b'2' => {
            let skip = v1.block_len(4)?;
            r.take(skip, "version 1 data")?;
            let v2 = Header::read(&mut r)?;
            (v2, 8)
        }
        v => return Err(format!("it has the unknown version byte {v:#04x}")),
    };
    let h = header;
    // checks the counts once, so the products below cannot overflow
    h.block_len(time_len)?;
    let times_raw = r.take(h.timecnt * time_len, "transition times")?;
    let indices = r.take(h.timecnt, "transition types")?;
    let types_raw = r.take(h.typecnt * 6, "local time types")?;
    r.take(h.charcnt, "time zone designations")?;
    let leaps_raw = r.take(h.leapcnt * (time_len + 4), "leap second records")?;
    r.take(h.isstdcnt, "standard/wall indicators")?;
    r.take(h.isutcnt, "UT/local indicators")?;

    let time_at = |raw: &[u8], i: usize| -> i64 {
        let b = &raw[i * time_len..(i + 1) * time_len];
        match *b {
            [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
            _ => 0,
        }
    };

    // ttinfo: utoff (i32), isdst (u8), desigidx (u8)
    let mut types = Vec::with_capacity(h.typecnt);
    for t in types_raw.chunks_exact(6) {
        let utoff = i32::from_be_bytes([t[0], t[1], t[2], t[3]]);
        let isdst = t[4];
        let desigidx = usize::from(t[5]);
        if !(-89_999..=93_599).contains(&utoff) {
            return Err(format!(
                "a local time type has the offset {utoff} s, beyond ±26 hours"
            ));
        }
        if isdst > 1 {
            return Err(format!("a local time type has the DST flag {isdst}"));
        }
        if desigidx >= h.charcnt {
            return Err("a local time type's designation lies outside the file".into());
        }
        types.push((utoff, isdst == 1));
    }

    // leap second records: (occurrence, correction), for "right/" zones
    let mut leaps: Vec<(i64, i64)> = Vec::with_capacity(h.leapcnt);
    let leap_len = time_len + 4;
    for i in 0..h.leapcnt {
        let rec = &leaps_raw[i * leap_len..(i + 1) * leap_len];
        let occurrence = time_at(rec, 0);
        let c = &rec[time_len..];
        let correction = i64::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        leaps.push((occurrence, correction));
    }

    let mut transitions: Vec<(i64, i32)> = Vec::with_capacity(h.timecnt);
    let mut previous: Option<i64> = None;
    for (i, &index) in indices.iter().enumerate() {
        let t = time_at(times_raw, i);
        if previous.is_some_and(|p| p >= t) {
            return Err("its transition times are not in increasing order".into());
        }
        previous = Some(t);
        let (offset, _) = *types
            .get(usize::from(index))
            .ok_or("a transition names a local time type the file does not have")?;
        // with leap seconds, times count them: back to POSIX (UTC) seconds
        let correction = leaps
            .iter()
            .take_while(|l| l.0 <= t)
            .last()
            .map_or(0, |l| l.1);
        transitions.push((t.saturating_sub(correction), offset));
    }

    // before the first transition: the first standard-time type, else type 0
    let initial = types
        .iter()
        .find(|t| !t.1)
        .or(types.first())
        .map_or(0, |t| t.0);

    // drop transitions that change nothing but the name or the DST flag
    let mut kept: Vec<(i64, i32)> = Vec::with_capacity(transitions.len());
    for t in transitions {
        let current = kept.last().map_or(initial, |k| k.1);
        if t.1 != current {
            kept.push(t);
        }
    }

    // the footer: "\n" POSIX TZ string "\n"; unreadable means none
    let rule = if time_len == 8 {
        read_footer(r.rest())
    } else {
        None
    };
    Ok(TzData {
        transitions: kept,
        initial,
        rule,
    })
}

fn read_footer(rest: &[u8]) -> Option<PosixTz> {
    let body = rest.strip_prefix(b"\n")?;
    let end = body.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&body[..end]).ok()?;
    PosixTz::parse(text)
}

// ---------------------------------------------------------------------------
// POSIX TZ strings (the TZif footer)

/// A POSIX TZ rule: a standard offset and, for zones with daylight saving,
/// when it starts and ends each year.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PosixTz {
    /// Seconds east of UTC (POSIX writes them west: `EST5`).
    std: i32,
    dst: Option<DstRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DstRule {
    /// Seconds east of UTC.
    offset: i32,
    start: RuleDate,
    /// Local (standard) time of day the change happens, in seconds.
    start_time: i32,
    end: RuleDate,
    /// Local (daylight) time of day the change happens, in seconds.
    end_time: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleDate {
    /// `Mm.w.d`: day `d` (0 = Sunday) of week `w` (5 = last) of month `m`.
    MonthWeekDay { month: u8, week: u8, weekday: u8 },
    /// `Jn`: day 1..=365, February 29 never counted.
    Julian1(u16),
    /// `n`: day 0..=365, February 29 counted in leap years.
    Julian0(u16),
}

impl RuleDate {
    /// Days since 1970-01-01 of this date in year `y`.
    fn day_in(self, y: i64) -> i64 {
        match self {
            RuleDate::MonthWeekDay {
                month,
                week,
                weekday,
            } => {
                let (m, w, d) = (i64::from(month), i64::from(week), i64::from(weekday));
                let first = days_from_civil(y, m, 1);
                let first_weekday = (first + 4).rem_euclid(7); // 1970-01-01: Thursday
                let mut day = 1 + (d - first_weekday).rem_euclid(7) + (w - 1) * 7;
                while day > days_in_month(y, m) {
                    day -= 7;
                }
                first + day - 1
            }
            RuleDate::Julian1(n) => {
                let n = i64::from(n);
                let leap_day = if is_leap(y) && n >= 60 { 1 } else { 0 };
                days_from_civil(y, 1, 1) + n - 1 + leap_day
            }
            RuleDate::Julian0(n) => days_from_civil(y, 1, 1) + i64::from(n),
        }
    }
}

impl PosixTz {
    fn parse(s: &str) -> Option<PosixTz> {
        let mut p = PosixParser {
            s: s.as_bytes(),
            at: 0,
        };
        p.name()?;
        let std = -p.hms(24)?;
        if p.done() {
            return Some(PosixTz { std, dst: None });
        }
        p.name()?;
        let offset = if p.peek() == Some(b',') {
            std + 3600
        } else {
            -p.hms(24)?
        };
        // daylight saving with no rule: POSIX leaves the dates to the
        // implementation, so this reader does not guess them
        p.eat(b',')?;
        let (start, start_time) = p.date_time()?;
        p.eat(b',')?;
        let (end, end_time) = p.date_time()?;
        if !p.done() {
            return None;
        }
        Some(PosixTz {
            std,
            dst: Some(DstRule {
                offset,
                start,
                start_time,
                end,
                end_time,
            }),
        })
    }

    /// The UTC times the offset changes in year `y` (unsorted).
    fn transitions_in(&self, y: i64) -> Option<[(i64, i32); 2]> {
        let dst = self.dst.as_ref()?;
        let start = dst.start.day_in(y) * 86_400 + i64::from(dst.start_time) - i64::from(self.std);
        let end = dst.end.day_in(y) * 86_400 + i64::from(dst.end_time) - i64::from(dst.offset);
        Some([(start, dst.offset), (end, self.std)])
    }

    /// All changes in the years around `from..to`, sorted.
    fn changes_around(&self, from: i64, to: i64) -> Vec<(i64, i32)> {
        let first = year_of_day(from.div_euclid(86_400)) - 2;
        let last = year_of_day(to.div_euclid(86_400)) + 1;
        let mut out: Vec<(i64, i32)> = (first..=last)
            .filter_map(|y| self.transitions_in(y))
            .flatten()
            .collect();
        out.sort_by_key(|t| t.0);
        out
    }

    /// The offset in force at UTC time `t`.
    fn offset_at(&self, t: i64) -> i32 {
        self.changes_around(t, t)
            .iter()
            .take_while(|c| c.0 <= t)
            .last()
            .map_or(self.std, |c| c.1)
    }

    /// The changes strictly after `after` and before `before`, sorted, with
    /// any that change nothing dropped.
    fn transitions_between(&self, after: i64, before: i64) -> Vec<(i64, i32)> {
        let mut current = self.offset_at(after);
        let mut out = Vec::new();
        for (t, offset) in self.changes_around(after, before) {
            if t > after && t < before && offset != current {
                out.push((t, offset));
                current = offset;
            }
        }
        out
    }
}

struct PosixParser<'s> {
    s: &'s [u8],
    at: usize,
}

impl PosixParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at == self.s.len()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// `EST` or `<+0530>`.
    fn name(&mut self) -> Option<()> {
        let start = self.at;
        if self.peek() == Some(b'<') {
            self.at += 1;
            while self.peek()? != b'>' {
                self.at += 1;
            }
            self.at += 1;
            (self.at - start > 2).then_some(())
        } else {
            while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
                self.at += 1;
            }
            (self.at > start).then_some(())
        }
    }

    fn number(&mut self, max_digits: usize) -> Option<i32> {
        let start = self.at;
        let mut n: i32 = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            if self.at - start == max_digits {
                return None;
            }
            n = n * 10 + i32::from(b - b'0');
            self.at += 1;
        }
        (self.at > start).then_some(n)
    }

    /// `[+-]hh[:mm[:ss]]` in seconds, hours at most `max_hours`.
    fn hms(&mut self, max_hours: i32) -> Option<i32> {
        let sign = match self.peek() {
            Some(b'-') => {
                self.at += 1;
                -1
            }
            Some(b'+') => {
                self.at += 1;
                1
            }
            _ => 1,
        };
        let h = self.number(3)?;
        let mut m = 0;
        let mut s = 0;
        if self.peek() == Some(b':') {
            self.at += 1;
            m = self.number(2)?;
            if self.peek() == Some(b':') {
                self.at += 1;
                s = self.number(2)?;
            }
        }
        if h > max_hours || m > 59 || s > 59 {
            return None;
        }
        Some(sign * (h * 3600 + m * 60 + s))
    }

    /// `Mm.w.d`, `Jn` or `n`, then an optional `/time` (02:00 when absent).
    fn date_time(&mut self) -> Option<(RuleDate, i32)> {
        let date = match self.peek()? {
            b'M' => {
                self.at += 1;
                let month = self.number(2)?;
                self.eat(b'.')?;
                let week = self.number(1)?;
                self.eat(b'.')?;
                let weekday = self.number(1)?;
                if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 {
                    return None;
                }
                RuleDate::MonthWeekDay {
                    month: month as u8,
                    week: week as u8,
                    weekday: weekday as u8,
                }
            }
            b'J' => {
                self.at += 1;
                let n = self.number(3)?;
                if !(1..=365).contains(&n) {
                    return None;
                }
                RuleDate::Julian1(n as u16)
            }
            _ => {
                let n = self.number(3)?;
                if n > 365 {
                    return None;
                }
                RuleDate::Julian0(n as u16)
            }
        };
        let time = if self.peek() == Some(b'/') {
            self.at += 1;
            // RFC 8536 extends the hours to -167..=167
            self.hms(167)?
        } else {
            7200
        };
        Some((date, time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system tz database, or `None` (and a note) when it is missing.
    fn system_db() -> Option<&'static Path> {
        let dir = Path::new(DEFAULT_TZDIR);
        if dir.join("America/New_York").is_file() {
            Some(dir)
        } else {
            eprintln!("skipped: no tz database at {DEFAULT_TZDIR}");
            None
        }
    }

    fn zone(name: &str) -> Option<Zone> {
        let dir = system_db()?;
        Some(parse_in(name, dir).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    /// A fresh directory under the system temp dir.
    fn scratch_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fhirlift-zone-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A TZif file: version byte, 64-bit (or 32-bit for v1) transitions,
    /// types (utoff, isdst), footer.
    fn tzif(
        version: u8,
        transitions: &[(i64, u8)],
        types: &[(i32, bool)],
        footer: &str,
    ) -> Vec<u8> {
        let block = |time_len: usize, out: &mut Vec<u8>| {
            out.extend_from_slice(b"TZif");
            out.push(version);
            out.extend_from_slice(&[0; 15]);
            let charcnt = 4 * types.len();
            for n in [0, 0, 0, transitions.len(), types.len(), charcnt] {
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for &(t, _) in transitions {
                if time_len == 8 {
                    out.extend_from_slice(&t.to_be_bytes());
                } else {
                    out.extend_from_slice(&(t as i32).to_be_bytes());
                }
            }
            out.extend(transitions.iter().map(|t| t.1));
            for (i, &(utoff, isdst)) in types.iter().enumerate() {
                out.extend_from_slice(&utoff.to_be_bytes());
                out.push(u8::from(isdst));
                out.push((4 * i) as u8);
            }
            for _ in types {
                out.extend_from_slice(b"ABC\0");
            }
        };
        let mut out = Vec::new();
        block(4, &mut out);
        if version != 0 {
            block(8, &mut out);
            out.push(b'\n');
            out.extend_from_slice(footer.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn ny() -> Option<Zone> {
        zone("America/New_York")
    }

    #[test]
    fn fixed_offsets() {
        let cases = [
            ("Z", 0),
            ("utc", 0),
            ("+05:30", 19_800),
            ("-0500", -18_000),
            ("+01", 3600),
            (" -03:30 ", -12_600),
        ];
        for (spec, seconds) in cases {
            let z = Zone::parse(spec).unwrap();
            assert_eq!(z.offset_at_local(2023, 6, 15, 9, 30, 0), seconds, "{spec}");
        }
        assert_eq!(Zone::parse("Z").unwrap(), Zone::utc());
        assert_eq!(Zone::parse("+05:30").unwrap().name(), "+05:30");
        for bad in ["+25:00", "-05:75", "+5", "+0530x", ""] {
            let e = Zone::parse(bad).unwrap_err();
            assert!(e.to_string().contains("America/New_York"), "{e}");
            assert!(e.to_string().contains("-05:00"), "{e}");
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2023, 13, 1), days_from_civil(2024, 1, 1));
        assert_eq!(days_from_civil(2024, 0, 1), days_from_civil(2023, 12, 1));
        for day in [-800_000, -1, 0, 59, 60, 11_016, 11_017, 19_722, 2_932_896] {
            let y = year_of_day(day);
            assert!(days_from_civil(y, 1, 1) <= day && day < days_from_civil(y + 1, 1, 1));
        }
    }

    #[test]
    fn new_york() {
        let Some(z) = ny() else { return };
        assert_eq!(z.name(), "America/New_York");
        assert_eq!(z.offset_at_local(2023, 6, 15, 9, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 1, 15, 9, 30, 0), -18_000);
        // spring forward: 02:30 does not exist; the offset before the gap
        assert_eq!(z.offset_at_local(2023, 3, 12, 2, 30, 0), -18_000);
        assert_eq!(z.offset_at_local(2023, 3, 12, 1, 59, 59), -18_000);
        assert_eq!(z.offset_at_local(2023, 3, 12, 3, 0, 0), -14_400);
        // fall back: 01:30 happens twice; the first, daylight, one
        assert_eq!(z.offset_at_local(2023, 11, 5, 1, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 11, 5, 0, 59, 59), -14_400);
        assert_eq!(z.offset_at_local(2023, 11, 5, 2, 0, 0), -18_000);
        // past the file's transitions: the footer rule
        assert_eq!(z.offset_at_local(2040, 7, 1, 12, 0, 0), -14_400);
        assert_eq!(z.offset_at_local(2040, 1, 1, 12, 0, 0), -18_000);
        assert_eq!(z.offset_at_local(2099, 3, 8, 2, 30, 0), -18_000); // gap
        assert_eq!(z.offset_at_local(2099, 11, 1, 1, 30, 0), -14_400); // overlap
        // `TZ=America/New_York date -d '1950-07-01 12:00' +%z` says -0400
        assert_eq!(z.offset_at_local(1950, 7, 1, 12, 0, 0), -14_400);
        // before time zones: local mean time, -4:56:02
        assert_eq!(z.offset_at_local(1800, 1, 1, 0, 0, 0), -17_762);
        // nothing panics at the ends of the calendar
        z.offset_at_local(i32::MAX, 12, 31, 23, 59, 59);
        z.offset_at_local(i32::MIN, 1, 1, 0, 0, 0);
        z.offset_at_local(2023, u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX);
    }

    #[test]
    fn other_zones() {
        let Some(berlin) = zone("Europe/Berlin") else {
            return;
        };
        assert_eq!(berlin.offset_at_local(2023, 7, 1, 12, 0, 0), 7200);
        assert_eq!(berlin.offset_at_local(2023, 12, 1, 12, 0, 0), 3600);
        assert_eq!(berlin.offset_at_local(2050, 7, 1, 12, 0, 0), 7200);
        let kolkata = zone("Asia/Kolkata").unwrap();
        assert_eq!(kolkata.offset_at_local(2023, 7, 1, 12, 0, 0), 19_800);
        assert_eq!(kolkata.offset_at_local(2060, 1, 1, 12, 0, 0), 19_800);
        if Path::new(DEFAULT_TZDIR)
            .join("Australia/Lord_Howe")
            .is_file()
        {
            let lh = zone("Australia/Lord_Howe").unwrap();
            assert_eq!(lh.offset_at_local(2023, 1, 15, 12, 0, 0), 39_600);
            assert_eq!(lh.offset_at_local(2023, 7, 15, 12, 0, 0), 37_800);
            assert_eq!(lh.offset_at_local(2045, 1, 15, 12, 0, 0), 39_600);
            assert_eq!(lh.offset_at_local(2045, 7, 15, 12, 0, 0), 37_800);
        } else {
            eprintln!("skipped Australia/Lord_Howe: not in the tz database");
        }
    }

    #[test]
    fn bad_names() {
        let Some(dir) = system_db() else { return };
        for name in [
            "Mars/Base",
            "../etc/passwd",
            "/etc/passwd",
            "America/../UTC",
            "America/",
        ] {
            let e = parse_in(name, dir).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("America/New_York") && text.contains("-05:00"),
                "{text}"
            );
        }
        let e = parse_in("Mars/Base", dir).unwrap_err();
        assert!(e.why.contains("no zone named Mars/Base"), "{}", e.why);
        let e = parse_in("../etc/passwd", dir).unwrap_err();
        assert!(e.why.contains(".."), "{}", e.why);
        // a directory, and a file of the database that is not TZif
        assert!(parse_in("America", dir).is_err());
        if dir.join("zone.tab").is_file() {
            let e = parse_in("zone.tab", dir).unwrap_err();
            assert!(e.why.contains("TZif"), "{}", e.why);
        }
    }

    #[test]
    fn damaged_files() {
        let dir = scratch_dir();
        let good = tzif(
            b'2',
            &[(0, 1), (100_000, 0)],
            &[(3600, false), (7200, true)],
            "",
        );
        std::fs::write(dir.join("Good"), &good).unwrap();
        assert!(parse_in("Good", &dir).is_ok());
        // every truncation fails cleanly (the footer is optional)
        let footer_at = good.len() - 2;
        for n in 0..footer_at {
            std::fs::write(dir.join("Cut"), &good[..n]).unwrap();
            let e = parse_in("Cut", &dir).unwrap_err();
            assert!(e.why.contains("TZif"), "{n}: {}", e.why);
        }
        std::fs::write(dir.join("Garbage"), b"TZif2 this is not a zone file at all").unwrap();
        assert!(parse_in("Garbage", &dir).is_err());
        // a transition to a type the file does not have
        let mut bad = good.clone();
        let last_index = bad.len() - 2 - 2 * 6 - 8 - 1; // footer, types, chars
        bad[last_index] = 9;
        std::fs::write(dir.join("BadIndex"), &bad).unwrap();
        assert!(parse_in("BadIndex", &dir).is_err());
        // times out of order
        let unordered = tzif(b'2', &[(5, 1), (5, 0)], &[(3600, false), (7200, true)], "");
        std::fs::write(dir.join("Unordered"), &unordered).unwrap();
        assert!(parse_in("Unordered", &dir).is_err());
        // any byte flipped: an error or a zone, never a panic
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0xA5;
            std::fs::write(dir.join("Flipped"), &flipped).unwrap();
            if let Ok(z) = parse_in("Flipped", &dir) {
                z.offset_at_local(2023, 6, 1, 12, 0, 0);
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn synthetic_files() {
        let dir = scratch_dir();
        // version 1: 32-bit times, no footer; the last offset holds after
        let v1 = tzif(0, &[(1_000_000_000, 1)], &[(3600, false), (7200, true)], "");
        std::fs::write(dir.join("V1"), &v1).unwrap();
        let z = parse_in("V1", &dir).unwrap();
        assert_eq!(z.offset_at_local(1990, 1, 1, 0, 0, 0), 3600);
        assert_eq!(z.offset_at_local(2030, 1, 1, 0, 0, 0), 7200);
        // a slim file: one transition, then the footer rule
        let types = [(-18_000, false), (-14_400, true)];
        let slim = tzif(b'2', &[(0, 0)], &types, "EST5EDT,M3.2.0,M11.1.0");
        std::fs::write(dir.join("Slim"), &slim).unwrap();
        let z = parse_in("Slim", &dir).unwrap();
        assert_eq!(z.offset_at_local(2023, 6, 15, 9, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 3, 12, 2, 30, 0), -18_000);
        assert_eq!(z.offset_at_local(2023, 11, 5, 1, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 11, 5, 2, 30, 0), -18_000);
        // an unreadable footer: the last transition's offset
        let odd = tzif(b'3', &[(0, 1)], &types, "EST5EDT");
        std::fs::write(dir.join("Odd"), &odd).unwrap();
        let z = parse_in("Odd", &dir).unwrap();
        assert_eq!(z.offset_at_local(2023, 1, 15, 0, 0, 0), -14_400);
        // no transitions at all: the footer for every time
        let rule_only = tzif(b'2', &[], &types, "EST5EDT,M3.2.0,M11.1.0");
        std::fs::write(dir.join("RuleOnly"), &rule_only).unwrap();
        let z = parse_in("RuleOnly", &dir).unwrap();
        assert_eq!(z.offset_at_local(1900, 7, 1, 0, 0, 0), -14_400);
        assert_eq!(z.offset_at_local(1900, 1, 1, 0, 0, 0), -18_000);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn posix_rules() {
        let ny = PosixTz::parse("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(ny.std, -18_000);
        let dst = ny.dst.as_ref().unwrap();
        assert_eq!(
            (dst.offset, dst.start_time, dst.end_time),
            (-14_400, 7200, 7200)
        );
        // 2023: 12 March 07:00 UTC, 5 November 06:00 UTC
        let start = days_from_civil(2023, 3, 12) * 86_400 + 7 * 3600;
        let end = days_from_civil(2023, 11, 5) * 86_400 + 6 * 3600;
        assert_eq!(ny.offset_at(start - 1), -18_000);
        assert_eq!(ny.offset_at(start), -14_400);
        assert_eq!(ny.offset_at(end - 1), -14_400);
        assert_eq!(ny.offset_at(end), -18_000);

        let lord_howe = PosixTz::parse("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0").unwrap();
        assert_eq!(lord_howe.std, 37_800);
        assert_eq!(lord_howe.dst.as_ref().unwrap().offset, 39_600);

        let berlin = PosixTz::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let dst = berlin.dst.as_ref().unwrap();
        assert_eq!((dst.start_time, dst.end_time), (7200, 10_800));
        // last Sunday of March 2023: the 26th
        let last_sunday = RuleDate::MonthWeekDay {
            month: 3,
            week: 5,
            weekday: 0,
        };
        assert_eq!(last_sunday.day_in(2023), days_from_civil(2023, 3, 26));
        assert_eq!(
            RuleDate::Julian1(60).day_in(2024),
            days_from_civil(2024, 3, 1)
        );
        assert_eq!(
            RuleDate::Julian0(59).day_in(2024),
            days_from_civil(2024, 2, 29)
        );

        assert_eq!(
            PosixTz::parse("IST-5:30"),
            Some(PosixTz {
                std: 19_800,
                dst: None
            })
        );
        assert!(PosixTz::parse("<-03>3").is_some());
        assert!(PosixTz::parse("America/Godthab,M3.5.0/-2,M10.5.0/-1").is_none());
        assert!(PosixTz::parse("<-02>2<-01>,M3.5.0/-1,M10.5.0/0").is_some());
        for bad in [
            "",
            "EST",
            "5",
            "EST5EDT,M13.1.0,M11.1.0",
            "EST5EDT,M3.2.0",
            "<EST5",
        ] {
            assert!(PosixTz::parse(bad).is_none(), "{bad}");
        }
    }
}
