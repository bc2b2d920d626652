use super::*;
use std::cell::Cell;

/// A file's bytes that cannot be read past `fail_from` (a disk error, a vanished mount).
struct Failing {
    data: Vec<u8>,
    fail_from: u64,
    pos: Cell<u64>,
}

impl io::Read for &Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.pos.get();
        if pos >= self.fail_from {
            return Err(io::Error::other("input/output error"));
        }
        let end = (pos + buf.len() as u64)
            .min(self.fail_from)
            .min(self.data.len() as u64);
        let n = (end - pos) as usize;
        buf[..n].copy_from_slice(&self.data[pos as usize..end as usize]);
        self.pos.set(end);
        Ok(n)
    }
}

impl io::Seek for &Failing {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let io::SeekFrom::Start(at) = to else {
            return Err(io::Error::other("only absolute seeks"));
        };
        self.pos.set(at);
        Ok(at)
    }
}

impl Input for &Failing {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset as usize + buf.len();
        if end as u64 > self.fail_from {
            return Err(io::Error::other("input/output error"));
        }
        buf.copy_from_slice(&self.data[offset as usize..end]);
        Ok(())
    }
}

/// A reader whose input the test hands it (the configured path only has to exist).
fn reader(follow: bool) -> CsvReader {
    reader_resuming(follow, SourceOffsets::new())
}

fn items(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Vec<SourceRecord>, ConnectorError>>,
) -> Vec<SourceRecord> {
    let mut out = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        out.extend(batch.unwrap());
    }
    out
}

