//! fhirlift-hl7v2: an HL7 v2 (ER7) parser that never panics.
//!
//! - [`split`] cuts a file into messages: a leading UTF-8 BOM, MLLP frames
//!   (`0x0B … 0x1C 0x0D`), batch envelopes (`FHS`/`BHS`/`BTS`/`FTS`) and
//!   plain back-to-back messages, each with its byte offset in the file.
//! - [`Message::parse`] reads one message: the delimiters from MSH-1 and
//!   MSH-2 (any characters, the v2.7 truncation character too), the
//!   character set from MSH-18 (through encoding_rs), segments ended by CR,
//!   LF or CRLF.
//! - Fields, repetitions, components and subcomponents are borrowed slices
//!   of the message text, decoded on demand ([`Message::value`]): escapes
//!   `\F\ \S\ \T\ \R\ \E\ \Xhh…\ \.br\` become their characters, others are
//!   kept as written, and `""` is an explicit null.
//! - [`Path`] reads terser-style paths: `PID-5.1`, `PID-3(2).4.1`, `OBX-5`.
//!
//! A damaged message is an [`Hl7Error`] with its byte offset and control id
//! (MSH-10) when it has one; the caller goes on with the next message.

mod escape;
pub mod fhir;
mod path;
mod split;
pub mod zone;

pub use escape::{decode, encode};
pub use path::{Path, PathError};
pub use split::{RawMessage, split};
pub use zone::{Zone, ZoneError};

use std::borrow::Cow;
use std::ops::Range;

/// A message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Hl7Error {
    /// Byte offset of the message in its file.
    pub offset: u64,
    /// MSH-10, when the message got that far.
    pub control_id: Option<String>,
    pub message: String,
}

/// The separators a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: Option<char>,
    /// v2.7's truncation character (`#`), when declared.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: Some('&'),
            truncation: None,
        }
    }
}

/// One segment: its name and where its text lies in the message.
#[derive(Debug, Clone)]
struct SegmentSpan {
    range: Range<usize>,
    /// Field start offsets (relative to the segment), field 0 being the name.
    fields: Vec<Range<usize>>,
}

/// One parsed message. Values are slices of its text, decoded when asked.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: Cow<'a, str>,
    delimiters: Delimiters,
    segments: Vec<SegmentSpan>,
    offset: u64,
}

/// A segment of a message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m> {
    message: &'m Message<'m>,
    index: usize,
}

impl<'a> Message<'a> {
    /// Parses one message's bytes (as [`split`] gives them), found at
    /// `offset` in its file.
    pub fn parse(bytes: &'a [u8], offset: u64) -> Result<Message<'a>, Hl7Error> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let fail = |control_id: Option<String>, message: String| Hl7Error {
            offset,
            control_id,
            message,
        };
        if !bytes.starts_with(b"MSH") {
            return Err(fail(
                None,
                "the message does not start with an MSH segment".into(),
            ));
        }
        let delimiters = read_delimiters(bytes).map_err(|m| fail(None, m))?;
        // MSH-18 repeats: the first character set is the message's own
        let charset = msh_field_raw(bytes, &delimiters, 18)
            .and_then(|f| f.split(|&b| b == delimiters.repetition as u8).next());
        let control_id = msh_field_raw(bytes, &delimiters, 10)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .filter(|s| !s.is_empty());
        let text = decode_charset(bytes, charset).map_err(|m| fail(control_id.clone(), m))?;
        let mut message = Message {
            text,
            delimiters,
            segments: Vec::new(),
            offset,
        };
        message.index_segments();
        Ok(message)
    }

