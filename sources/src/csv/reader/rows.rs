//! Rows made records: JSON lines, bad rows with their bytes, and the line of a byte.

use super::*;

/// The record of one JSON line: the value as written, its key and time from the JSON
/// pointers `(key, time)`; a line that is not JSON is a bad record.
pub(super) fn json_record(
    encode: bool,
    (key, time): (Option<&str>, Option<&str>),
    path: &Arc<str>,
    line: u64,
    offset: Value,
    row: &csv::ByteRecord,
    now: i64,
) -> SourceRecord {
    if row.len() != 1 {
        let message = "the line holds a NUL byte, which JSON text cannot".to_string();
        return bad(path, line, offset, Vec::new(), message);
    }
    let text = row.as_slice();
    let value: Value = match sluice_api::record::parse_value(text) {
        Ok(value) => value,
        Err(e) => {
            return bad(path, line, offset, Vec::new(), format!("not JSON: {e}"));
        }
    };
    let key = key
        .and_then(|at| sluice_api::record::pointer(&value, at))
        .and_then(|k| match k {
            Value::Null => None,
            Value::String(s) => Some(s.as_bytes().to_vec()),
            other => Some(other.to_string().into_bytes()),
        });
    let timestamp = time
        .and_then(|at| sluice_api::record::pointer(&value, at))
        .and_then(crate::shared::time_millis);
    let mut record = if encode {
        Record {
            encoded_value: Some(text.to_vec()),
            ..Record::new(Value::Null)
        }
    } else {
        Record::new(value)
    };
    record.key = key;
    record.timestamp = Some(timestamp.unwrap_or(now));
    SourceRecord {
        partition: path.clone(),
        offset,
        position: None,
        payload: Payload::Record(record),
    }
}

pub(super) fn bad(
    path: &Arc<str>,
    line: u64,
    offset: Value,
    raw: Vec<u8>,
    message: String,
) -> SourceRecord {
    SourceRecord {
        partition: path.clone(),
        offset,
        position: None,
        payload: Payload::Bad(BadInput {
            raw,
            message,
            location: format!("{path} line {line}"),
            ..BadInput::default()
        }),
    }
}

/// `item` (a bad row) with the key and time of `row` where they can be read: its dead letter
/// is then keyed and dated as the record would have been.
pub(super) fn identified(
    mut item: SourceRecord,
    layout: &Layout,
    row: &csv::ByteRecord,
) -> SourceRecord {
    if let Payload::Bad(bad) = &mut item.payload {
        let text = |i: Option<usize>| {
            i.filter(|_| row.len() == layout.names.len())
                .and_then(|i| row.get(i))
                .and_then(|b| std::str::from_utf8(b).ok())
                .filter(|t| !t.is_empty())
        };
        bad.key = text(layout.key).map(|k| k.as_bytes().to_vec());
        bad.timestamp = layout.timestamp.and_then(|i| {
            let field = layout.parsers[i].field(text(Some(i))?).ok()?;
            layout.parsers[i].millis(&field)
        });
    }
    item
}

pub(super) fn ends_with_newline(input: &impl Input, end: u64) -> io::Result<bool> {
    if end == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    input.read_exact_at(&mut last, end - 1)?;
    Ok(last[0] == b'\n')
}

/// The bytes of the row between `start` and `end` as they are in the file, without the line
/// ending: what a dead letter keeps, so a fixed row can be replayed as it was.
pub(super) fn raw_row(input: &impl Input, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut raw = vec![0u8; end.saturating_sub(start) as usize];
    input.read_exact_at(&mut raw, start)?;
    let line_end = |b: &u8| *b == b'\n' || *b == b'\r';
    while raw.last().is_some_and(line_end) {
        raw.pop();
    }
    // After a `\r\n` row the reader's position is on the `\n`.
    let start = raw.iter().take_while(|b| line_end(b)).count();
    raw.drain(..start);
    Ok(raw)
}

/// Lines that end before byte `end` of `path`: where a resumed read's line numbers continue.
pub(super) fn lines_before(path: &str, end: u64) -> io::Result<u64> {
    let mut file = File::open(path)?.take(end);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}