#[test]
fn an_io_error_mid_file_is_an_error_not_the_end_of_the_file() {
    let mut data = b"Date,Close\n".to_vec();
    for i in 0..5000 {
        data.extend_from_slice(format!("d{i},{i}.5\n").as_bytes());
    }
    let input = Failing {
        fail_from: data.len() as u64 / 2,
        data,
        pos: Cell::new(0),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(1000);
    let len = input.data.len() as u64;
    let result = reader(false).read_input("in.csv", &input, len, &tx);
    let error = result.err().expect("the read fails");
    assert!(error.to_string().contains("input/output error"), "{error}");
}

#[test]
fn a_bad_row_keeps_its_bytes_as_written() {
    let data = b"Date,Close\nd1,1.5\n\"x\",\"extra, field\",3\r\nd3,abc\n".to_vec();
    let input = Failing {
        fail_from: u64::MAX,
        data,
        pos: Cell::new(0),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let len = input.data.len() as u64;
    assert!(matches!(
        reader(false).read_input("in.csv", &input, len, &tx),
        Ok(Ok(()))
    ));
    let raws: Vec<String> = items(&mut rx)
        .into_iter()
        .filter_map(|i| match i.payload {
            Payload::Bad(bad) => Some(String::from_utf8(bad.raw).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(raws, ["\"x\",\"extra, field\",3", "d3,abc"]);
}

/// copytruncate: the file is emptied and written again past the stored position between
/// two polls of follow mode. Its head changed, so it is read from the start.
#[test]
fn a_file_rewritten_past_the_stored_position_is_read_from_the_start() {
    let first = b"Date,Close\nd1,1.5\nd2,2.5\n".to_vec();
    let mut reader = reader(true);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let input = Failing {
        fail_from: u64::MAX,
        data: first.clone(),
        pos: Cell::new(0),
    };
    assert!(matches!(
        reader.read_input("in.csv", &input, first.len() as u64, &tx),
        Ok(Ok(()))
    ));
    assert_eq!(items(&mut rx).len(), 2);
    // Rotated, then longer than before.
    let second = b"Date,Close\nn1,10.5\nn2,20.5\nn3,30.5\nn4,40.5\n".to_vec();
    let input = Failing {
        fail_from: u64::MAX,
        data: second.clone(),
        pos: Cell::new(0),
    };
    assert!(matches!(
        reader.read_input("in.csv", &input, second.len() as u64, &tx),
        Ok(Ok(()))
    ));
    let again = items(&mut rx);
    assert_eq!(again.len(), 4, "the new head was skipped");
    // The offsets carry the fingerprint, so a restart checks it too.
    let (byte, head, base) = stored_position(&again[3].offset);
    assert_eq!(byte, second.len() as u64);
    assert!(head.is_some());
    // Exactly-once positions go on growing past the first version's.
    assert_eq!(base, 1 << VERSION_SHIFT);
    assert_eq!(again[0].position, Some((1 << VERSION_SHIFT) + 19));
    assert!(again.iter().all(|i| i.position > Some(first.len() as u64)));
    // Appending keeps the head: only the new row is read.
    let mut third = second.clone();
    third.extend_from_slice(b"n5,50.5\n");
    let input = Failing {
        fail_from: u64::MAX,
        data: third.clone(),
        pos: Cell::new(0),
    };
    assert!(matches!(
        reader.read_input("in.csv", &input, third.len() as u64, &tx),
        Ok(Ok(()))
    ));
    assert_eq!(items(&mut rx).len(), 1);
}

/// What `reader` makes of `data` as file `in.csv`.
fn read_whole(reader: &mut CsvReader, data: &[u8]) -> Vec<SourceRecord> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let input = Failing {
        fail_from: u64::MAX,
        data: data.to_vec(),
        pos: Cell::new(0),
    };
    let read = reader.read_input("in.csv", &input, data.len() as u64, &tx);
    assert!(matches!(read, Ok(Ok(()))));
    items(&mut rx)
}

fn reader_resuming(follow: bool, offsets: SourceOffsets) -> CsvReader {
    let exists = std::env::temp_dir().join("sluice-csv-reader-test.csv");
    std::fs::write(&exists, "Date\n").unwrap();
    let config: CsvSourceConfig = serde_yaml::from_str(&format!(
        "{{ path: '{}', follow: {follow}, columns: {{ Close: float }} }}",
        exists.display()
    ))
    .unwrap();
    CsvReader::new(ReaderSettings::new(&config, super::tests::context(offsets, false)).unwrap())
}

/// A crash after rows were sent but before their offsets were stored, then the file is
/// replaced while the pipeline is down: the new version is read whole, and its positions
/// lie above every position the old version's rows could have been written with (else
/// exactly-once sinks skip its first rows as already written). With and without `follow`.
#[test]
fn a_file_replaced_while_down_after_a_crash_is_read_whole_and_numbered_above_the_old() {
    let mut first = b"Date,Close\n".to_vec();
    for i in 0..10 {
        first.extend_from_slice(format!("d{i},{i}.5\n").as_bytes());
    }
    let second = b"Date,Close\nn1,10.5\nn2,20.5\nn3,30.5\nn4,40.5\nn5,50.5\n".to_vec();
    assert!(second.len() < first.len() && second.len() > 19 + 8);
    for follow in [false, true] {
        let sent = read_whole(&mut reader(follow), &first);
        let highest_sent = sent.iter().filter_map(|i| i.position).max().unwrap();
        // Only the first row's offset was stored before the crash.
        let acknowledged = SourceOffsets::from([("in.csv".to_string(), sent[0].offset.clone())]);
        let read = read_whole(&mut reader_resuming(follow, acknowledged), &second);
        assert_eq!(
            read.len(),
            5,
            "follow: {follow}: the new version read whole"
        );
        assert!(
            read.iter().all(|i| i.position > Some(highest_sent)),
            "follow: {follow}: {:?} not above {highest_sent}",
            read.iter().map(|i| i.position).collect::<Vec<_>>()
        );
    }
}

/// In follow mode the reader thread waits for rows forever; once its source is dropped (a
/// stop, a restart, a work unit moving away) it must end, not poll the files on its own.
#[test]
fn a_following_reader_ends_once_its_source_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, "Date,Close\nd1,1.5\n").unwrap();
    let config: CsvSourceConfig = serde_yaml::from_str(&format!(
        "{{ path: '{}', follow: true, poll_interval: 20ms, columns: {{ Close: float }} }}",
        path.display()
    ))
    .unwrap();
    let reader = CsvReader::new(
        ReaderSettings::new(&config, super::tests::context(SourceOffsets::new(), false)).unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(10);
    let thread = std::thread::spawn(move || reader.run(tx));
    let first = rx.blocking_recv().unwrap().unwrap();
    assert_eq!(first.len(), 1);
    drop(rx);
    let started = std::time::Instant::now();
    while !thread.is_finished() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the reader still runs 2 s after its source was dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
