//! Where a file is: byte positions, versions of a replaced file and the fingerprint of its head.

use super::*;

/// Columns of one file and how to parse each.
pub(super) struct Layout {
    pub(super) names: Vec<String>,
    /// Each name as a JSON object key, `"name":`, for encoded values.
    pub(super) json_keys: Vec<Vec<u8>>,
    pub(super) parsers: Vec<Parse>,
    pub(super) key: Option<usize>,
    pub(super) timestamp: Option<usize>,
}

/// Where a file resumes.
#[derive(Clone, Copy, Default)]
pub(super) struct FilePosition {
    pub(super) byte: u64,
    pub(super) line: u64,
    /// The file's first bytes as they were read, when known: if they differ now, the file was
    /// replaced or truncated and rewritten (copytruncate rotation), and is read from the start.
    pub(super) head: Option<Head>,
    /// Where the exactly-once positions of this version of the file start: 0 for the first,
    /// and past every position an earlier version could have had for each later one (see
    /// [`next_version_base`]), so that positions keep growing across versions.
    pub(super) base: u64,
}

/// Bits of an exactly-once position that number bytes within one version of a file (1 TiB).
pub(super) const VERSION_SHIFT: u32 = 40;

/// The base of the version that replaces one based at `base`: above every position of it.
/// Not the old version's stored offset plus its length: after a crash the stored offset is
/// only what was acknowledged, while rows past it may have been sent and written; the new
/// version's first rows must not look like those (they would be skipped as written).
pub(super) fn next_version_base(base: u64) -> u64 {
    ((base >> VERSION_SHIFT) + 1) << VERSION_SHIFT
}

/// A fingerprint of a file's first `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: u64,
    pub(super) hash: u64,
}

/// Bytes of a file's head that its fingerprint covers (fewer while the file is shorter).
pub(super) const HEAD_BYTES: u64 = 4096;

impl Head {
    /// The fingerprint of `input`'s first `min(upto, HEAD_BYTES)` bytes.
    pub(super) fn of(input: &impl Input, upto: u64) -> io::Result<Head> {
        let len = upto.min(HEAD_BYTES);
        let mut buf = vec![0u8; len as usize];
        input.read_exact_at(&mut buf, 0)?;
        Ok(Head {
            len,
            hash: sluice_api::exactly_once::fnv1a(&buf),
        })
    }

    /// A source offset: the byte position alone, or with the fingerprint and the base of the
    /// file's version.
    pub(super) fn offset(head: Option<Head>, byte: u64, base: u64) -> Value {
        match head {
            None => Value::from(byte),
            Some(head) if base == 0 => {
                serde_json::json!({ "byte": byte, "head_len": head.len, "head": head.hash })
            }
            Some(head) => serde_json::json!({
                "byte": byte, "head_len": head.len, "head": head.hash, "base": base
            }),
        }
    }
}

/// The position a stored source offset gives: a byte number, or an object with the head's
/// fingerprint and the bytes of earlier versions.
/// The byte of its file an item's offset stands at.
pub(crate) fn byte_of(offset: &Value) -> u64 {
    stored_position(offset).0
}

pub(super) fn stored_position(offset: &Value) -> (u64, Option<Head>, u64) {
    match offset {
        Value::Object(map) => {
            let number = |k: &str| map.get(k).and_then(Value::as_u64);
            let head = match (number("head_len"), number("head")) {
                (Some(len), Some(hash)) => Some(Head { len, hash }),
                _ => None,
            };
            (
                number("byte").unwrap_or(0),
                head,
                number("base").unwrap_or(0),
            )
        }
        other => (other.as_u64().unwrap_or(0), None, 0),
    }
}