    fn index_segments(&mut self) {
        let text: &str = &self.text;
        let field = self.delimiters.field;
        let mut at = 0;
        for line in text.split_inclusive(['\r', '\n']) {
            let start = at;
            at += line.len();
            let body = line.trim_end_matches(['\r', '\n']);
            if body.trim().is_empty() {
                continue;
            }
            let end = start + body.len();
            let mut fields = Vec::new();
            let mut field_start = 0;
            let is_msh =
                body.starts_with("MSH") || body.starts_with("FHS") || body.starts_with("BHS");
            for (i, c) in body.char_indices() {
                if c == field {
                    fields.push(field_start..i);
                    field_start = i + c.len_utf8();
                    if is_msh && fields.len() == 1 {
                        // MSH-1 is the separator itself: a field of its own
                        fields.push(i..field_start);
                    }
                }
            }
            fields.push(field_start..body.len());
            self.segments.push(SegmentSpan {
                range: start..end,
                fields,
            });
        }
    }

    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }

    /// The same message owning its text, to outlive the file buffer.
    pub fn into_owned(self) -> Message<'static> {
        Message {
            text: Cow::Owned(self.text.into_owned()),
            delimiters: self.delimiters,
            segments: self.segments,
            offset: self.offset,
        }
    }

    /// Byte offset of the message in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The whole message as text (segments separated as in the file).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        (0..self.segments.len()).map(move |index| Segment {
            message: self,
            index,
        })
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.name() == name)
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> Option<String> {
        self.get("MSH-10").filter(|s| !s.is_empty())
    }

    /// MSH-9 as `TYPE^EVENT` (components 1 and 2).
    pub fn message_type(&self) -> Option<(String, String)> {
        let msh = self.segment("MSH")?;
        let t = msh.component(9, 0, 1).map(|s| self.value(s))?;
        let e = msh
            .component(9, 0, 2)
            .map(|s| self.value(s))
            .unwrap_or_default();
        Some((t, e))
    }

    /// Decodes a raw slice of this message: escapes resolved, `""` empty.
    pub fn value(&self, raw: &str) -> String {
        escape::decode(raw, &self.delimiters).unwrap_or_default()
    }

    /// The value at a terser path (`PID-5.1`), decoded; `None` when the
    /// message has no such part or the path is not valid.
    pub fn get(&self, path: &str) -> Option<String> {
        let path = Path::parse(path).ok()?;
        let raw = self.raw_at(&path, 0)?;
        Some(self.value(raw))
    }

    /// The raw slice at a path, in the `nth` segment of that name.
    pub fn raw_at(&self, path: &Path, nth: usize) -> Option<&str> {
        let segment = self
            .segments()
            .filter(|s| s.name() == path.segment)
            .nth(nth)?;
        segment.raw(path)
    }
}

impl<'m> Segment<'m> {
    fn span(&self) -> &'m SegmentSpan {
        &self.message.segments[self.index]
    }

    fn slice(&self, r: &Range<usize>) -> &'m str {
        let base = self.span().range.start;
        &self.message.text[base + r.start..base + r.end]
    }

    /// The segment's name (`PID`).
    pub fn name(&self) -> &'m str {
        self.span()
            .fields
            .first()
            .map(|r| self.slice(r))
            .unwrap_or("")
    }

    /// The segment's whole text.
    pub fn text(&self) -> &'m str {
        let r = &self.span().range;
        &self.message.text[r.clone()]
    }

    /// Its place among the message's segments (0 is MSH).
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many fields it has (after the name).
    pub fn field_count(&self) -> usize {
        self.span().fields.len().saturating_sub(1)
    }

    /// Field `n` (1-based) as written, repetitions included.
    pub fn field(&self, n: usize) -> Option<&'m str> {
        self.span().fields.get(n).map(|r| self.slice(r))
    }

    /// The repetitions of field `n`. MSH-2 (the encoding characters) is
    /// never split.
    pub fn repetitions(&self, n: usize) -> Vec<&'m str> {
        let Some(f) = self.field(n) else {
            return Vec::new();
        };
        if self.is_header() && n <= 2 {
            return vec![f];
        }
        f.split(self.message.delimiters.repetition).collect()
    }

    fn is_header(&self) -> bool {
        matches!(self.name(), "MSH" | "FHS" | "BHS")
    }

    /// Component `c` (1-based) of repetition `rep` (0-based) of field `n`.
    pub fn component(&self, n: usize, rep: usize, c: usize) -> Option<&'m str> {
        let r = *self.repetitions(n).get(rep)?;
        if self.is_header() && n <= 2 {
            return (c == 1).then_some(r);
        }
        r.split(self.message.delimiters.component)
            .nth(c.checked_sub(1)?)
    }

    /// The raw slice a path names within this segment.
    pub fn raw(&self, path: &Path) -> Option<&'m str> {
        let rep = path.repetition.unwrap_or(1).checked_sub(1)?;
        let mut raw = match path.component {
            None => *self.repetitions(path.field).get(rep)?,
            Some(c) => self.component(path.field, rep, c)?,
        };
        if let (Some(s), Some(sub)) = (path.subcomponent, self.message.delimiters.subcomponent) {
            raw = raw.split(sub).nth(s.checked_sub(1)?)?;
        }
        Some(raw)
    }
}

