//! Cutting a file into messages.

/// One message's bytes and where they start in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
}

const MLLP_START: u8 = 0x0B;
const MLLP_END: u8 = 0x1C;

/// Cuts a file into messages. MLLP frames are unwrapped; batch envelope
/// segments (`FHS`, `BHS`, `BTS`, `FTS`) end a message and are dropped;
/// each `MSH` starts a message. Text before the first `MSH` that is not an
/// envelope comes back as a message of its own, so that parsing it names
/// its offset instead of losing it silently.
pub fn split(file: &[u8]) -> Vec<RawMessage<'_>> {
    let start = if file.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    if file[start..].contains(&MLLP_START) {
        return frames(file, start);
    }
    let mut out = Vec::new();
    let mut current: Option<usize> = None;
    let mut at = start;
    fn close<'f>(out: &mut Vec<RawMessage<'f>>, file: &'f [u8], from: Option<usize>, to: usize) {
        if let Some(from) = from {
            let bytes = &file[from..to];
            if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
                out.push(RawMessage {
                    offset: from as u64,
                    bytes,
                });
            }
        }
    }
    while at < file.len() {
        // a segment: up to and including its terminator (CR, LF or CRLF)
        let end = file[at..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(file.len(), |i| at + i + 1);
        let end = if end < file.len() && file[end - 1] == b'\r' && file[end] == b'\n' {
            end + 1
        } else {
            end
        };
        let mut seg = &file[at..end];
        let mut seg_start = at;
        if seg.starts_with(b"\xEF\xBB\xBF") {
            seg = &seg[3..];
            seg_start += 3;
        }
        if seg.starts_with(b"MSH") {
            close(&mut out, file, current, at);
            current = Some(seg_start);
        } else if [&b"FHS"[..], b"BHS", b"BTS", b"FTS"]
            .iter()
            .any(|e| seg.starts_with(e))
        {
            close(&mut out, file, current, at);
            current = None;
        } else if current.is_none() && seg.iter().any(|b| !b.is_ascii_whitespace()) {
            current = Some(seg_start);
        }
        at = end;
    }
    close(&mut out, file, current, file.len());
    out
}

/// MLLP: every `0x0B … 0x1C` frame is a message (its trailing CR dropped);
/// bytes outside frames are ignored.
fn frames(file: &[u8], start: usize) -> Vec<RawMessage<'_>> {
    let mut out = Vec::new();
    let mut at = start;
    while let Some(open) = file[at..].iter().position(|&b| b == MLLP_START) {
        let from = at + open + 1;
        let to = file[from..]
            .iter()
            .position(|&b| b == MLLP_END)
            .map_or(file.len(), |i| from + i);
        // a frame may hold a batch: split it like a file
        for m in split(&file[from..to]) {
            out.push(RawMessage {
                offset: from as u64 + m.offset,
                bytes: m.bytes,
            });
        }
        at = (to + 1).min(file.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(file: &[u8]) -> Vec<(u64, String)> {
        split(file)
            .into_iter()
            .map(|m| (m.offset, String::from_utf8_lossy(m.bytes).into_owned()))
            .collect()
    }

    #[test]
    fn batches_frames_and_back_to_back_messages() {
        let batch = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\rBTS|2\rFTS|1\r";
        let m = offsets(batch);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1, "MSH|^~\\&|A\rPID|1\r");
        assert_eq!(m[1].0, 35);
        let crlf = b"\xEF\xBB\xBFMSH|^~\\&|A\r\nPID|1\r\nMSH|^~\\&|B\r\n";
        let m = offsets(crlf);
        assert_eq!((m[0].0, m[1].0), (3, 22));
        let mllp = b"\x0bMSH|^~\\&|A\rPID|1\r\x1c\r\x0bMSH|^~\\&|B\r\x1c\r";
        let m = offsets(mllp);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1, "MSH|^~\\&|A\rPID|1\r");
        // junk before the first MSH is kept, to be reported
        let m = offsets(b"garbage\nMSH|^~\\&|A");
        assert_eq!(m[0].1, "garbage\n");
        assert_eq!(m[1].1, "MSH|^~\\&|A");
        assert!(split(b"").is_empty());
        assert!(split(b"\x0b").is_empty());
    }
}