/// MSH-1 and MSH-2 of a message starting with `MSH`.
fn read_delimiters(bytes: &[u8]) -> Result<Delimiters, String> {
    let head = &bytes[3..];
    let field = *head
        .first()
        .ok_or_else(|| "MSH ends before its field separator".to_owned())?;
    if field.is_ascii_alphanumeric() || field == b'\r' || field == b'\n' || !field.is_ascii() {
        return Err(format!(
            "MSH-1 (the field separator) is {:?}, not a punctuation character",
            field as char
        ));
    }
    let encoding: Vec<u8> = head[1..]
        .iter()
        .take_while(|&&b| b != field && b != b'\r' && b != b'\n')
        .copied()
        .collect();
    if encoding.len() < 2 || !encoding.iter().all(|b| b.is_ascii_punctuation()) {
        return Err(format!(
            "MSH-2 (the encoding characters) is {:?}: it needs at least the component and repetition separators",
            String::from_utf8_lossy(&encoding)
        ));
    }
    let c = |i: usize| encoding.get(i).map(|&b| b as char);
    let d = Delimiters {
        field: field as char,
        component: encoding[0] as char,
        repetition: encoding[1] as char,
        escape: c(2),
        subcomponent: c(3),
        truncation: c(4),
    };
    let all = [
        Some(d.field),
        Some(d.component),
        Some(d.repetition),
        d.escape,
        d.subcomponent,
    ];
    for (i, a) in all.iter().enumerate() {
        if a.is_some() && all[i + 1..].contains(a) {
            return Err(format!(
                "MSH-2 declares {:?} twice among the separators",
                a.unwrap_or(' ')
            ));
        }
    }
    Ok(d)
}

/// The raw bytes of MSH field `n` (counting MSH-1 as the separator).
fn msh_field_raw<'b>(bytes: &'b [u8], d: &Delimiters, n: usize) -> Option<&'b [u8]> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    // fields after "MSH|": index 0 is MSH-2
    line.get(4..)?
        .split(|&b| b == d.field as u8)
        .nth(n.checked_sub(2)?)
}

/// The message as text, in the character set MSH-18 names (UTF-8 when
/// none; text that is not valid UTF-8 without MSH-18 is read as Latin-1,
/// the commonest legacy case, never dropped).
fn decode_charset<'b>(bytes: &'b [u8], charset: Option<&[u8]>) -> Result<Cow<'b, str>, String> {
    let name = charset
        .map(|c| String::from_utf8_lossy(c).trim().to_ascii_uppercase())
        .filter(|c| !c.is_empty());
    let label: Option<String> = match name.as_deref() {
        None | Some("UNICODE UTF-8") | Some("UTF-8") | Some("ASCII") => None,
        Some(n) if n.starts_with("8859/") => Some(format!("iso-8859-{}", &n[5..])),
        Some("ISO IR87") | Some("ISO IR159") => Some("iso-2022-jp".into()),
        Some("UNICODE UTF-16") => Some("utf-16le".into()),
        Some("GB 18030-2000") => Some("gb18030".into()),
        Some("KS X 1001") => Some("euc-kr".into()),
        Some("CNS 11643-1992") | Some("BIG-5") => Some("big5".into()),
        Some(other) => Some(other.to_ascii_lowercase()),
    };
    match label {
        None => match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => Ok(Cow::Owned(
                encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
                    .into_owned(),
            )),
        },
        Some(label) => {
            let encoding = encoding_rs::Encoding::for_label(label.as_bytes()).ok_or_else(|| {
                format!(
                    "MSH-18 names the character set {:?}, which fhirlift does not know",
                    name.unwrap_or_default()
                )
            })?;
            Ok(encoding.decode_without_bom_handling(bytes).0)
        }
    }
}
